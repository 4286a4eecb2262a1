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
_BROKEN: list[str] = []           # errors that made the per-layer kernel unusable here
_BROKEN_MLP3: list[str] = []      # likewise for the three-layer kernel (the per-layer one may still run)


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


def usable(x: Tensor) -> bool:
    """Whether the fused kernels can run on ``x``: float32 on CUDA, no gradients, no autocast, Triton here (the
    callers check the chips: one program effect)."""
    return (x.is_cuda and x.dtype == torch.float32 and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cuda") and triton_importable())


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
    if _BROKEN or not usable(x) or K > MAX_GRID_Y or z.stride(-1) != 1:
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


# --------------------------------------------------------------------------- three layers in one kernel
#: limits of :func:`affine_mlp3`: the input width (held per tile), the second hidden width (one accumulator
#: tile) and the outputs (one narrow tile); the first hidden width is any (streamed in chunks)
MLP3_MAX_IN, MLP3_MAX_H2, MLP3_MAX_OUT = 128, 256, 32


@functools.lru_cache(maxsize=1)
def _mlp3_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def mlp3_kernel(x_ptr, y_ptr, w01, z1, c1_ptr, b1, w02, z2, c2_ptr, b2, w03, z3, c3_ptr, b3, B, sxk, sxb, szk,
                    IN: tl.constexpr, H1: tl.constexpr, H2: tl.constexpr, OUT: tl.constexpr,
                    INP: tl.constexpr, H2P: tl.constexpr, OUTP: tl.constexpr, PRECISION: tl.constexpr,
                    BM: tl.constexpr, BH: tl.constexpr):
        k = tl.program_id(1).to(tl.int64)
        rm = tl.program_id(0) * BM + tl.arange(0, BM)
        ri = tl.arange(0, INP)
        r2 = tl.arange(0, H2P)
        r3 = tl.arange(0, OUTP)
        m_ok = rm < B
        x = tl.load(x_ptr + k * sxk + rm[:, None] * sxb + ri[None, :], mask=m_ok[:, None] & (ri[None, :] < IN),
                    other=0.0)
        acc = tl.zeros((BM, H2P), dtype=tl.float32)
        c2 = tl.load(c2_ptr + r2, mask=r2 < H2, other=0.0)
        for h0 in range(0, H1, BH):
            rh = h0 + tl.arange(0, BH)
            # layer 1's weights, transposed [INP, BH]: (w0 + coef * z_k)[h, i] at [i, h]
            ok = (ri[:, None] < IN) & (rh[None, :] < H1)
            off = rh[None, :] * IN + ri[:, None]
            w = tl.load(w01 + off, mask=ok, other=0.0) + tl.load(c1_ptr + rh, mask=rh < H1, other=0.0)[None, :] * \
                tl.load(z1 + k * szk + off, mask=ok, other=0.0)
            h = tl.dot(x, w, input_precision=PRECISION)
            h += tl.load(b1 + k * H1 + rh, mask=rh < H1, other=0.0)[None, :]
            h = tl.where(h < 0.0, 0.0, h)
            # layer 2's weights, transposed [BH, H2P]
            ok = (rh[:, None] < H1) & (r2[None, :] < H2)
            off = r2[None, :] * H1 + rh[:, None]
            w = tl.load(w02 + off, mask=ok, other=0.0) + c2[None, :] * tl.load(z2 + k * szk + off, mask=ok, other=0.0)
            acc = tl.dot(h, w, acc, input_precision=PRECISION)
        acc += tl.load(b2 + k * H2 + r2, mask=r2 < H2, other=0.0)[None, :]
        acc = tl.where(acc < 0.0, 0.0, acc)
        # layer 3's weights, transposed [H2P, OUTP]
        ok = (r2[:, None] < H2) & (r3[None, :] < OUT)
        off = r3[None, :] * H2 + r2[:, None]
        w = tl.load(w03 + off, mask=ok, other=0.0) + tl.load(c3_ptr + r3, mask=r3 < OUT, other=0.0)[None, :] * \
            tl.load(z3 + k * szk + off, mask=ok, other=0.0)
        out = tl.dot(acc, w, input_precision=PRECISION)
        out += tl.load(b3 + k * OUT + r3, mask=r3 < OUT, other=0.0)[None, :]
        tl.store(y_ptr + k * B * OUT + rm[:, None] * OUT + r3[None, :], out, mask=m_ok[:, None] & (r3[None, :] < OUT))

    return mlp3_kernel


def _pow2(n: int, least: int = 16) -> int:
    return max(least, 1 << (int(n) - 1).bit_length())


def mlp3_fits(n_in: int, h1: int, h2: int, n_out: int) -> bool:
    """Whether :func:`affine_mlp3` takes a network of these widths (:data:`MLP3_MAX_IN` and friends)."""
    return n_in <= MLP3_MAX_IN and h2 <= MLP3_MAX_H2 and n_out <= MLP3_MAX_OUT and h1 >= 1


def mlp3_config(h2: int) -> dict:
    """Tile and launch options of :func:`affine_mlp3` (fixed, as :func:`tile_config`): ``BM`` samples per
    program, the first hidden layer streamed ``BH`` units at a time. Chosen on an H200 for the digits MLP
    (``reports/bench/README.md``: 128 x 64, 8 warps, one stage ran in 9.0 ms per 16,384 chips; 64 x 32 in 18.6)."""
    return {"BM": 128, "BH": 64, "num_warps": 8, "num_stages": 1}


def affine_mlp3(x: Tensor, layers: list[tuple], *, shared: bool, K: int, B: int, config: dict | None = None,
                precision: str | None = None) -> Tensor | None:
    """A three-layer ReLU MLP of affine chips in one kernel: ``relu(relu(x W1^T + b1) W2^T + b2) W3^T + b3`` for
    every chip, the weights formed from the draws tile by tile and no activation ever written to memory; or None
    where it cannot run (:func:`usable`, :func:`mlp3_fits`).

    Parameters
    ----------
    x : Tensor ``[B, in]`` (``shared``) or ``[K*B, in]``, float32, unit stride along ``in``
    layers : three tuples ``(w0 [O, in], coef [O, 1], z [K, O, in], bias [K, O])``
        Per layer as for :func:`affine_linear`; every ``z`` a view of one draw block (the same chip stride),
        every bias present (made contiguous: row stride ``O``).
    config : dict, optional
        Default :func:`mlp3_config`.
    precision : {"tf32", "ieee"}, optional
        Default: TF32 when ``torch.backends.cuda.matmul.allow_tf32`` is set.

    Returns
    -------
    Tensor ``[K, B, out]``, contiguous, or None.
    """
    if _BROKEN or _BROKEN_MLP3 or not usable(x) or K > MAX_GRID_Y or len(layers) != 3 or x.stride(-1) != 1:
        return None
    (w1, _, z1, bias1), (w2, _, z2, bias2), (w3, _, z3, bias3) = layers
    dims = (w1.shape[1], w1.shape[0], w2.shape[0], w3.shape[0])
    if (not mlp3_fits(*dims) or w2.shape[1] != dims[1] or w3.shape[1] != dims[2] or x.shape[-1] != dims[0]
            or any(z.stride(-1) != 1 or z.stride(0) != z1.stride(0) for z in (z1, z2, z3))
            or any(b is None for b in (bias1, bias2, bias3))):
        return None
    try:
        return launch_mlp3(x, layers, shared=shared, K=K, B=B, config=config, precision=precision or (
            "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"))
    except Exception as err:  # noqa: BLE001 - a compiler or driver problem must not stop a study
        _BROKEN_MLP3.append(repr(err))
        warnings.warn(f"anvm_stats: the fused three-layer kernel failed ({err!r}); using one call per layer",
                      RuntimeWarning, stacklevel=2)
        return None


def launch_mlp3(x: Tensor, layers: list[tuple], *, shared: bool, K: int, B: int, config: dict | None = None,
                precision: str = "ieee") -> Tensor:
    """Run the three-layer kernel with no checks of where it can run (:func:`affine_mlp3` checks; tests call
    this on the CPU under Triton's interpreter)."""
    n_in, h1, h2, n_out = layers[0][0].shape[1], layers[0][0].shape[0], layers[1][0].shape[0], layers[2][0].shape[0]
    args = []
    for w0, coef, z, bias in layers:
        args += [w0.contiguous(), z, coef.reshape(-1).contiguous(), bias.contiguous()]
    cfg = config or mlp3_config(h2)
    y = torch.empty((K, B, n_out), device=x.device, dtype=torch.float32)
    grid = (-(-B // cfg["BM"]), K)
    _mlp3_kernel()[grid](x, y, *args, B, 0 if shared else B * x.stride(0), x.stride(0), layers[0][2].stride(0),
                         IN=n_in, H1=h1, H2=h2, OUT=n_out, INP=_pow2(n_in), H2P=_pow2(h2),
                         OUTP=_pow2(n_out), PRECISION=precision, BM=cfg["BM"], BH=cfg["BH"],
                         num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return y
