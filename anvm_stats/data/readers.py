"""Readers of real data sets from a local folder, in their standard on-disk formats. Nothing is ever downloaded.

* CIFAR-10 / CIFAR-100: the "python version" pickle batches (``cifar-10-batches-py/data_batch_1..5``,
  ``test_batch``; ``cifar-100-python/train``, ``test``).
* MNIST / Fashion-MNIST: IDX files (``train-images-idx3-ubyte`` ...), raw or gzipped, in ``root`` or in
  torchvision's ``root/MNIST/raw`` / ``root/FashionMNIST/raw``.

torchvision is not needed (nor imported).
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import zlib
from pathlib import Path
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import ConfigError, check
from .base import Data, digits
from .chars import text

PathLike = str | os.PathLike

#: per-channel mean and std of the training images, in [0, 1] pixel units
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_SPLITS = ("train", "test")


def _check_split(split: str) -> None:
    check(split in _SPLITS, "split", split, f"one of {list(_SPLITS)}")


def _root(root: PathLike | None, dataset: str) -> Path:
    if root is None:
        raise ConfigError("root", None, f"the local folder holding the {dataset} files (no data is ever "
                                        f"downloaded)")
    if not isinstance(root, (str, os.PathLike)):
        raise ConfigError("root", root, "a folder path (str or os.PathLike)")
    return Path(root).expanduser()


def _missing(dataset: str, split: str, expected: Sequence[str], folders: Sequence[Path],
             missing: Sequence[str]) -> FileNotFoundError:
    return FileNotFoundError(
        f"{dataset} {split} files not found: expected {', '.join(expected)} in one of the folders "
        f"{', '.join(str(f) for f in folders)}; missing: {', '.join(missing)}. anvm_stats never downloads data: "
        f"put the files there (standard layout) or pass root= pointing at them")


# --- CIFAR --------------------------------------------------------------------------------------------------
def _numpy_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR batch may name: numpy array reconstruction (under numpy 1's and numpy 2's module
    names, pickle protocols 0-5) and ``_codecs.encode`` (Python 3's protocol-2 pickling of bytes)."""
    import codecs
    import importlib

    core = "numpy._core" if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else "numpy.core"
    reconstruct = importlib.import_module(f"{core}.multiarray")._reconstruct
    frombuffer = importlib.import_module(f"{core}.numeric")._frombuffer
    out: dict[tuple[str, str], object] = {("_codecs", "encode"): codecs.encode, ("numpy", "ndarray"): np.ndarray,
                                          ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core", "numpy._core"):
        out[(f"{mod}.multiarray", "_reconstruct")] = reconstruct
        out[(f"{mod}.numeric", "_frombuffer")] = frombuffer
    return out


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR "python version" batch holds: dicts, lists, bytes, str, numbers and numpy
    arrays. Any other global (a function or class a crafted file names to run code) is refused before it is
    called."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self.path = path
        self.allowed = _numpy_globals()

    def find_class(self, module: str, name: str):
        obj = self.allowed.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(
                f"CIFAR batch file {self.path} names the global {module}.{name}, which a CIFAR batch never holds "
                f"(allowed: dict, list, bytes, str, int and numpy arrays); refused, nothing was run")
        return obj

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"CIFAR batch file {self.path} holds a persistent id, which a CIFAR batch "
                                     f"never holds; refused")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, path).load()
    except pickle.UnpicklingError as err:
        if str(path) in str(err):
            raise ValueError(str(err)) from None
        raise ValueError(f"CIFAR batch file {path} is not a readable pickle (UnpicklingError: {err})") from None
    except (EOFError, AttributeError, ImportError, IndexError, ValueError, TypeError, KeyError,
            struct.error) as err:
        raise ValueError(f"CIFAR batch file {path} is not a readable pickle ({type(err).__name__}: {err})") \
            from None
    if not isinstance(obj, dict):
        raise ValueError(f"CIFAR batch file {path} holds a {type(obj).__name__}, expected a dict with keys "
                         f"b'data' and the labels")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_batch(path: Path, label_key: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    for key in ("data", label_key):
        if key not in d:
            raise ValueError(f"CIFAR batch file {path} has no key b{key!r} (keys: "
                             f"{sorted(str(k) for k in d)})")
    data = np.asarray(d["data"])
    try:
        labels = np.asarray(d[label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"CIFAR batch file {path}: b{label_key!r} is not a list of integer labels") from None
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise ValueError(f"CIFAR batch file {path}: b'data' is {data.dtype} {data.shape}, expected uint8 "
                         f"[N, 3072]")
    if labels.shape[0] != data.shape[0]:
        raise ValueError(f"CIFAR batch file {path}: {data.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"CIFAR batch file {path}: labels in [{labels.min()}, {labels.max()}], expected "
                         f"0..{n_classes - 1}")
    return data, labels


def _cifar(root: PathLike | None, dataset: str, folder: str, files: Sequence[str], label_key: str,
           n_classes: int, normalize: bool, mean: Sequence[float], std: Sequence[float], name: str,
           split: str) -> Data:
    base = _root(root, dataset)
    folders = [base / folder, base]
    where = next((f for f in folders if all((f / n).is_file() for n in files)), None)
    if where is None:
        found = max(folders, key=lambda f: sum((f / n).is_file() for n in files))
        raise _missing(dataset, split, files, folders, [n for n in files if not (found / n).is_file()])
    parts = [_cifar_batch(where / n, label_key, n_classes) for n in files]
    data = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    x = torch.from_numpy(np.ascontiguousarray(data)).reshape(-1, 3, 32, 32).to(torch.float32).div_(255.0)
    if normalize:
        x.sub_(torch.tensor(mean).view(1, 3, 1, 1)).div_(torch.tensor(std).view(1, 3, 1, 1))
    return Data(x=x, y=torch.from_numpy(labels), name=name, n_classes=n_classes)


def cifar10(root: PathLike, split: str = "train", *, normalize: bool = False) -> Data:
    """CIFAR-10 from its python pickle batches.

    Parameters
    ----------
    root : path
        The folder that contains ``cifar-10-batches-py``, or that folder itself.
    split : {"train", "test"}
        ``data_batch_1`` .. ``data_batch_5`` (50000 images) or ``test_batch`` (10000).
    normalize : bool
        Subtract the per-channel training mean and divide by the std (:data:`CIFAR10_MEAN`, :data:`CIFAR10_STD`).
        Otherwise pixels are in [0, 1].

    Returns
    -------
    Data
        x float32 [N, 3, 32, 32], y int64 in 0..9, name ``"cifar10-<split>"``.

    Raises
    ------
    FileNotFoundError
        Naming every expected file and the folders searched.
    ValueError
        Naming the file, if a batch is not a CIFAR pickle or names a global other than numpy array
        reconstruction.

    Notes
    -----
    The batches are Python pickles (the data set's own format). They are read with a restricted unpickler that
    accepts only dicts, lists, bytes, str, numbers and numpy arrays; a file naming any other global (as a crafted
    pickle does to run code) is refused with a ValueError naming the file, and nothing it names is run.
    """
    _check_split(split)
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return _cifar(root, "CIFAR-10", "cifar-10-batches-py", files, "labels", 10, normalize, CIFAR10_MEAN,
                  CIFAR10_STD, f"cifar10-{split}", split)


def cifar100(root: PathLike, split: str = "train", *, label: str = "fine", normalize: bool = False) -> Data:
    """CIFAR-100 from its python pickles (``cifar-100-python/train``, ``test``).

    ``root`` is the folder that contains ``cifar-100-python``, or that folder itself. ``label="fine"`` gives the
    100 classes, ``"coarse"`` the 20 superclasses. Otherwise as :func:`cifar10` (name ``"cifar100-<split>"`` or
    ``"cifar100-coarse-<split>"``).
    """
    _check_split(split)
    check(label in ("fine", "coarse"), "label", label, "'fine' (100 classes) or 'coarse' (20 superclasses)")
    n_classes = 100 if label == "fine" else 20
    name = f"cifar100-{split}" if label == "fine" else f"cifar100-coarse-{split}"
    return _cifar(root, "CIFAR-100", "cifar-100-python", [split], f"{label}_labels", n_classes, normalize,
                  CIFAR100_MEAN, CIFAR100_STD, name, split)


# --- IDX (MNIST, Fashion-MNIST) -----------------------------------------------------------------------------
_IDX_UBYTE = 0x08


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ValueError(f"IDX file {path} is not a valid gzip file ({type(err).__name__}: {err})") from None


def read_idx(path: PathLike, ndim: int | None = None) -> np.ndarray:
    """Parse one IDX file of unsigned bytes (raw, or gzipped if the name ends in ``.gz``).

    The header is two zero bytes, the type code (0x08: unsigned byte), the number of dims, then each dim as a
    big-endian uint32; the payload must hold exactly the product of the dims. Returns a uint8 array of that
    shape.

    Raises
    ------
    ValueError
        Naming the file, for a bad magic number, an unexpected number of dims, or a truncated / oversized payload.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"IDX file {path} is truncated: {len(raw)} bytes, shorter than the 4-byte magic number")
    zero, code, nd = struct.unpack(">HBB", raw[:4])
    magic = int.from_bytes(raw[:4], "big")
    if zero != 0 or code != _IDX_UBYTE or nd == 0:
        raise ValueError(f"IDX file {path} has a bad magic number 0x{magic:08x}: expected 0x000008NN (unsigned "
                         f"bytes, NN dims)")
    if ndim is not None and nd != ndim:
        raise ValueError(f"IDX file {path} has {nd} dims (magic 0x{magic:08x}), expected {ndim} "
                         f"(magic 0x{0x800 + ndim:08x})")
    header = 4 + 4 * nd
    if len(raw) < header:
        raise ValueError(f"IDX file {path} is truncated: {len(raw)} bytes, shorter than its {header}-byte header")
    dims = struct.unpack(f">{nd}I", raw[4:header])
    size = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != size:
        what = "truncated" if len(raw) - header < size else "oversized"
        raise ValueError(f"IDX file {path} is {what}: header says dims {dims} ({size} bytes of data) but "
                         f"{len(raw) - header} bytes follow the header")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(name: str, folders: Sequence[Path]) -> Path | None:
    for folder in folders:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _idx_dataset(root: PathLike | None, split: str, dataset: str, subfolder: str, name: str) -> Data:
    _check_split(split)
    base = _root(root, dataset)
    prefix = "train" if split == "train" else "t10k"
    names = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    folders = [base, base / subfolder / "raw"]
    paths = [_find(n, folders) for n in names]
    if any(p is None for p in paths):
        raise _missing(dataset, split, [f"{n}[.gz]" for n in names], folders,
                       [f"{n}[.gz]" for n, p in zip(names, paths) if p is None])
    images = read_idx(paths[0], ndim=3)
    labels = read_idx(paths[1], ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{dataset} {split}: {paths[0]} holds {images.shape[0]} images but {paths[1]} holds "
                         f"{labels.shape[0]} labels")
    if labels.size and labels.max() >= 10:
        raise ValueError(f"IDX label file {paths[1]} holds label {int(labels.max())}, expected 0..9")
    x = torch.from_numpy(images.copy()).unsqueeze(1).to(torch.float32).div_(255.0)
    y = torch.from_numpy(labels.astype(np.int64))
    return Data(x=x, y=y, name=f"{name}-{split}", n_classes=10)


def mnist(root: PathLike, split: str = "train") -> Data:
    """MNIST from its IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-...``), raw
    or ``.gz``, looked for in ``root`` and ``root/MNIST/raw``.

    Returns
    -------
    Data
        x float32 [N, 1, 28, 28] in [0, 1], y int64 in 0..9, name ``"mnist-<split>"``.

    Raises
    ------
    FileNotFoundError
        Naming every expected file and the folders searched.
    ValueError
        Naming the file, for a malformed IDX file (bad magic number, truncated).
    """
    return _idx_dataset(root, split, "MNIST", "MNIST", "mnist")


def fashion_mnist(root: PathLike, split: str = "train") -> Data:
    """Fashion-MNIST from its IDX files, in ``root`` or ``root/FashionMNIST/raw``; otherwise as :func:`mnist`
    (name ``"fashion_mnist-<split>"``)."""
    return _idx_dataset(root, split, "Fashion-MNIST", "FashionMNIST", "fashion_mnist")


# --- dispatch -----------------------------------------------------------------------------------------------
_READERS = {"digits": None, "cifar10": cifar10, "cifar100": cifar100, "mnist": mnist,
            "fashion_mnist": fashion_mnist, "text": None}
KNOWN = tuple(_READERS)


def load(name: str, root: PathLike | None = None, split: str = "train", **kw) -> Data:
    """Load a data set by name: ``"digits"`` (embedded; ``root`` is ignored), ``"cifar10"``, ``"cifar100"``,
    ``"mnist"``, ``"fashion_mnist"`` (read from ``root``), ``"text"`` (the embedded corpus,
    :func:`~anvm_stats.data.chars.text`; ``root`` is ignored). Extra keywords go to the reader (e.g. ``seed=`` and
    ``image=`` for digits, ``normalize=`` for CIFAR, ``label=`` for CIFAR-100, ``length=`` for text)."""
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else name
    if key not in _READERS:
        raise ConfigError("data name", name, f"one of {list(KNOWN)}")
    if key == "digits":
        return digits(split, **kw)
    if key == "text":
        return text(split, **kw)
    return _READERS[key](_root(root, key), split, **kw)
