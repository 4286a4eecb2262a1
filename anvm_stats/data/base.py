"""The :class:`Data` container and the embedded digits data set.

``digits.csv.gz`` beside this file holds scikit-learn's 8x8 digits (1797 images, 10 classes) as integers 0..16,
one image a row: ``label,p0,...,p63`` after a header line. It was written once, by hand, with::

    import gzip, io
    from sklearn.datasets import load_digits
    d = load_digits()
    buf = io.StringIO()
    buf.write("label," + ",".join(f"p{i}" for i in range(64)) + "\\n")
    for xi, yi in zip(d.data.astype(int), d.target):
        buf.write(str(yi) + "," + ",".join(map(str, xi)) + "\\n")
    with open("digits.csv.gz", "wb") as raw, gzip.GzipFile(filename="digits.csv", mode="wb", fileobj=raw,
                                                            mtime=0, compresslevel=9) as f:
        f.write(buf.getvalue().encode("ascii"))

The package never imports scikit-learn: the file is read with gzip and numpy.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import io
import math
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator

import numpy as np
import torch

from ..errors import ConfigError, check, check_number

Tensor = torch.Tensor

DIGITS_FILE = Path(__file__).with_name("digits.csv.gz")
DIGITS_N = 1797
DIGITS_CLASSES = 10
SPLITS = ("train", "test", "all")


@dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class Data:
    """A labelled data set held as two tensors.

    ``X, y = data`` unpacks it; :meth:`batches` cuts it into ``(x, y)`` slices.

    Parameters
    ----------
    x : Tensor [N, ...]
        Inputs: real inputs are converted to float32 and must be finite; integer inputs (token ids for an
        ``nn.Embedding``) are kept as integers (int64).
    y : Tensor [N] or [N, L...]
        Integer class labels in ``[0, n_classes)``, one per sample or one per token (a language model's next
        tokens); converted to int64.
    name : str
        A short label recorded in provenance (e.g. ``"digits-test"``).
    n_classes : int
        Number of classes (labels need not all occur).
    """

    x: Tensor
    y: Tensor
    name: str
    n_classes: int

    def __post_init__(self) -> None:
        x, y = self.x, self.y
        check(isinstance(x, Tensor), "Data.x", type(x).__name__, "a torch.Tensor")
        check(isinstance(y, Tensor), "Data.y", type(y).__name__, "a torch.Tensor")
        check(isinstance(self.name, str), "Data.name", self.name, "a str")
        check_number("Data.n_classes", self.n_classes, low=1, integer=True)
        check(x.dtype != torch.bool and not x.is_complex(), "Data.x", f"dtype {x.dtype}",
              "a real or integer tensor")
        check(not y.is_floating_point() and not y.is_complex() and y.dtype != torch.bool, "Data.y",
              f"dtype {y.dtype}", "an integer tensor of class labels")
        check(x.ndim >= 2, "Data.x", f"shape {tuple(x.shape)}", "a tensor of shape [N, ...] with at least 2 dims")
        check(y.ndim >= 1, "Data.y", f"shape {tuple(y.shape)}", "a tensor of shape [N] (or [N, L...] per token)")
        check(x.shape[0] == y.shape[0], "Data", f"x {tuple(x.shape)}, y {tuple(y.shape)}",
              "x and y with the same first dim N")
        want = torch.float32 if x.is_floating_point() else torch.int64
        if x.dtype != want:
            object.__setattr__(self, "x", x.to(want))
        if y.dtype != torch.int64:
            object.__setattr__(self, "y", y.to(torch.int64))
        object.__setattr__(self, "n_classes", int(self.n_classes))
        if y.numel():
            lo, hi = int(self.y.min()), int(self.y.max())
            check(lo >= 0 and hi < self.n_classes, "Data.y", f"labels in [{lo}, {hi}]",
                  f"labels in [0, {self.n_classes - 1}] (n_classes={self.n_classes})")
        if self.x.numel() and not bool(torch.isfinite(self.x).all()):
            bad = int((~torch.isfinite(self.x)).sum())
            raise ConfigError("Data.x", f"{bad} NaN/inf value(s)", "finite inputs")

    # --- views -------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Tensor]:
        """Yield ``x`` then ``y`` so that ``X, y = data`` works."""
        yield self.x
        yield self.y

    def __repr__(self) -> str:
        return (f"Data(name={self.name!r}, n={self.n}, x={tuple(self.x.shape)} {self.x.dtype}, "
                f"n_classes={self.n_classes}, device={self.x.device})")

    @property
    def n(self) -> int:
        """Number of samples N."""
        return int(self.x.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, ``x.shape[1:]``."""
        return tuple(self.x.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.x.device

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield consecutive ``(x, y)`` slices of at most ``batch_size`` samples (views, no copy)."""
        check_number("batch_size", batch_size, low=1, integer=True)
        step = int(batch_size)
        for i in range(0, self.n, step):
            yield self.x[i:i + step], self.y[i:i + step]

    def subset(self, n: int, seed: int = 0) -> "Data":
        """A seeded random subset of ``n`` distinct samples, kept in their original order."""
        check_number("n", n, low=0, high=self.n, integer=True)
        check_number("seed", seed, low=0, integer=True)
        idx = np.sort(np.random.default_rng(int(seed)).choice(self.n, size=int(n), replace=False))
        index = torch.as_tensor(idx, dtype=torch.int64, device=self.x.device)
        return Data(x=self.x[index], y=self.y[index], name=f"{self.name}-subset{int(n)}-seed{int(seed)}",
                    n_classes=self.n_classes)

    def to(self, device: torch.device | str) -> "Data":
        """A copy with ``x`` and ``y`` on ``device`` (``self`` if already there)."""
        device = torch.device(device)
        if self.x.device == device and self.y.device == device:
            return self
        return dataclasses.replace(self, x=self.x.to(device), y=self.y.to(device))


# --- embedded digits --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(pixels uint8 [1797, 64] in 0..16, labels int64 [1797])``, read once; read-only arrays."""
    try:
        with gzip.open(DIGITS_FILE, "rt", encoding="ascii") as f:
            text = f.read()
        table = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    except FileNotFoundError:
        raise FileNotFoundError(f"the embedded digits file {DIGITS_FILE} is missing; reinstall anvm_stats "
                                f"(it ships as package data)") from None
    except (OSError, EOFError, ValueError) as err:
        raise ValueError(f"the embedded digits file {DIGITS_FILE} is unreadable ({err}); reinstall "
                         f"anvm_stats") from None
    if (table.shape != (DIGITS_N, 65) or table[:, 1:].min() < 0 or table[:, 1:].max() > 16
            or table[:, 0].min() < 0 or table[:, 0].max() >= DIGITS_CLASSES):
        raise ValueError(f"the embedded digits file {DIGITS_FILE} is malformed (table {table.shape}, expected "
                         f"{(DIGITS_N, 65)} with labels 0..9 and pixels 0..16); reinstall anvm_stats")
    pixels = np.ascontiguousarray(table[:, 1:], dtype=np.uint8)
    labels = np.ascontiguousarray(table[:, 0], dtype=np.int64)
    pixels.setflags(write=False)
    labels.setflags(write=False)
    return pixels, labels


def split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split: ``(train_idx, test_idx)``, each in a seeded random order.

    The test set holds ``ceil(N * test_fraction)`` samples; each class gives ``floor(n_c * test_fraction)`` and
    the remaining places go to the classes with the largest remainders (ties to the lower class). The two index
    sets are disjoint and together cover ``range(N)``. Uses ``numpy.random.default_rng(seed)`` only.
    """
    n = len(labels)
    n_test = math.ceil(n * test_fraction)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * test_fraction
    take = np.floor(exact).astype(np.int64)
    extra = n_test - int(take.sum())
    if extra > 0:
        order = np.lexsort((classes, -(exact - take)))  # largest remainder first, then lower class
        room = take < counts
        for c in order[room[order]][:extra]:
            take[c] += 1
    test_parts, train_parts = [], []
    for c, k in zip(classes, take):
        members = rng.permutation(np.flatnonzero(labels == c))
        test_parts.append(members[:k])
        train_parts.append(members[k:])
    test = rng.permutation(np.concatenate(test_parts))
    train = rng.permutation(np.concatenate(train_parts))
    return train, test


def digits(split: str = "train", *, seed: int = 0, test_fraction: float = 0.2, image: bool = False) -> Data:
    """scikit-learn's 8x8 handwritten digits, embedded in the package (no download, no scikit-learn).

    Parameters
    ----------
    split : {"train", "test", "all"}
        ``"all"`` gives the 1797 images in the file's order; ``"train"`` and ``"test"`` a seeded stratified split.
    seed : int
        Seed of the split (``numpy.random.default_rng(seed)``; the global RNG is never touched).
    test_fraction : float in (0, 1)
        The test set holds ``ceil(1797 * test_fraction)`` images (360 at the default 0.2).
    image : bool
        ``False``: x of shape [N, 64]; ``True``: x of shape [N, 1, 8, 8].

    Returns
    -------
    Data
        Pixels scaled to [0, 1] (divided by 16), float32; labels int64 in 0..9; name ``"digits-<split>"``.
    """
    check(split in SPLITS, "split", split, f"one of {list(SPLITS)}")
    check_number("seed", seed, low=0, integer=True)
    check_number("test_fraction", test_fraction, low=0, high=1, low_open=True, high_open=True)
    pixels, labels = _digits_arrays()
    n = len(labels)
    n_test = math.ceil(n * test_fraction)
    check(0 < n_test < n, "test_fraction", test_fraction, f"a fraction leaving both splits non-empty (N={n})")
    if split == "all":
        idx = np.arange(n)
    else:
        train, test = split_indices(labels, float(test_fraction), int(seed))
        idx = train if split == "train" else test
    x = torch.from_numpy(pixels[idx].astype(np.float32)) / 16.0
    if image:
        x = x.reshape(-1, 1, 8, 8)
    y = torch.from_numpy(labels[idx].copy())
    return Data(x=x, y=y, name=f"digits-{split}", n_classes=DIGITS_CLASSES)
