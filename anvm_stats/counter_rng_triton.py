"""The counter-based sampler of :mod:`anvm_stats.counter_rng` as one Triton kernel (CUDA only).

Program ``(r, j)`` computes blocks ``j*BLOCK .. j*BLOCK+BLOCK-1`` of row ``r``: Philox4x32-10 on 32-bit words
(``tl.umulhi`` for the high words), then the same uniform / Box-Muller conversion as the torch reference.
Imported lazily; :func:`triton_available` says whether it can run here (CI machines have no GPU and may have no
Triton: the reference runs there, and a device test checks this kernel against it).
"""

from __future__ import annotations

import functools
import warnings

import torch

Tensor = torch.Tensor
BLOCK = 1024
MAX_GRID_Y = 65535


@functools.lru_cache(maxsize=1)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def philox_fill(out_ptr, idx_ptr, meta_ptr, n, n_blocks, row_stride, NORMAL: tl.constexpr, JOIN: tl.constexpr,
                    BLOCK: tl.constexpr):
        row = tl.program_id(0)
        b = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inst = tl.load(idx_ptr + row)
        zero = tl.zeros([BLOCK], dtype=tl.uint32)
        k0 = zero + tl.load(meta_ptr).to(tl.uint32)
        k1 = zero + tl.load(meta_ptr + 1).to(tl.uint32)
        c1 = zero + tl.load(meta_ptr + 2).to(tl.uint32)
        c0 = b.to(tl.uint32)
        c2 = zero + (inst & 0xFFFFFFFF).to(tl.uint32)
        c3 = zero + (inst >> 32).to(tl.uint32)
        m0 = tl.full([BLOCK], 0xD2511F53, tl.uint32)
        m1 = tl.full([BLOCK], 0xCD9E8D57, tl.uint32)
        w0 = tl.full([BLOCK], 0x9E3779B9, tl.uint32)
        w1 = tl.full([BLOCK], 0xBB67AE85, tl.uint32)
        for _ in tl.static_range(10):
            n0 = tl.umulhi(m1, c2) ^ c1 ^ k0
            n2 = tl.umulhi(m0, c0) ^ c3 ^ k1
            c1 = m1 * c2
            c3 = m0 * c0
            c0 = n0
            c2 = n2
            k0 = k0 + w0
            k1 = k1 + w1
        if NORMAL:
            u1a = c0.to(tl.float32) * 2.3283064365386963e-10 + 1.1641532182693481e-10
            u1b = c2.to(tl.float32) * 2.3283064365386963e-10 + 1.1641532182693481e-10
            ra = tl.sqrt(-2.0 * tl.log(u1a))
            rb = tl.sqrt(-2.0 * tl.log(u1b))
            ta = 6.283185307179586 * ((c1 >> 8).to(tl.float32) * 5.960464477539063e-08)
            tb = 6.283185307179586 * ((c3 >> 8).to(tl.float32) * 5.960464477539063e-08)
            v0 = ra * tl.cos(ta)
            v1 = ra * tl.sin(ta)
            v2 = rb * tl.cos(tb)
            v3 = rb * tl.sin(tb)
        else:
            v0 = (c0 >> 8).to(tl.float32) * 5.960464477539063e-08
            v1 = (c1 >> 8).to(tl.float32) * 5.960464477539063e-08
            v2 = (c2 >> 8).to(tl.float32) * 5.960464477539063e-08
            v3 = (c3 >> 8).to(tl.float32) * 5.960464477539063e-08
        base = out_ptr + row.to(tl.int64) * row_stride
        if JOIN:
            # element order v0, v1, v2, v3 of each block, stored as one contiguous run of 4*BLOCK
            v = tl.reshape(tl.join(tl.join(v0, v2), tl.join(v1, v3)), [4 * BLOCK])
            e = 4 * BLOCK * tl.program_id(1).to(tl.int64) + tl.arange(0, 4 * BLOCK)
            tl.store(base + e, v, mask=e < n)
        else:
            e = 4 * b.to(tl.int64)
            tl.store(base + e, v0, mask=e < n)
            tl.store(base + e + 1, v1, mask=e + 1 < n)
            tl.store(base + e + 2, v2, mask=e + 2 < n)
            tl.store(base + e + 3, v3, mask=e + 3 < n)

    return philox_fill


_BROKEN: list[str] = []     # errors that made the kernel unusable here
_NO_JOIN: list[str] = []    # errors of the contiguous-store variant (the strided one is used then)


@functools.lru_cache(maxsize=1)
def triton_importable() -> bool:
    """Whether Triton imports here (cached)."""
    try:
        import triton.language  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means: use the reference
        return False
    return True


def triton_available() -> bool:
    """True when a CUDA device and Triton are present and the kernel has not failed here before."""
    return torch.cuda.is_available() and triton_importable() and not _BROKEN


def fill_triton(kind: str, out: Tensor, idx: Tensor, word1: int, key: tuple[int, int]) -> bool:
    """Fill CUDA ``out`` ``[K, n]`` (float32, contiguous rows; the row stride may exceed ``n``) with ``kind`` in {"normal", "uniform"} draws of
    instances ``idx`` (int64 ``[K]``); see :func:`anvm_stats.counter_rng.fill_counter`. Returns False, leaving
    ``out`` unfilled, where the kernel cannot run (the caller then uses the torch reference); a kernel that fails
    to build or run is reported once and not tried again."""
    K, n = out.shape
    n_blocks = -(-n // 4)
    grid = (K, -(-n_blocks // BLOCK))
    if not out.is_cuda or grid[1] > MAX_GRID_Y or not triton_available():
        return False
    meta = torch.tensor([key[0], key[1], word1], dtype=torch.int64, device=out.device)
    idx = idx.to(device=out.device, dtype=torch.int64).contiguous()
    while True:
        join = not _NO_JOIN
        try:
            _kernel()[grid](out, idx, meta, n, n_blocks, out.stride(0), NORMAL=kind == "normal", JOIN=join,
                            BLOCK=BLOCK)
            return True
        except Exception as err:  # noqa: BLE001 - a compiler or driver problem must not stop a study
            if join:              # an older Triton without join/reshape: four strided stores instead
                _NO_JOIN.append(repr(err))
                continue
            _BROKEN.append(repr(err))
            warnings.warn(f"anvm_stats: the Triton sampler failed ({err!r}); using the torch reference (slower)",
                          RuntimeWarning, stacklevel=2)
            return False
