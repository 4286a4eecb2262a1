"""anvm_stats.data.base: the embedded digits and the Data container (validation, coercion, batches)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

from anvm_stats.data import Data, digits
from anvm_stats.errors import ConfigError


# --- digits -------------------------------------------------------------------------------------------------
def test_digits_split_sizes_and_cover():
    tr, te, al = digits("train"), digits("test"), digits("all")
    assert (tr.n, te.n, al.n) == (1437, 360, 1797)
    assert tr.name == "digits-train" and te.name == "digits-test" and al.name == "digits-all"
    assert tr.n_classes == te.n_classes == 10
    # disjoint and covering: match rows of the full set by content + label multiset
    key = lambda d: sorted(map(tuple, torch.cat([d.x, d.y[:, None].float()], 1).tolist()))
    assert key(tr) + key(te) != [] and sorted(key(tr) + key(te)) == key(al)


def test_digits_split_indices_disjoint_and_stratified():
    from anvm_stats.data.base import _digits_arrays, split_indices

    _, labels = _digits_arrays()
    train, test = split_indices(labels, 0.2, 0)
    assert len(test) == 360 and len(train) == 1437
    assert not set(train.tolist()) & set(test.tolist())
    assert sorted(train.tolist() + test.tolist()) == list(range(1797))
    counts = np.bincount(labels[test], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37          # stratified: ~10% per class
    for f in (0.1, 0.25, 0.5, 0.9, 0.01):
        tr, te = split_indices(labels, f, 3)
        assert len(te) == int(np.ceil(1797 * f)) and len(tr) + len(te) == 1797
        assert not set(tr.tolist()) & set(te.tolist())


def test_digits_deterministic_per_seed_and_differs_across_seeds():
    a, b, c = digits("test", seed=0), digits("test", seed=0), digits("test", seed=1)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    state = torch.random.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    digits("train", seed=5)
    assert torch.equal(state, torch.random.get_rng_state())       # no global RNG touched
    assert np.array_equal(np_state, np.random.get_state()[1])


def test_digits_values_shapes_and_test_fraction():
    d = digits("all")
    assert d.x.dtype == torch.float32 and d.y.dtype == torch.int64
    assert d.x.shape == (1797, 64) and float(d.x.min()) == 0.0 and float(d.x.max()) == 1.0
    assert set(d.y.unique().tolist()) == set(range(10))
    im = digits("test", image=True)
    assert im.x.shape == (360, 1, 8, 8)
    assert torch.equal(im.x.reshape(360, 64), digits("test").x)
    assert digits("test", test_fraction=0.5).n == 899 and digits("train", test_fraction=0.5).n == 898
    X, y = digits("test")                                    # unpacking
    assert X.shape == (360, 64) and y.shape == (360,)


def test_digits_equal_sklearn():
    datasets = pytest.importorskip("sklearn.datasets")
    ref = datasets.load_digits()
    d = digits("all")
    np.testing.assert_array_equal(d.x.numpy(), (ref.data / 16.0).astype(np.float32))
    np.testing.assert_array_equal(d.y.numpy(), ref.target)
    # a split row is the sklearn row with the same content
    te = digits("test", seed=7, image=True)
    rows = {tuple(r): t for r, t in zip((ref.data / 16.0).astype(np.float32).tolist(), ref.target.tolist())}
    for x, t in zip(te.x.reshape(te.n, -1).tolist(), te.y.tolist()):
        assert rows[tuple(x)] == t


def test_digits_does_not_import_sklearn_or_torchvision():
    code = ("import sys, anvm_stats.data as d; d.digits('test'); "
            "print('sklearn' in sys.modules, 'torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("kw", [dict(split="val"), dict(test_fraction=0.0), dict(test_fraction=1.0),
                                dict(seed=-1), dict(test_fraction=0.9999999)])
def test_digits_rejects_bad_args(kw):
    with pytest.raises(ConfigError):
        digits(**kw)


# --- Data -----------------------------------------------------------------------------------------------------
def test_data_validation_and_coercion():
    d = Data(x=torch.zeros(4, 3, dtype=torch.float64), y=torch.tensor([0, 1, 2, 1], dtype=torch.int32),
             name="t", n_classes=3)
    assert d.x.dtype == torch.float32 and d.y.dtype == torch.int64 and d.n == 4 and d.input_shape == (3,)
    with pytest.raises(ConfigError):
        Data(x=torch.zeros(4, 3), y=torch.zeros(3, dtype=torch.long), name="t", n_classes=2)
    with pytest.raises(ConfigError):
        Data(x=torch.zeros(2, 3), y=torch.tensor([0, 2]), name="t", n_classes=2)
    with pytest.raises(ConfigError):
        Data(x=torch.zeros(2, 3), y=torch.tensor([-1, 0]), name="t", n_classes=2)
    with pytest.raises(ConfigError):
        Data(x=torch.tensor([[0.0, float("nan")]]), y=torch.tensor([0]), name="t", n_classes=2)
    with pytest.raises(ConfigError):
        Data(x=torch.zeros(2, 3), y=torch.tensor([0.0, 1.0]), name="t", n_classes=2)
    with pytest.raises(TypeError):
        Data(torch.zeros(2, 3), torch.tensor([0, 1]), "t", 2)        # keyword-only
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.name = "other"                                            # frozen
    assert "n=4" in repr(d)


def test_data_batches_subset_to():
    d = digits("test")
    parts = list(d.batches(100))
    assert [len(y) for _, y in parts] == [100, 100, 100, 60]
    assert torch.equal(torch.cat([x for x, _ in parts]), d.x) and torch.equal(torch.cat([y for _, y in parts]), d.y)
    with pytest.raises(ConfigError):
        list(d.batches(0))
    s1, s2, s3 = d.subset(50, seed=1), d.subset(50, seed=1), d.subset(50, seed=2)
    assert s1.n == 50 and torch.equal(s1.x, s2.x) and not torch.equal(s1.x, s3.x)
    assert s1.n_classes == 10
    rows = {tuple(r) for r in d.x.tolist()}
    assert all(tuple(r) in rows for r in s1.x.tolist())
    assert d.subset(d.n).n == d.n
    with pytest.raises(ConfigError):
        d.subset(d.n + 1)
    moved = d.to("cpu")
    assert moved.x.device.type == "cpu" and moved.n == d.n
    if torch.cuda.is_available():
        g = d.to("cuda")
        assert g.x.is_cuda and g.y.is_cuda and g.name == d.name


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
