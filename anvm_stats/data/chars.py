"""The embedded text corpus for character-level language models: windows of characters and the characters that
follow them.

``corpus.txt`` (next to this module) holds the prose of the project's own README.md and ARCHITECTURE.md (written by
``scripts/text_corpus.py``; its ``# `` header lines name the source): about 22 k ASCII characters, no third-party
text. The first ``1 - test_fraction`` of the characters are the training split, the rest the test split (a split
by position: no window of one split overlaps the other). Each split is cut into ``n_windows`` windows of
``length`` characters at seeded random starts; the targets are the same windows shifted by one character.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from ..errors import check, check_number
from .base import Data

#: the corpus file
CORPUS = Path(__file__).with_name("corpus.txt")
#: windows per split when none is given
DEFAULT_WINDOWS = {"train": 2048, "test": 256}


@functools.lru_cache(maxsize=1)
def corpus() -> str:
    """The corpus text without its header lines."""
    lines = CORPUS.read_text(encoding="ascii").splitlines(keepends=True)
    return "".join(ln for ln in lines if not ln.startswith("# "))


@functools.lru_cache(maxsize=1)
def vocabulary() -> str:
    """Every character of the corpus, sorted: token ``t`` is ``vocabulary()[t]``."""
    return "".join(sorted(set(corpus())))


def encode(text: str) -> np.ndarray:
    """Token ids (int64) of ``text`` (every character must be in :func:`vocabulary`)."""
    index = {c: i for i, c in enumerate(vocabulary())}
    missing = sorted(set(text) - set(index))
    check(not missing, "text", repr(missing[:5]), "characters of the corpus vocabulary")
    return np.fromiter((index[c] for c in text), dtype=np.int64, count=len(text))


def decode(ids) -> str:
    """The characters of token ids."""
    voc = vocabulary()
    return "".join(voc[int(i)] for i in np.asarray(ids).reshape(-1))


def text(split: str = "train", *, length: int = 32, n_windows: int | None = None, seed: int = 0,
         test_fraction: float = 0.1, one_hot: bool = True) -> Data:
    """Character windows of the embedded corpus and their next characters.

    Parameters
    ----------
    split : {"train", "test"}
        The first ``1 - test_fraction`` of the corpus, or the rest.
    length : int
        Characters per window ``L``.
    n_windows : int, optional
        Windows drawn (default 2048 for train, 256 for test); starts uniform over the split, from
        ``numpy.random.default_rng([seed, split])``.
    seed : int
    test_fraction : float in (0, 1)
    one_hot : bool
        Inputs as one-hot float32 ``[N, L, V]`` (default; any network of Linear/Conv layers reads them), or token
        ids ``[N, L]`` (for ``nn.Embedding`` models).

    Returns
    -------
    Data
        ``x`` ``[N, L, V]`` one-hot (or ``[N, L]`` ids), ``y`` int64 ``[N, L]``: the character after each input
        character; ``n_classes = V`` (the vocabulary size); name ``"text-<split>"``.
    """
    check(split in DEFAULT_WINDOWS, "split", split, f"one of {list(DEFAULT_WINDOWS)}")
    check_number("length", length, low=1, integer=True)
    check_number("seed", seed, low=0, integer=True)
    check_number("test_fraction", test_fraction, low=0, high=1, low_open=True, high_open=True)
    check(isinstance(one_hot, bool), "one_hot", one_hot, "true or false")
    ids = encode(corpus())
    cut = int(len(ids) * (1.0 - float(test_fraction)))
    part = ids[:cut] if split == "train" else ids[cut:]
    span = len(part) - int(length)                 # a window and its shifted targets fit in the split
    check(span >= 1, "length", length, f"fewer characters than the {split} split's {len(part) - 1}")
    n = DEFAULT_WINDOWS[split] if n_windows is None else n_windows
    check_number("n_windows", n, low=1, integer=True)
    rng = np.random.default_rng([int(seed), 0 if split == "train" else 1])
    starts = rng.integers(0, span, size=int(n))
    offsets = starts[:, None] + np.arange(int(length))[None, :]
    x = torch.from_numpy(part[offsets])
    y = torch.from_numpy(part[offsets + 1])
    V = len(vocabulary())
    if one_hot:
        x = torch.nn.functional.one_hot(x, V).to(torch.float32)
    return Data(x=x, y=y, name=f"text-{split}", n_classes=V)
