"""Fused bias + ReLU for CUDA linear layers: one pass over the layer's output instead of three.

``torch.baddbmm(bias, x, w)`` first writes the broadcast bias into the output, the GEMM then reads it back, and a
following ReLU reads and writes it again. For hidden layers of K-instance MLPs on a GPU those passes over
``[K, B, O]`` outweigh the GEMM itself (``reports/bench/README.md``). Here the GEMM writes ``x w^T`` and one
Triton kernel applies ``relu(y + bias[k])`` in place. Elsewhere (CPU, no Triton, a kernel that failed) the same
result comes from ``add_`` and ``relu_``.
"""

from __future__ import annotations

import functools
import warnings

import torch

Tensor = torch.Tensor
BLOCK = 2048
MAX_GRID_Y = 65535
_BROKEN: list[str] = []


@functools.lru_cache(maxsize=1)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def bias_relu(y_ptr, b_ptr, n_per_instance, n_out, BLOCK: tl.constexpr):
        k = tl.program_id(1)
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n_per_instance
        base = k.to(tl.int64) * n_per_instance
        v = tl.load(y_ptr + base + offs, mask=mask) + tl.load(b_ptr + k.to(tl.int64) * n_out + offs % n_out,
                                                                mask=mask)
        tl.store(y_ptr + base + offs, tl.where(v < 0.0, 0.0, v), mask=mask)   # NaN stays NaN, as in relu

    return bias_relu


def _usable(y: Tensor) -> bool:
    if not y.is_cuda or _BROKEN or y.dtype != torch.float32 or y.shape[0] > MAX_GRID_Y:
        return False
    from ..counter_rng_triton import triton_importable
    return triton_importable()


def bias_relu_(y: Tensor, bias: Tensor) -> Tensor:
    """``y <- relu(y + bias[:, None, :])`` in place.

    Parameters
    ----------
    y : Tensor ``[K, B, O]``, contiguous
    bias : Tensor ``[K, O]``
    """
    if y.dim() != 3 or not y.is_contiguous() or bias.shape != (y.shape[0], y.shape[2]):
        raise ValueError(f"bias_relu_: y {tuple(y.shape)} (contiguous [K, B, O]) and bias {tuple(bias.shape)} "
                         "([K, O]) do not match")
    if _usable(y):
        K, B, O = y.shape
        try:
            _kernel()[(-(-(B * O) // BLOCK), K)](y, bias.contiguous(), B * O, O, BLOCK=BLOCK)
            return y
        except Exception as err:  # noqa: BLE001 - a compiler or driver problem must not stop a study
            _BROKEN.append(repr(err))
            warnings.warn(f"anvm_stats: the fused bias+ReLU kernel failed ({err!r}); using add_ and relu_",
                          RuntimeWarning, stacklevel=2)
    return y.add_(bias.unsqueeze(1)).relu_()
