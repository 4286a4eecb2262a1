"""Issue 15 items 1, 4, 5 in the data layer: CIFAR batches are read with a restricted unpickler; bad labels and
inputs are refused with a message naming the field."""

import pickle

import numpy as np
import pytest
import torch

from anvm_stats.data import Data, cifar10


class _RunsCode:
    """What a crafted pickle does: its reduction calls a function chosen by the file (here: ``open(marker, "w")``,
    which leaves a file behind if it runs)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _batch(n, rng, **extra):
    return {b"batch_label": b"b", b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * n, **extra}


@pytest.mark.parametrize("where", ["top", "labels", "data"])
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_malicious_cifar_batch_is_refused_and_not_run(tmp_path, where, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"
    obj = _batch(3, np.random.default_rng(0))
    evil = _RunsCode(marker)
    if where == "top":
        obj = evil
    elif where == "labels":
        obj[b"labels"] = [0, evil, 1]
    else:
        obj[b"extra"] = {b"nested": [evil]}
    (folder / "test_batch").write_bytes(pickle.dumps(obj, protocol=protocol))
    with pytest.raises(ValueError) as err:
        cifar10(tmp_path, "test")
    assert not marker.exists(), "the crafted pickle ran code"
    msg = str(err.value)
    assert str(folder / "test_batch") in msg and "open" in msg and "\n" not in msg


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_real_format_batches_load_at_every_protocol(tmp_path, protocol):
    rng = np.random.default_rng(protocol)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    obj = _batch(4, rng)
    (folder / "test_batch").write_bytes(pickle.dumps(obj, protocol=protocol))
    d = cifar10(tmp_path, "test")
    exp = torch.from_numpy(obj[b"data"].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    torch.testing.assert_close(d.x, exp, rtol=0, atol=0)
    assert d.y.tolist() == obj[b"labels"]


def test_python2_style_batch_loads(tmp_path):
    """The distributed files were pickled by Python 2 numpy: module ``numpy.core.multiarray``, str keys read
    as bytes."""
    rng = np.random.default_rng(7)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    obj = _batch(2, rng)
    raw = pickle.dumps(obj, protocol=2)
    if b"numpy._core.multiarray" in raw:   # write what numpy 1 (and the real files) name
        raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    (folder / "test_batch").write_bytes(raw)
    d = cifar10(tmp_path, "test")
    assert d.y.tolist() == obj[b"labels"] and d.x.shape == (2, 3, 32, 32)


# --- Data: labels and inputs (items 4, 5) ---------------------------------------------------------------------
def test_data_refuses_float_labels_out_of_range_and_nonfinite_inputs():
    x = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="Data.y.*integer"):
        Data(x=x, y=torch.tensor([0.0, 1.7, 2.0]), name="t", n_classes=3)   # never truncated to 1
    with pytest.raises(ValueError, match=r"Data.y.*\[0, 10\].*n_classes=3"):
        Data(x=x, y=torch.tensor([0, 10, 1]), name="t", n_classes=3)
    for bad in (float("nan"), float("inf")):
        xb = x.clone()
        xb[1, 2] = bad
        with pytest.raises(ValueError, match="Data.x.*1 NaN/inf"):
            Data(x=xb, y=torch.tensor([0, 1, 2]), name="t", n_classes=3)


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
    from anvm_stats.errors import ConfigError

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
