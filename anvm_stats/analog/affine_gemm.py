"""Programming, GEMM, bias and ReLU of an affine chip's linear layer in one CUDA kernel.

For chips whose weights are affine in their draws (:mod:`anvm_stats.analog.affine`, one program effect), a
linear layer of ``K`` chips is::

    y[k] = act(x_k @ (w0 + coef * z_k)^T + bias[k])        bias[k] = (b0 + coef * zb_k) * bias_scale

Done with library calls this is three passes over memory besides the GEMM: ``addcmul`` writes the ``K x O x in``
weights, the GEMM writes ``x W^T``, and a fused pass adds the bias and clamps (:mod:`anvm_stats.analog.fused`). On a
GPU those passes, not the multiplications, bound a K-chip MLP (``reports/bench/README.md``). Here one Triton
kernel reads the draws ``z`` and the nominal weights ``w0`` tile by tile, forms the weights in registers, multiplies
(tensor cores in TF32 when ``torch.backends.cuda.matmul.allow_tf32`` is set, as cuBLAS would; full float32
otherwise), adds the bias and applies the ReLU before its one store.

Each program computes one ``BM x BN`` tile of one chip, summing over the inputs in a fixed order, so a chip's
outputs do not depend on how many chips run together. Results agree with the library path to float round-off
(the weights are formed with one multiply-add, the sums run in another order). Elsewhere (CPU, no Triton,
gradients, autocast, several program effects, a kernel that failed) :func:`affine_linear` returns None and the
caller takes the library path.
"""

from __future__ import annotations

import functools
import warnings

import torch

from ..counter_rng_triton import triton_importable

Tensor = torch.Tensor
MAX_GRID_Y = 65535
_BROKEN: list[str] = []


@functools.lru_cache(maxsize=1)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def affine_linear_kernel(x_ptr, z_ptr, w0_ptr, coef_ptr, bias_ptr, y_ptr, B, O,
                             sxk, sxb, szk, szo, sbk, IN: tl.constexpr,
                             HAS_BIAS: tl.constexpr, RELU: tl.constexpr, PRECISION: tl.constexpr,
                             BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        k = tl.program_id(1).to(tl.int64)
        n_tiles = tl.cdiv(O, BN)
        pid = tl.program_id(0)
        rm = (pid // n_tiles) * BM + tl.arange(0, BM)
        rn = (pid % n_tiles) * BN + tl.arange(0, BN)
        ri = tl.arange(0, BK)
        m_ok = rm < B
        n_ok = rn < O
        coef = tl.load(coef_ptr + rn, mask=n_ok, other=0.0)
        x_rows = x_ptr + k * sxk + rm[:, None] * sxb
        z_cols = z_ptr + k * szk + rn[None, :] * szo
        w_cols = w0_ptr + rn[None, :] * IN
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for i0 in range(0, IN, BK):
            i = i0 + ri
            i_ok = i < IN
            a = tl.load(x_rows + i[None, :], mask=m_ok[:, None] & i_ok[None, :], other=0.0)
            bz = tl.load(z_cols + i[:, None], mask=i_ok[:, None] & n_ok[None, :], other=0.0)
            bw = tl.load(w_cols + i[:, None], mask=i_ok[:, None] & n_ok[None, :], other=0.0)
            acc = tl.dot(a, bw + coef[None, :] * bz, acc, input_precision=PRECISION)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + k * sbk + rn, mask=n_ok, other=0.0)[None, :]
        if RELU:
            acc = tl.where(acc < 0.0, 0.0, acc)          # NaN stays NaN, as in relu
        tl.store(y_ptr + k * B * O + rm[:, None] * O + rn[None, :], acc, mask=m_ok[:, None] & n_ok[None, :])

    return affine_linear_kernel


def tile_config(n_out: int, n_in: int) -> dict:
    """Tile sizes and launch options by the layer's shape (fixed, not autotuned: the summation order, and so the
    round-off, must not depend on which configuration a timing run happened to pick). Chosen on an H200 for the
    digits MLP's layers (``reports/bench/README.md``): the whole input in one step for inputs up to 64 (a
    ``128 x 64 x 64`` step with ``BN = 256`` would exceed shared memory), ``BN = 256`` for wide layers, narrow
    ``BN = 16`` tiles for layers of at most 16 outputs."""
    if n_out <= 16:
        return {"BM": 64, "BN": 16, "BK": 64, "num_warps": 4, "num_stages": 3}
    if n_out <= 64:
        return {"BM": 128, "BN": 64, "BK": 32, "num_warps": 4, "num_stages": 4}
    if n_in <= 64 or n_out <= 128:
        return {"BM": 128, "BN": 128, "BK": 64 if n_in <= 64 else 32, "num_warps": 8, "num_stages": 3}
    return {"BM": 128, "BN": 256, "BK": 32, "num_warps": 8, "num_stages": 3}


def usable(x: Tensor, n_effects: int) -> bool:
    """Whether the fused kernel can run on ``x`` for a chip with ``n_effects`` program effects."""
    return (x.is_cuda and x.dtype == torch.float32 and n_effects == 1 and not _BROKEN
            and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cuda") and triton_importable())


def affine_linear(x: Tensor, w0: Tensor, coef: Tensor, z: Tensor, bias: Tensor | None, *, shared: bool, K: int,
                  B: int, relu: bool, config: dict | None = None) -> Tensor | None:
    """``act(x_k @ (w0 + coef * z_k)^T + bias[k])`` for every chip ``k``, or None where the kernel cannot run.

    Parameters
    ----------
    x : Tensor ``[B, in]`` (``shared``: the same input for every chip) or ``[K*B, in]``, float32, contiguous
    w0 : Tensor ``[O, in]``
        Nominal weights.
    coef : Tensor ``[O, 1]`` or ``[O]``
        Weight change per unit draw.
    z : Tensor ``[K, O, in]``
        The chips' draws; any strides with unit stride along ``in`` (a view of the draw block).
    bias : Tensor ``[K, O]`` or None
        Every chip's bias (bias-column values times the bias scale).
    relu : bool
        Clamp at zero (a fused ReLU).
    config : dict, optional
        Tile sizes and launch options (default :func:`tile_config`).

    Returns
    -------
    Tensor ``[K, B, O]``, contiguous, or None.
    """
    if not usable(x, 1) or K > MAX_GRID_Y or z.stride(-1) != 1:
        return None
    O, n_in = w0.shape
    if x.stride(-1) != 1 or z.shape != (K, O, n_in) or x.shape[-1] != n_in:
        return None
    try:
        return launch(x, w0, coef, z, bias, shared=shared, K=K, B=B, relu=relu, config=config,
                      precision="tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee")
    except Exception as err:  # noqa: BLE001 - a compiler or driver problem must not stop a study
        _BROKEN.append(repr(err))
        warnings.warn(f"anvm_stats: the fused affine linear kernel failed ({err!r}); using library calls",
                      RuntimeWarning, stacklevel=2)
        return None


def launch(x: Tensor, w0: Tensor, coef: Tensor, z: Tensor, bias: Tensor | None, *, shared: bool, K: int, B: int,
           relu: bool, config: dict | None = None, precision: str = "ieee") -> Tensor:
    """Run the kernel with no checks of where it can run (:func:`affine_linear` checks; tests call this on the CPU
    under Triton's interpreter). Arguments as :func:`affine_linear`; ``precision``: ``tl.dot``'s input precision
    ("tf32" or "ieee")."""
    O, n_in = w0.shape
    w0 = w0.contiguous()
    coef = coef.reshape(O).contiguous()
    if bias is not None:
        bias = bias.contiguous()
    y = torch.empty((K, B, O), device=x.device, dtype=torch.float32)
    cfg = config or tile_config(O, n_in)
    tiles = {k: cfg[k] for k in ("BM", "BN", "BK")}
    grid = (-(-B // tiles["BM"]) * -(-O // tiles["BN"]), K)
    _kernel()[grid](x, z, w0, coef, bias if bias is not None else coef, y, B, O,
                    0 if shared else B * x.stride(0), x.stride(0), z.stride(0), z.stride(1),
                    0 if bias is None else bias.stride(0), IN=n_in, HAS_BIAS=bias is not None, RELU=relu,
                    PRECISION=precision, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **tiles)
    return y
