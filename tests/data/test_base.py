"""anvm_stats.data: the embedded digits, the Data container, and the CIFAR / IDX readers on tiny files written
in exactly the real on-disk formats."""

from __future__ import annotations

import dataclasses
import gzip
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from anvm_stats.data import Data, cifar10, cifar100, digits, fashion_mnist, load, mnist
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


def test_data_works_with_data_source():
    from anvm_stats.data_source import as_tensors, iter_batches

    d = digits("test")
    x, y = as_tensors(d)
    assert x is d.x and y is d.y
    assert sum(len(b[1]) for b in iter_batches(d, 64)) == 360


# --- CIFAR ----------------------------------------------------------------------------------------------------
def _cifar_batch(rng, n, label_key, n_classes):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, n_classes, size=n).tolist()
    return data, labels


def _write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.fixture
def cifar10_root(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data, labels = _cifar_batch(rng, 3 + i, "labels", 10)
        _write_pickle(folder / name, {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                                      b"filenames": [b"x.png"] * len(labels)})
        batches[name] = (data, labels)
    return tmp_path, batches


def _expected_images(data):
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)


def test_cifar10_reads_exact_pixels(cifar10_root):
    root, batches = cifar10_root
    for where in (root, root / "cifar-10-batches-py"):
        tr = cifar10(where, "train")
        names = [f"data_batch_{k}" for k in range(1, 6)]
        exp_x = torch.cat([_expected_images(batches[n][0]) for n in names])
        exp_y = torch.tensor([t for n in names for t in batches[n][1]])
        assert tr.x.shape == (3 + 4 + 5 + 6 + 7, 3, 32, 32) and tr.x.dtype == torch.float32
        torch.testing.assert_close(tr.x, exp_x, rtol=0, atol=1e-7)
        assert torch.equal(tr.y, exp_y) and tr.n_classes == 10 and tr.name == "cifar10-train"
        # pixel layout: the first 1024 bytes are the red plane, row-major
        assert tr.x[0, 0, 0, 1] == pytest.approx(batches["data_batch_1"][0][0, 1] / 255.0)
        assert tr.x[0, 1, 0, 0] == pytest.approx(batches["data_batch_1"][0][0, 1024] / 255.0)
        te = cifar10(str(where), "test")
        torch.testing.assert_close(te.x, _expected_images(batches["test_batch"][0]), rtol=0, atol=1e-7)
        assert te.y.tolist() == batches["test_batch"][1]


def test_cifar10_normalize(cifar10_root):
    from anvm_stats.data.readers import CIFAR10_MEAN, CIFAR10_STD

    root, batches = cifar10_root
    te = cifar10(root, "test", normalize=True)
    raw = _expected_images(batches["test_batch"][0])
    exp = (raw - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(te.x, exp)


def test_cifar100_fine_and_coarse(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    written = {}
    for split, n in (("train", 5), ("test", 3)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine, coarse = rng.integers(0, 100, size=n).tolist(), rng.integers(0, 20, size=n).tolist()
        _write_pickle(folder / split, {b"filenames": [b"a"] * n, b"batch_label": b"x", b"fine_labels": fine,
                                       b"coarse_labels": coarse, b"data": data})
        written[split] = (data, fine, coarse)
    for split in ("train", "test"):
        data, fine, coarse = written[split]
        d = cifar100(tmp_path, split)
        torch.testing.assert_close(d.x, _expected_images(data), rtol=0, atol=1e-7)
        assert d.y.tolist() == fine and d.n_classes == 100 and d.name == f"cifar100-{split}"
        c = cifar100(folder, split, label="coarse")
        assert c.y.tolist() == coarse and c.n_classes == 20
    with pytest.raises(ConfigError):
        cifar100(tmp_path, "train", label="medium")


def test_cifar_missing_files_named(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        cifar10(tmp_path, "train")
    msg = str(err.value)
    for k in range(1, 6):
        assert f"data_batch_{k}" in msg
    assert str(tmp_path / "cifar-10-batches-py") in msg
    # partial set: the missing ones are named
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    _write_pickle(folder / "data_batch_1", {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]})
    with pytest.raises(FileNotFoundError, match="data_batch_5"):
        cifar10(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="test_batch"):
        cifar10(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        cifar100(tmp_path, "test")


def test_cifar_malformed_file_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="test_batch"):
        cifar10(tmp_path, "test")
    _write_pickle(folder / "test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match="test_batch"):
        cifar10(tmp_path, "test")
    _write_pickle(folder / "test_batch", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
    with pytest.raises(ValueError, match="test_batch"):
        cifar10(tmp_path, "test")
    _write_pickle(folder / "test_batch", {b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(ValueError, match="labels"):
        cifar10(tmp_path, "test")


# --- IDX (MNIST, Fashion-MNIST) -----------------------------------------------------------------------------
def _idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _write_idx(path, arr, gz):
    raw = _idx_bytes(arr)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def _make_mnist(folder, gz, n_train=5, n_test=3, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        _write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz)
        out["train" if prefix == "train" else "test"] = (images, labels)
    return out


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("layout", ["root", "torchvision"])
@pytest.mark.parametrize("reader,sub,name", [(mnist, "MNIST", "mnist"),
                                             (fashion_mnist, "FashionMNIST", "fashion_mnist")])
def test_idx_readers_exact(tmp_path, gz, layout, reader, sub, name):
    folder = tmp_path if layout == "root" else tmp_path / sub / "raw"
    written = _make_mnist(folder, gz)
    for split in ("train", "test"):
        images, labels = written[split]
        d = reader(tmp_path, split)
        assert d.x.shape == (len(labels), 1, 28, 28) and d.x.dtype == torch.float32
        np.testing.assert_array_equal(d.x.numpy(), (images[:, None] / 255.0).astype(np.float32))
        np.testing.assert_array_equal(d.y.numpy(), labels.astype(np.int64))
        assert float(d.x.min()) >= 0.0 and float(d.x.max()) <= 1.0
        assert d.name == f"{name}-{split}" and d.n_classes == 10


def test_idx_header_parsing(tmp_path):
    from anvm_stats.data import read_idx

    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / "a-idx3-ubyte"
    p.write_bytes(_idx_bytes(arr))
    got = read_idx(p, ndim=3)
    assert got.shape == (2, 3, 4) and np.array_equal(got, arr)          # dims read from the header, big-endian
    assert p.read_bytes()[:4] == b"\x00\x00\x08\x03"                     # the real images magic 0x00000803
    with pytest.raises(ValueError, match="dims"):
        read_idx(p, ndim=1)


def test_mnist_missing_files_named(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        mnist(tmp_path, "train")
    msg = str(err.value)
    assert "train-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg
    assert str(tmp_path) in msg and str(tmp_path / "MNIST" / "raw") in msg
    with pytest.raises(FileNotFoundError) as err:
        fashion_mnist(tmp_path / "nowhere", "test")
    msg = str(err.value)
    assert "t10k-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg and "FashionMNIST" in msg
    # only the labels missing: the message still names every expected file, and which is missing
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((1, 28, 28), np.uint8), gz=False)
    with pytest.raises(FileNotFoundError, match="missing: t10k-labels-idx1-ubyte"):
        mnist(tmp_path, "test")


@pytest.mark.parametrize("gz", [False, True])
def test_corrupted_idx_named(tmp_path, gz):
    written = _make_mnist(tmp_path, gz)
    images = written["train"][0]
    suffix = ".gz" if gz else ""
    target = tmp_path / f"train-images-idx3-ubyte{suffix}"

    def put(raw):
        if gz:
            with gzip.open(target, "wb") as f:
                f.write(raw)
        else:
            target.write_bytes(raw)

    good = _idx_bytes(images)
    put(good[:-10])                                               # truncated payload
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*truncated"):
        mnist(tmp_path, "train")
    put(b"\x00\x00\x08")                                          # truncated magic
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        mnist(tmp_path, "train")
    put(b"\x12\x34" + good[2:])                                   # bad magic
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*magic"):
        mnist(tmp_path, "train")
    put(_idx_bytes(images.reshape(-1)))                           # 1-D where 3-D expected
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        mnist(tmp_path, "train")
    put(good[:10])                                                # truncated header
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*truncated"):
        mnist(tmp_path, "train")
    put(good + b"\x00")                                           # trailing bytes
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        mnist(tmp_path, "train")
    put(_idx_bytes(images[:2]))                                   # count mismatch with labels
    with pytest.raises(ValueError, match="labels"):
        mnist(tmp_path, "train")


def test_corrupted_gzip_named(tmp_path):
    _make_mnist(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        mnist(tmp_path, "test")


# --- load -------------------------------------------------------------------------------------------------------
def test_load_dispatch(tmp_path, cifar10_root):
    d = load("digits", split="test", image=True)
    assert d.n == 360 and d.x.shape[1:] == (1, 8, 8)
    assert torch.equal(load("digits").x, digits("train").x)
    root, _ = cifar10_root
    assert load("cifar10", root, split="test").name == "cifar10-test"
    mroot = tmp_path / "m"
    _make_mnist(mroot / "MNIST" / "raw", gz=True)
    assert load("MNIST", mroot, split="test").n == 3
    _make_mnist(mroot / "FashionMNIST" / "raw", gz=False)
    assert load("fashion-mnist", root=mroot, split="train").n == 5
    with pytest.raises(ConfigError) as err:
        load("imagenet", tmp_path)
    for known in ("digits", "cifar10", "cifar100", "mnist", "fashion_mnist"):
        assert known in str(err.value)
    with pytest.raises(ConfigError, match="root"):
        load("mnist")
    with pytest.raises(ConfigError):
        load("mnist", tmp_path, split="validation")
