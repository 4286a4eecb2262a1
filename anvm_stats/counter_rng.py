"""Counter-based draws: every (instance, stream, slot, element) is a Philox4x32-10 counter under the run's key.

Per-instance ``torch.Generator`` objects cost a seed derivation and one kernel launch per instance and tensor. On
a GPU that overhead dominates: a chunk of 16,384 chips would spend ~0.3 s launching samplers for work the GPU
does in a few milliseconds. Here instance ``i``'s draws are a pure function of the run key and
``(i, stream, slot, element)``, so a whole chunk ``[K, n]`` comes from one kernel, and instance ``i`` draws the
same values whatever the chunking, order or worker count, as with per-instance generators.

Layout (Random123's Philox4x32 with 10 rounds, Salmon et al. 2011): the key is 64 bits derived from the run's
root ``SeedSequence``; counter words are ``c0 = b`` (block of four elements ``4b..4b+3``),
``c1 = stream << 30 | slot``, ``c2, c3 = low and high 32 bits of the instance index``. A slot is one draw tensor:
the ``s``-th (effect, name) pair of a chip's programming draws, or the ``s``-th call of a :class:`CounterStream`
(per-forward read and output noise). The four output words
become four uniforms ``(x >> 8) * 2^-24`` in [0, 1), or four normals by Box-Muller on pairs ``(x0, x1)`` and
``(x2, x3)``: ``sqrt(-2 ln u1) (cos, sin)(2 pi u2)`` with ``u1 = x * 2^-32 + 2^-33`` in (0, 1) (tails to
6.8 sigma) and ``u2`` the 24-bit uniform.

:func:`philox4x32` and :func:`fill_counter` in plain torch are the reference (exact integer arithmetic, no
overflow); on CUDA, :mod:`anvm_stats.counter_rng_triton` computes the same in one Triton kernel when Triton is
importable (the uniforms bit for bit, the normals to float32 round-off of ``log``/``cos``/``sin``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .counter_rng_triton import fill_triton
from .errors import ConfigError
from .rng import Stream

Tensor = torch.Tensor

MASK32 = 0xFFFFFFFF
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57   #: round multipliers
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85   #: key increments (Weyl sequence)
ROUNDS = 10
#: spawn-key tag of the run key (instance sequences use two-word spawn keys, so this one never collides)
KEY_TAG = 0x0C0DE
#: elements per slice of the reference implementation (bounds its int64 temporaries to a few hundred MB)
REFERENCE_SLICE = 1 << 22
MAX_SLOT = 1 << 30


def run_key(root: np.random.SeedSequence) -> tuple[int, int]:
    """The 64-bit Philox key ``(k0, k1)`` of a run with root sequence ``root``."""
    seq = np.random.SeedSequence(root.entropy, spawn_key=tuple(root.spawn_key) + (KEY_TAG,))
    k0, k1 = seq.generate_state(2, dtype=np.uint32)
    return int(k0), int(k1)


def _mulhilo(m: int, c: Tensor) -> tuple[Tensor, Tensor]:
    """High and low 32-bit words of ``m * c`` for 32-bit ``m`` and int64 ``c`` in [0, 2^32), without overflow
    (16-bit halves: every partial product stays below 2^49)."""
    a = (c & 0xFFFF) * m
    t = (a >> 16) + (c >> 16) * m
    return t >> 16, ((t & 0xFFFF) << 16) | (a & 0xFFFF)


def philox4x32(c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor, k0: int, k1: int, rounds: int = ROUNDS,
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Philox4x32 on int64 tensors holding 32-bit words (broadcastable); returns the four output words."""
    for _ in range(rounds):
        hi0, lo0 = _mulhilo(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


def _uniform24(x: Tensor) -> Tensor:
    return (x >> 8).to(torch.float32) * 2.0 ** -24


def _box_muller(x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
    u1 = x0.to(torch.float32) * 2.0 ** -32 + 2.0 ** -33
    r = torch.sqrt(-2.0 * torch.log(u1))
    theta = (2.0 * math.pi) * _uniform24(x1)
    return r * torch.cos(theta), r * torch.sin(theta)


def _check_indices(indices: Tensor) -> None:
    if indices.dim() != 1:
        raise ConfigError("indices", tuple(indices.shape), "a 1-d sequence of instance indices")
    if indices.numel() and int(indices.min()) < 0:     # a device sync on CUDA: done once per index set
        raise ConfigError("indices", int(indices.min()), "non-negative instance indices")


def _check(kind: str, out: Tensor, indices: Tensor, slot: int) -> None:
    if kind not in ("normal", "uniform", "centered_uniform"):
        raise ConfigError("kind", kind, "'normal', 'uniform' or 'centered_uniform'")
    if out.dim() != 2 or out.dtype != torch.float32 or (out.numel() and (
            out.stride(1) != 1 or out.stride(0) < out.shape[1])):
        raise ConfigError("out", f"{tuple(out.shape)} {out.dtype} strides {out.stride()}",
                          "a float32 tensor [K, n] with contiguous rows")
    if indices.shape != (out.shape[0],):
        raise ConfigError("indices", tuple(indices.shape), f"one index per row of out ({out.shape[0]})")
    if not 0 <= int(slot) < MAX_SLOT:
        raise ConfigError("slot", slot, f"an int in [0, {MAX_SLOT})")


def _reference_rows(kind: str, out: Tensor, idx: Tensor, word1: int, key: tuple[int, int]) -> None:
    K, n = out.shape
    n_blocks = -(-n // 4)
    rows_per = max(1, REFERENCE_SLICE // max(1, n_blocks))
    dev = out.device
    b = torch.arange(n_blocks, dtype=torch.int64, device=dev).view(1, -1)
    c1 = torch.tensor(word1, dtype=torch.int64, device=dev)
    for r0 in range(0, K, rows_per):
        i = idx[r0:r0 + rows_per].to(torch.int64).view(-1, 1)
        x = philox4x32(b, c1, i & MASK32, i >> 32, *key)
        x = [w.expand(i.shape[0], n_blocks) for w in x]
        if kind == "normal":
            z0, z1 = _box_muller(x[0], x[1])
            z2, z3 = _box_muller(x[2], x[3])
            vals = torch.stack([z0, z1, z2, z3], -1)
        else:
            vals = torch.stack([_uniform24(w) for w in x], -1)
        out[r0:r0 + i.shape[0]] = vals.reshape(i.shape[0], 4 * n_blocks)[:, :n]


def fill_counter(kind: str, out: Tensor, key: tuple[int, int], indices: Sequence[int] | Tensor,
                 stream: Stream, slot: int = 0, *, backend: str = "auto") -> Tensor:
    """Fill ``out`` ``[K, n]`` in place: row ``r`` gets the draws of instance ``indices[r]``.

    Parameters
    ----------
    kind : {"normal", "uniform", "centered_uniform"}
        N(0, 1); U[0, 1); uniform on [-sqrt 3, sqrt 3) (zero mean, unit variance).
    out : Tensor ``[K, n]``, float32, contiguous rows (a row stride above ``n`` is fine: padded rows)
    key : (int, int)
        The run key (:func:`run_key`).
    indices : ``K`` instance indices (non-negative, below 2^64)
    stream, slot : sub-stream of the instance, and which draw tensor within it (``0 <= slot < 2^30``)
    backend : {"auto", "torch", "triton"}
        ``"auto"`` and ``"triton"``: the Triton kernel on CUDA when it can run there, else the torch reference;
        ``"torch"``: always the reference.
    """
    idx = torch.as_tensor(np.asarray(indices, dtype=np.int64) if not isinstance(indices, Tensor) else indices,
                          device=out.device)
    _check_indices(idx)
    return _fill(kind, out, key, idx, stream, slot, backend)


def _fill(kind: str, out: Tensor, key: tuple[int, int], idx: Tensor, stream: Stream, slot: int,
          backend: str = "auto") -> Tensor:
    """:func:`fill_counter` for indices already checked (1-d, non-negative, on ``out``'s device)."""
    _check(kind, out, idx, slot)
    if out.numel() == 0:
        return out
    word1 = (int(stream) << 30) | int(slot)
    base = "normal" if kind == "normal" else "uniform"
    if not (out.is_cuda and backend in ("auto", "triton") and fill_triton(base, out, idx, word1, key)):
        _reference_rows(base, out, idx, word1, key)   # the torch reference: off CUDA, or where Triton cannot run
    if kind == "centered_uniform":
        out.mul_(2.0 * math.sqrt(3.0)).sub_(math.sqrt(3.0))
    return out


def counter_draws_default(device: torch.device) -> bool:
    """Whether the sampler draws from counters on ``device`` (CUDA: yes; CPU: per-instance generators, whose
    native sampler outruns Philox written in plain torch there)."""
    return torch.device(device).type == "cuda"


@dataclass(eq=False)
class CounterStream:
    """Fresh per-instance draws for one chunk, call after call: the counter-based stand-in for a list of
    per-instance generators that each forward advances. Call ``c`` fills slot ``c`` of ``stream`` for every
    instance, so instance ``i``'s ``c``-th draw depends only on ``(key, i, stream, c)``: chunks that make the same
    calls in the same order (every forward of a run does) see the same noise whatever their size.

    Parameters
    ----------
    key : (int, int)
        The run key (:func:`run_key`).
    indices : Tensor ``[K]``, int64, on the device to draw on
    stream : Stream
    """

    key: tuple[int, int]
    indices: Tensor
    stream: Stream
    calls: int = field(default=0)
    checked: bool = field(default=False, repr=False)

    def __post_init__(self):
        if not self.checked:
            _check_indices(self.indices)     # once: every call reuses the same indices

    @classmethod
    def from_host(cls, key: tuple[int, int], indices: np.ndarray, stream: Stream,
                  device: torch.device | str) -> "CounterStream":
        """The stream of instances ``indices`` (checked on the host: no device sync), drawing on ``device``."""
        idx = np.asarray(indices, dtype=np.int64)
        _check_indices(torch.from_numpy(idx))
        return cls(key, torch.as_tensor(idx, device=device), stream, checked=True)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def fill(self, kind: str, out: Tensor) -> Tensor:
        """Fill ``out`` ``[K, n]`` (float32, contiguous) with the next call's draws of ``kind``."""
        _fill(kind, out, self.key, self.indices, self.stream, self.calls)
        self.calls += 1
        return out

    def normal(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        """The next call's standard normals, ``[K, *shape]``."""
        n = int(np.prod(shape)) if len(shape) else 1
        out = self.fill("normal", torch.empty((len(self), n), device=self.indices.device))
        return out.view(len(self), *shape).to(dtype)
