"""anvm_stats.checks: model/data mismatches named by field; non-finite results counted exactly and recorded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anvm_stats.errors import ConfigError


import anvm_stats as av
from anvm_stats import dims
from anvm_stats.calibration import calibrate, drift_sweep
from anvm_stats.checks import NONFINITE_ATTR
from anvm_stats.models import build_model
from tests.helpers import TINY_CLASSES, assert_one_line_error, small_drift_spec, tiny_data10, tiny_mlp10



# --- anvm_stats.checks: raw (x, y) tensors as evaluate()/sweep() take them -------------------------------------
def _mlp():

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


def _bad_data():
    """(x, y, field, words in the message) for each kind of data the model cannot score."""
    x, y = tiny_data10()
    nan_x = x.clone()
    nan_x[3, 2] = float("nan")
    inf_x = x.clone()
    inf_x[0, 0] = float("inf")
    label10 = y.clone()
    label10[5] = TINY_CLASSES                                     # label 10 on a 10-output net
    return [
        pytest.param(x, label10, "data.y", ["[0, 9]", "10 outputs"], id="label-out-of-range"),
        pytest.param(x, y - 20, "data.y", ["[0, 9]"], id="negative-labels"),
        pytest.param(torch.randn(12, 7), y, "data.x", ["[7]", "shape the model takes"], id="feature-size"),
        pytest.param(nan_x, y, "data.x", ["1 NaN/inf"], id="nan-input"),
        pytest.param(inf_x, y, "data.x", ["1 NaN/inf"], id="inf-input"),
        pytest.param(x, y.float() + 0.5, "data.y", ["float32", "not truncated"], id="float-labels"),
    ]




# --- item 4/5: data the model cannot score, refused before any work by every entry point ---------------------------
@pytest.mark.parametrize("x, y, field, words", _bad_data())
def test_sweep_and_evaluate_refuse_bad_data_naming_the_field(x, y, field, words, monkeypatch):
    import anvm_stats.montecarlo as mc

    def no_work(*a, **k):                                       # nothing may be prepared before the check
        raise AssertionError("the program was prepared before the data was checked")

    monkeypatch.setattr(mc, "prepare", no_work)
    for run in (lambda: av.evaluate(tiny_mlp10(), av.devices.paper1(0.1), (x, y), n_instances=2, progress=False),
                lambda: av.sweep(tiny_mlp10(), av.devices.paper1(0.1), (x, y), grid={"noise_level": [0.5, 1.0]},
                                 n_instances=2, progress=False)):
        with pytest.raises(ConfigError) as err:
            run()
        assert_one_line_error(err.value, field, words)


@pytest.mark.parametrize("x, y, field, words", _bad_data())
def test_evaluate_until_drift_sweep_and_calibrate_refuse_bad_data(x, y, field, words, monkeypatch):
    import anvm_stats.adaptive as adaptive
    import anvm_stats.calibration.adapt as adapt
    import anvm_stats.calibration.drift as drift

    def no_work(*a, **k):
        raise AssertionError("the program was prepared before the data was checked")

    for mod in (adaptive, adapt, drift):
        monkeypatch.setattr(mod, "prepare", no_work)
    spec = av.devices.paper1(0.1)
    runs = {
        "evaluate_until": lambda: av.evaluate_until(tiny_mlp10(), spec, (x, y), target_width=0.1, progress=False),
        "drift_sweep": lambda: drift_sweep(tiny_mlp10(), small_drift_spec(), (x, y), times=[1.0, 10.0], n_instances=2,
                                           compensation="global", progress=False),
        "calibrate": lambda: calibrate(tiny_mlp10(), spec, (x, y), recovery_data=tiny_data10(), n_instances=2, steps=1,
                                       progress=False),
    }
    for name, run in runs.items():
        with pytest.raises(ConfigError) as err:
            run()
        assert_one_line_error(err.value, field, words)


def test_calibrate_checks_its_recovery_data_too():
    x, y = tiny_data10()
    with pytest.raises(ConfigError) as err:
        calibrate(tiny_mlp10(), av.devices.paper1(0.1), (x, y), recovery_data=(x, y + TINY_CLASSES), n_instances=2, steps=1,
                  progress=False)
    assert_one_line_error(err.value, "recovery_data.y", ["[0, 9]"])


def test_valid_data_still_runs_unchanged():
    """The checks refuse nothing valid: a sweep over batches and over tensors gives the same numbers."""
    x, y = tiny_data10()
    spec = av.devices.paper1(0.2)
    a = av.evaluate(tiny_mlp10(), spec, (x, y), n_instances=3, progress=False)
    b = av.evaluate(tiny_mlp10(), spec, [(x[:5], y[:5]), (x[5:], y[5:])], n_instances=3, progress=False)
    np.testing.assert_array_equal(a[dims.CORRECT_COUNT].values, b[dims.CORRECT_COUNT].values)
    assert NONFINITE_ATTR not in a.attrs


# --- item 5: non-finite results are warned about and counted in attrs ----------------------------------------------
def test_overflowing_noise_warns_and_records_the_count():
    x, y = tiny_data10()
    with pytest.warns(RuntimeWarning, match=r"non-finite.*loss \(3 of 3 cells\)"):
        ds = av.evaluate(tiny_mlp10(), av.devices.paper1(1e300), (x, y), n_instances=3, progress=False)
    n_bad = int((~np.isfinite(ds[dims.LOSS].values)).sum())
    assert n_bad == 3 and ds.attrs[NONFINITE_ATTR] == {dims.LOSS: n_bad}


def test_evaluate_until_counts_nonfinite_cells_over_all_rounds():
    x, y = tiny_data10()
    with pytest.warns(RuntimeWarning, match="non-finite"):
        ds, res = av.evaluate_until(tiny_mlp10(), av.devices.paper1(1e300), (x, y), target_width=1e-9,
                                    instances_per_round=4, max_instances=12, variable=dims.ACCURACY, progress=False)
    assert ds.sizes[dims.INSTANCE] == 12 and res.stopped_by == "cap"
    assert ds.attrs[NONFINITE_ATTR] == {dims.LOSS: int((~np.isfinite(ds[dims.LOSS].values)).sum())} \
        == {dims.LOSS: 12}                                      # all rounds, not the first round's 4
