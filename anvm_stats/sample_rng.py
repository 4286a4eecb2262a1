"""Noise keyed by sample: draws of one (seed, instance, layer, kind) at any sample index, in O(1).

Read noise and ADC output noise are drawn per MVM: a fresh value for every input vector a chip reads. For a chip's
result to be the same whatever the batch size, chunking or sampler, the value for sample ``n`` (its index in the
evaluation data) must not depend on which forward pass reads it. Here every ``(seed, layer, kind)`` has a 64-bit
key word ``k0`` (from the run's ``SeedSequence``), every instance ``i`` its own Philox4x64-10 stream with key
``(k0, i)`` (NumPy's :class:`numpy.random.Philox`; distinct keys give independent streams), and sample ``n``
starts at block ``n * blocks_per_sample`` of that stream, reached by setting the counter (no skipping through the
samples before it). Each 64-bit word gives two normals by Box-Muller on its 32-bit halves
(``u1 = hi * 2^-32 + 2^-33``, tails to 6.7 sigma; ``u2 = lo * 2^-32``).
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import ConfigError

Tensor = torch.Tensor
#: spawn-key tag of per-MVM noise keys (distinct from every other stream of a run)
SAMPLE_TAG = 0x5A3B1E
#: kinds of per-MVM noise (part of the key)
KINDS = {"read": 0, "output": 1}


class Workspace(threading.local):
    """Float buffers of the per-MVM pipeline (the two halves of every word, radius, cosine, and the normals of
    :meth:`SampleNoise.normal` with ``scratch``), reused from call to call in this thread and grown as needed.

    A run draws per-MVM normals for every layer and batch (tens of MB each on a convolution); fresh buffers of that
    size are new pages for the kernel to fault in and zero at every call, which cost more than the draws
    themselves. Reused buffers give the same values (the same operations on the same shapes). The engine frees them
    at the end of a run (:func:`release_workspace`)."""

    def __init__(self):
        self.floats: list[Tensor | None] = [None] * 5

    def take_floats(self, i: int, n: int) -> Tensor:
        """Float32 buffer ``i`` (0..4) of ``n`` elements (contents undefined)."""
        buf = self.floats[i]
        if buf is None or buf.numel() < n:
            buf = self.floats[i] = torch.empty(n)
        return buf[:n]

    def release(self) -> None:
        self.floats = [None] * 5


#: this thread's workspace of the per-MVM pipeline
WORKSPACE = Workspace()


def release_workspace() -> None:
    """Free this thread's per-MVM buffers (:class:`Workspace`; the engine calls this when a run ends)."""
    WORKSPACE.release()


def box_muller(lo: Tensor, hi: Tensor, out: Tensor | None = None) -> Tensor:
    """Two standard normals per word from its 32-bit halves as floats (``lo``, ``hi`` ``[n]``, overwritten):
    ``[n, 2]`` (into ``out`` when given), the cosine branch first (``u1 = hi * 2^-32 + 2^-33``,
    ``theta = 2 pi lo 2^-32``)."""
    n = lo.shape[0]
    r = torch.add(2.0 ** -33, hi, alpha=2.0 ** -32, out=WORKSPACE.take_floats(2, n)).log_().mul_(-2.0).sqrt_()
    theta = lo.mul_(2.0 * math.pi * 2.0 ** -32)
    out = torch.empty(n, 2) if out is None else out.view(n, 2)
    torch.mul(torch.cos(theta, out=WORKSPACE.take_floats(3, n)), r, out=out[:, 0])
    torch.mul(theta.sin_(), r, out=out[:, 1])
    return out


#: words of a fill from which its rows are drawn by several threads (NumPy's Philox releases the GIL)
THREADED_WORDS = 1 << 16
#: words drawn per NumPy call (16K words, 128 KB: each piece is converted while in cache, and below glibc's
#: threshold for fresh mmap'ed pages)
PIECE_WORDS = 1 << 14
_POOL: list[ThreadPoolExecutor] = []


def _pool(workers: int) -> ThreadPoolExecutor:
    """The module's thread pool of ``workers`` threads (made on first use, remade when the count changes)."""
    if not _POOL or _POOL[0]._max_workers != workers:
        if _POOL:
            _POOL.pop().shutdown(wait=False)
        _POOL.append(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="anvm-mvm"))
    return _POOL[0]


def fill_halves(lo: np.ndarray, hi: np.ndarray, k0: int, indices: np.ndarray, first_block: int) -> None:
    """Row ``r`` of ``lo`` and ``hi`` (float32 ``[len(indices), n]``) = the low and high 32-bit halves of words
    ``4 first_block ..`` of the Philox4x64-10 stream keyed ``(k0, indices[r])``, as floats. Large fills split
    their rows over ``torch.get_num_threads()`` threads (each row is its own stream: the same values whatever the
    split)."""
    n = lo.shape[1]

    def rows(rs) -> None:
        for r in rs:
            bg = np.random.Philox(key=np.array([k0, indices[r]], dtype=np.uint64),
                                  counter=np.array([first_block, 0, 0, 0], dtype=np.uint64))
            for a in range(0, n, PIECE_WORDS):
                pairs = bg.random_raw(min(PIECE_WORDS, n - a)).view(np.uint32).reshape(-1, 2)
                np.copyto(lo[r, a:a + pairs.shape[0]], pairs[:, 0], casting="unsafe")
                np.copyto(hi[r, a:a + pairs.shape[0]], pairs[:, 1], casting="unsafe")

    workers = min(torch.get_num_threads(), lo.shape[0])
    if workers < 2 or lo.size < THREADED_WORDS:
        rows(range(lo.shape[0]))
        return
    list(_pool(workers).map(rows, [range(w, lo.shape[0], workers) for w in range(workers)]))


@dataclass(eq=False)
class SampleNoise:
    """Per-MVM standard normals of the chips ``indices`` of a run with root ``SeedSequence`` ``root``.

    Parameters
    ----------
    root : numpy.random.SeedSequence
        The run's root (``ChipSampler.root``).
    indices : sequence of int
        Instance indices, one per chip row of the chunk (padding rows may repeat an index).
    """

    root: np.random.SeedSequence
    indices: np.ndarray
    _keys: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.indices = np.asarray(self.indices, dtype=np.uint64).reshape(-1)

    def key(self, layer: int, kind: str, step: int = 0) -> int:
        """The 64-bit key word of ``(seed, layer, kind, step)`` (``step``: which of a layer's calls on the same
        samples in one forward, e.g. the time step of a recurrent matrix; step 0 keys as a layer called once)."""
        if (layer, kind, step) not in self._keys:
            extra = (int(step),) if step else ()
            seq = np.random.SeedSequence(self.root.entropy, spawn_key=tuple(self.root.spawn_key) + (
                SAMPLE_TAG, int(layer), KINDS[kind]) + extra)
            self._keys[(layer, kind, step)] = int(seq.generate_state(1, dtype=np.uint64)[0])
        return self._keys[(layer, kind, step)]

    def normal(self, layer: int, kind: str, first: int, n_samples: int, per_sample: int,
               device: torch.device | str = "cpu", step: int = 0, scratch: bool = False) -> Tensor:
        """Standard normals ``[K, n_samples, per_sample]`` of samples ``first .. first + n_samples - 1``: entry
        ``[r, b, j]`` depends only on (seed, ``indices[r]``, layer, kind, ``step``, sample ``first + b``, ``j``).

        ``scratch``: on the CPU, the result lives in this thread's :data:`WORKSPACE` and is valid only until the
        next ``scratch`` call (for callers that use it at once, as the analog layers do: no fresh pages)."""
        if first < 0 or n_samples < 0 or per_sample < 1:
            raise ConfigError("SampleNoise.normal", (first, n_samples, per_sample),
                              "first >= 0, n_samples >= 0, per_sample >= 1")
        words_per = 4 * -(-per_sample // 8)          # whole Philox blocks (4 words, 8 normals) per sample
        if step < 0:
            raise ConfigError("SampleNoise.normal", step, "step >= 0")
        k0 = self.key(layer, kind, step)
        K, n = len(self.indices), n_samples * words_per
        lo, hi = (WORKSPACE.take_floats(i, K * n) for i in range(2))
        fill_halves(lo.numpy().reshape(K, n), hi.numpy().reshape(K, n), k0, self.indices, first * (words_per // 4))
        out = WORKSPACE.take_floats(4, 2 * K * n) if scratch else None
        z = box_muller(lo, hi, out).view(K, n_samples, 2 * words_per)[..., :per_sample]
        return z.to(device)
