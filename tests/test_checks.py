"""anvm_stats.checks: model/data mismatches named by field; non-finite results counted exactly and recorded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anvm_stats.errors import ConfigError


# --- anvm_stats.checks: raw (x, y) tensors as evaluate()/sweep() take them -------------------------------------
def _mlp():
    from anvm_stats.models import build_model

    return build_model("mlp", seed=0, in_features=6, hidden=[5], n_classes=4)


@pytest.mark.parametrize("x, y, field, words", [
    (torch.zeros(3, 7), torch.tensor([0, 1, 2]), "data.x", ["[7]", "shape the model takes"]),
    (torch.zeros(3, 6), torch.tensor([0, 4, 1]), "data.y", ["[0, 4]", "[0, 3]", "4 outputs"]),
    (torch.zeros(3, 6), torch.tensor([0.0, 1.9, 2.0]), "data.y", ["float32", "not truncated"]),
    (torch.tensor([[0.0] * 5 + [float("nan")]] * 3), torch.tensor([0, 1, 2]), "data.x", ["3 NaN/inf"]),
])
def test_check_model_data_names_the_field(x, y, field, words):
    from anvm_stats.checks import check_model_data

    net = _mlp().train()
    with pytest.raises(ConfigError) as err:
        check_model_data(net, (x, y))
    assert err.value.field == field and "\n" not in str(err.value)
    for w in words:
        assert w in str(err.value), (w, str(err.value))
    assert net.training                                     # the model's mode is left as it was
    check_model_data(net, (torch.zeros(3, 6), torch.tensor([0, 3, 1])))                       # valid: no error
    check_model_data(net, [(torch.zeros(2, 6), torch.tensor([0, 3]))])                        # batches


def test_flag_nonfinite_counts_exactly_and_records_in_attrs():
    import xarray as xr

    from anvm_stats.checks import NONFINITE_ATTR, flag_nonfinite

    loss = np.array([[0.1, np.nan, np.inf], [0.2, 0.3, np.nan]])
    ds = xr.Dataset({"loss": (("instance", "noise_level"), loss),
                     "accuracy": (("instance", "noise_level"), np.full((2, 3), 0.5))})
    with pytest.warns(RuntimeWarning, match=r"loss \(3 of 6 cells\)"):
        assert flag_nonfinite(ds) == {"loss": 3}
    assert ds.attrs[NONFINITE_ATTR] == {"loss": 3}
    clean = xr.Dataset({"loss": (("instance", "noise_level"), np.nan_to_num(loss, posinf=0.0)),
                        "accuracy": ds["accuracy"]})
    assert flag_nonfinite(clean) == {} and NONFINITE_ATTR not in clean.attrs
