"""anvm_stats.data.readers: the CIFAR / IDX readers on tiny files written in exactly the real on-disk formats;
CIFAR batches are read with a restricted unpickler."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from anvm_stats.data import cifar10
from anvm_stats.data import cifar100, digits, fashion_mnist, load, mnist
from anvm_stats.errors import ConfigError


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
