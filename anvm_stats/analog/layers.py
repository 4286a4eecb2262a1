"""The analog layer: a drop-in module that runs K chip instances of one crossbar layer at once.

Activations of K instances travel through the (copied) network folded into the batch dim, ``[K*B, ...]``,
instance-major, so every digital module (ReLU, pooling, residual adds, flatten) works unchanged. Before the first
analog layer the activations are still shared ``[B, ...]``; that layer computes all instances with one GEMM or
convolution against the stacked weights. Linear layers use batched GEMMs; convolutions use a grouped convolution
with ``groups = K``.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
import torch.nn.functional as F
from torch import nn

from ..counter_rng import CounterStream
from ..hardware.mapping import LayerEncoding
from ..hardware.periphery import calibrate_range, quantize
from .fused import bias_relu_
from .lazy import LazyAffine

Tensor = torch.Tensor
_CONV = {"conv1d": F.conv1d, "conv2d": F.conv2d}
#: per-instance input elements (batch included) above which convolutions loop over instances
CONV_LOOP_ELEMENTS = 1 << 17
#: on CUDA, hidden linear layers add their bias and ReLU in one fused pass (analog/fused.py): on an H200 the
#: 16,384-chip digits MLP went from 0.32 to 0.43 of its limit (baddbmm's bias broadcast and a separate ReLU cost
#: three passes over every hidden output)
FUSE_BIAS_RELU_CUDA = True


#: linear layers with at most this many outputs (and a batch of at least 8x as many samples) compute
#: ``W x^T`` (``[K, O, B]``) instead of ``x W^T``: a GEMM with ``N = O`` this small runs at ~40 % of the
#: machine's rate on CPU, the transposed one at ~65 % (measured on 2 cores, O = 10, B = 360)
SMALL_OUT = 16


def _channels_last(x: Tensor) -> bool:
    """``x`` is a 4-d channels-last (NHWC-strided) tensor that is not also plainly contiguous."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


#: on CPU, run linear layers through oneDNN (:func:`_onednn_linear`) rather than MKL's batched GEMM, which reaches
#: half of oneDNN's rate on AMD CPUs: for 16-22 instances of [360 x 256] @ [256 x 256] on 2 Zen 5 cores, ~190
#: GFLOP/s batched MKL, ~300 one oneDNN call per instance, ~380 one grouped call over sample-major activations.
#: oneDNN picks kernels by call shape and thread count: results are bitwise chunk-invariant (every call has the same
#: shape) but depend on the number of threads
ONEDNN_LINEAR = True


def _onednn_linear(x: Tensor, w: Tensor, bias: Tensor | None, shared: bool, K: int, B: int,
                   sample_major: bool = False, narrow: bool = False) -> Tensor:
    """``x_k @ w[k]^T + bias[k]`` for every instance ``k``, as ``[K, B, O]`` (possibly a strided view).

    The ``B`` samples are the positions of a channels-last ``[1, C, B, 1]`` image. Instance-major activations
    (``[K*B, in]``): one 1x1 convolution per instance (no copies in; each output lands in its rows).
    Sample-major activations (``[B*K, in]``, ``LayerRuntime.sample_major``): one grouped 1x1 convolution, group
    ``k`` holding instance ``k`` (a shared input: one convolution with ``K * O`` outputs), with no copies at all
    and the output sample-major too. oneDNN picks its kernel from the call's shape, so the caller keeps ``K`` fixed
    (``chunking.SAMPLE_MAJOR_CHUNK``) to keep results independent of the chunking. ``narrow`` (few outputs):
    a grouped convolution with ~10 outputs per group runs at ~60 GFLOP/s, a batched ``W x^T`` reading the
    sample-major inputs in place at ~130."""
    O, n_in = w.shape[1], w.shape[2]
    if sample_major and narrow:
        xt = x.reshape(B, K, n_in).permute(1, 2, 0)                                 # [K, in, B], no copy
        y = torch.bmm(w, xt) if bias is None else torch.baddbmm(bias.unsqueeze(2), w, xt)
        return y.transpose(1, 2)
    if sample_major:
        wg = w.reshape(K * O, n_in, 1, 1)
        bg = None if bias is None else bias.reshape(K * O)
        if shared:
            y = F.conv2d(x.reshape(1, B, 1, n_in).permute(0, 3, 1, 2), wg, bg)
        else:
            y = F.conv2d(x.reshape(1, B, 1, K * n_in).permute(0, 3, 1, 2), wg, bg, groups=K)
        return y.permute(0, 2, 3, 1).reshape(B, K, O).transpose(0, 1)
    xv = x if shared else x.reshape(K, B, n_in)
    out = torch.empty((K, B, O), dtype=w.dtype, device=w.device)
    for k in range(K):
        xk = (xv if shared else xv[k]).reshape(1, B, 1, n_in).permute(0, 3, 1, 2)
        yk = F.conv2d(xk, w[k].reshape(O, n_in, 1, 1), None if bias is None else bias[k])
        out[k].copy_(yk.permute(0, 2, 3, 1).reshape(B, O))
    return out


def _narrow_output(x3: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
    """``x3 @ w^T (+ bias)`` as ``[K, B, O]`` (a transposed view), computed as ``w @ x3^T``.

    A batched GEMM of one matrix can take another kernel than the same matrix inside a batch (seen with MKL:
    round-off differs), so a single instance is computed as a batch of two: results never depend on ``K``."""
    K = w.shape[0]
    if K == 1:     # a real batch of two (an expanded one takes yet another path)
        x3, w = x3.repeat(2, 1, 1), w.repeat(2, 1, 1)
        bias = None if bias is None else bias.repeat(2, 1)
    xt = x3.transpose(1, 2)
    y = torch.bmm(w, xt) if bias is None else torch.baddbmm(bias.unsqueeze(2), w, xt)
    return y[:K].transpose(1, 2)


@dataclass(frozen=True, eq=False)
class LayerPlan:
    """Static description of one analog layer.

    Attributes
    ----------
    name : str
        Qualified module name in the user's model.
    op : {"linear", "conv1d", "conv2d"}
    out_features, in_features : int
        Crossbar shape: outputs (columns) and inputs per output (``C/groups * prod(kernel)`` for convs).
    kernel : tuple of int
        Kernel size (empty for linear).
    conv : dict
        stride, padding, dilation, groups for convs.
    bias_mode : {"column", "digital", "none"}
    bias_scale : float
        ``s`` of the bias column ``W~ = [W, b/s]`` (input value of the extra row).
    digital_bias : Tensor [out] or None
    encoding : LayerEncoding
        Combination / gain / offset of the mapping (nominal ``g`` kept for reference).
    w_slice, b_slice : slice
        Where this layer's weight devices ``[A, out, in]`` and bias-column devices ``[A, out]`` sit in the chip's
        flat device vector.
    """

    name: str
    op: str
    out_features: int
    in_features: int
    kernel: tuple
    conv: dict
    bias_mode: str
    bias_scale: float
    digital_bias: Tensor | None
    encoding: LayerEncoding
    w_slice: slice
    b_slice: slice | None

    @property
    def n_arrays(self) -> int:
        return self.encoding.n_arrays

    def weight_view(self, g: Tensor) -> Tensor:
        """``[K, A, out, in]`` view of the weight devices in flat conductances ``g`` ``[K, P]``."""
        return g[:, self.w_slice].view(g.shape[0], self.n_arrays, self.out_features, self.in_features)

    def bias_view(self, g: Tensor) -> Tensor | None:
        if self.b_slice is None:
            return None
        return g[:, self.b_slice].view(g.shape[0], self.n_arrays, self.out_features, 1)


@dataclass(eq=False)
class LayerRuntime:
    """What one forward of K instances needs, set by the evaluator before calling the network.

    ``weight``: ``[K, out, in]`` effective weights (mode "weights") or ``[K, S*out, in]`` analog signal
    matrices (mode "signals"); ``bias``: ``[K, out]`` / ``[K, S*out]`` bias-column values or None; or, for chips
    affine in their draws, ``affine`` (weights programmed on first use, see :mod:`anvm_stats.analog.lazy`) and
    ``weight`` None. ``batch``: index of the evaluation batch (names cached products of shared inputs).
    """

    K: int
    B: int
    mode: str
    weight: Tensor | None
    bias: Tensor | None
    affine: LazyAffine | None = None
    batch: int = 0
    ste: bool = False
    dac_levels: int | None = None
    adc_levels: int | None = None
    output_noise: float = 0.0
    noise_sources: object = None          # per-instance torch.Generators or a CounterStream, for output noise
    calibrating: bool = False
    sample_major: bool = False            # activations fold as [B*K, ...] (linear-only programs, see _onednn_linear)


class AnalogModule(nn.Module):
    """Replacement for one Linear / Conv1d / Conv2d in the copied network (see module docstring)."""

    def __init__(self, plan: LayerPlan, dac_percentile: float = 99.99, adc_percentile: float = 99.99):
        super().__init__()
        self.plan = plan
        self.dac_percentile = dac_percentile
        self.adc_percentile = adc_percentile
        self.dac_range: tuple[float, float] | None = None
        self.signal_lo: Tensor | None = None   # [S]
        self.signal_hi: Tensor | None = None
        self.runtime: LayerRuntime | None = None
        self.relu_after = False   # an nn.ReLU that only takes this layer's output, fused (prepare(fuse_relu=True))
        self.input_shared = False  # reads a per-sample input shared by all instances (mark_shared_inputs)

    def extra_repr(self) -> str:
        p = self.plan
        return f"{p.name}: {p.op} {p.in_features}->{p.out_features}, arrays={p.n_arrays}, bias={p.bias_mode}"

    # ------------------------------------------------------------------ helpers
    def _matmul(self, x: Tensor, w: Tensor, bias: Tensor | None, shared: bool, K: int, B: int) -> Tensor:
        """Apply stacked weights ``w`` ``[K, O, in]`` (+ per-instance ``bias`` ``[K, O]``) to ``x``.

        Returns ``[K, B, O, *spatial]`` (possibly a non-contiguous view)."""
        p = self.plan
        O = w.shape[1]
        if p.op == "linear":
            rt = self.runtime
            narrow = not shared and O <= SMALL_OUT and B >= 8 * O and rt.mode == "weights"
            if x.device.type == "cpu" and ONEDNN_LINEAR and (rt.sample_major or not narrow):
                return _onednn_linear(x, w, bias, shared, K, B, rt.sample_major, narrow)
            # shared input: broadcast it over instances (no copy); the output comes out contiguous [K, B, O]
            x3 = x.expand(K, *x.shape) if shared else self._instances(x, K, B)
            if narrow and not rt.sample_major:
                return _narrow_output(x3, w, bias)
            wt = w.transpose(1, 2)
            return torch.bmm(x3, wt) if bias is None else torch.baddbmm(bias.unsqueeze(1), x3, wt)
        conv = _CONV[p.op]
        groups = p.conv["groups"]
        kw = dict(stride=p.conv["stride"], padding=p.conv["padding"], dilation=p.conv["dilation"])
        per_instance = x[0].numel() * B
        if per_instance >= CONV_LOOP_ELEMENTS:
            # large activations: one ordinary convolution per instance beats a K-group convolution on CPU
            # (measured 1.4-3x on 2 cores) and needs no transposes
            xv = x if shared else x.view(K, B, *x.shape[1:])
            wv = w.view(K, O, -1, *p.kernel)
            if K == 1:
                y = conv(x if shared else xv[0], wv[0], None if bias is None else bias[0], groups=groups, **kw)
                return y.unsqueeze(0)
            # each instance's output goes into its rows of one tensor laid out like the input (channels-last
            # activations stay channels-last: oneDNN's fast layout on CPU)
            fmt = torch.channels_last if _channels_last(x) else torch.contiguous_format
            out = None
            for k in range(K):
                yk = conv(xv if shared else xv[k], wv[k], None if bias is None else bias[k], groups=groups, **kw)
                if out is None:
                    out = torch.empty((K * B, *yk.shape[1:]), dtype=yk.dtype, device=yk.device, memory_format=fmt)
                out[k * B:(k + 1) * B].copy_(yk)
            return out.view(K, B, *out.shape[1:])
        if K == 1 and x.device.type == "cpu":
            # a grouped convolution of one group is a plain one, another kernel with other round-off: run a
            # single chip as a batch of two (as _narrow_output does) so results do not depend on the chunking
            x2 = x if shared else torch.cat([x, x])
            b2 = None if bias is None else bias.repeat(2, 1)
            return self._matmul(x2, w.repeat(2, 1, 1), b2, shared, 2, B)[:1]
        wk = w.reshape(K * O, -1, *p.kernel)
        bk = None if bias is None else bias.reshape(K * O)
        if shared and groups == 1:
            y = conv(x, wk, bk, groups=1, **kw)
        else:
            if shared:
                x = x.unsqueeze(0).expand(K, *x.shape).reshape(K * B, *x.shape[1:])
            xs = x.view(K, B, *x.shape[1:]).transpose(0, 1).reshape(B, K * x.shape[1], *x.shape[2:])
            y = conv(xs, wk, bk, groups=K * groups, **kw)
        return y.view(B, K, O, *y.shape[2:]).transpose(0, 1)

    def _input_sum(self, x: Tensor, shared: bool, K: int, B: int) -> Tensor:
        """Sum of each output's inputs, ``[K or 1, B, O or 1, *spatial]`` (for digital offset correction)."""
        p = self.plan
        if p.op == "linear":
            s = x.sum(dim=-1, keepdim=True)
            s = s.view(1, B, 1) if s.shape[0] == B else self._instances(s, K, B)
        else:
            groups = p.conv["groups"]
            ones = x.new_ones(groups, x.shape[1] // groups, *p.kernel)
            s = _CONV[p.op](x, ones, None, stride=p.conv["stride"], padding=p.conv["padding"],
                            dilation=p.conv["dilation"], groups=groups)
            s = s.repeat_interleave(p.out_features // groups, dim=1)
            s = s.view(-1, B, *s.shape[1:])
        return s

    def _instances(self, t: Tensor, K: int, B: int) -> Tensor:
        """``[K, B, ...]`` view of a folded per-instance tensor ``[K*B, ...]`` (or ``[B*K, ...]`` sample-major)."""
        if self.runtime.sample_major:
            return t.view(B, K, *t.shape[1:]).transpose(0, 1)
        return t.view(K, B, *t.shape[1:])

    def _channel_view(self, t: Tensor, ndim_spatial: int) -> Tensor:
        return t.view(*t.shape, *([1] * ndim_spatial))

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        rt = self.runtime
        if rt is None:
            raise RuntimeError(f"analog layer {self.plan.name!r} called outside an AnalogProgram evaluation")
        K, B = rt.K, rt.B
        if x.shape[0] not in (B, K * B):
            raise RuntimeError(f"analog layer {self.plan.name!r}: batch dim {x.shape[0]} is neither B={B} nor "
                               f"K*B={K * B}; the model mixes per-sample and per-instance tensors")
        shared = x.shape[0] == B and K > 1
        x_in = x
        if rt.dac_levels is not None:
            if rt.calibrating:
                self.dac_range = calibrate_range(x, self.dac_percentile)
            x = quantize(x, *self.dac_range, rt.dac_levels, ste=rt.ste)
        p = self.plan
        lazy = rt.affine
        if lazy is not None and self.input_shared and len(lazy.coef) == 1:
            # names the input of cached products (before DAC quantisation, which makes a new tensor each call)
            key = (p.name, rt.batch, rt.dac_levels, x_in.data_ptr(), tuple(x_in.shape), x_in.stride())
            y = lazy.shared_input_output(key, lambda w, b, k: self._matmul(x, w, b, shared and k > 1, k, B),
                                         p.bias_scale)
        else:
            w, b = lazy.weights() if lazy is not None else (rt.weight, rt.bias)
            bias = None if b is None else b * p.bias_scale
            fuse = (FUSE_BIAS_RELU_CUDA and x.is_cuda and p.op == "linear" and bias is not None and self.relu_after
                    and rt.mode != "signals" and p.digital_bias is None and not torch.is_grad_enabled())
            y = self._matmul(x, w, None if fuse else bias, shared, K, B)
            if fuse:
                if y.dim() == 3 and y.is_contiguous():
                    return self._out(bias_relu_(y, bias), K, B)
                y = y + bias.unsqueeze(1)
        nsp = y.dim() - 3
        enc = p.encoding
        if rt.mode == "signals":
            y = self._digitise(y, rt, K, B)
            S, O = enc.n_signals, p.out_features
            y = y.reshape(K, B, S, O, *y.shape[3:])
            y = (y * self._channel_view(enc.gain, nsp)).sum(dim=2)
            if enc.offset is not None:
                xsum = self._input_sum(x, shared, K, B)
                if p.bias_mode == "column":
                    xsum = xsum + p.bias_scale
                y = y + xsum * self._channel_view(enc.offset, nsp)
        if p.digital_bias is not None:
            y = y + self._channel_view(p.digital_bias, nsp)
        if self.relu_after:
            y = y.relu_() if not y.requires_grad else torch.relu(y)
        return self._out(y, K, B)

    def _out(self, y: Tensor, K: int, B: int) -> Tensor:
        """``[K, B, ...]`` outputs as the next layer reads them: ``[K*B, ...]``, or ``[B*K, ...]`` sample-major."""
        if self.runtime.sample_major:
            return y.transpose(0, 1).reshape(B * K, *y.shape[2:])
        return y.reshape(K * B, *y.shape[2:])

    def _digitise(self, y: Tensor, rt: LayerRuntime, K: int, B: int) -> Tensor:
        """Output noise and ADC on the analog signals ``y`` ``[K, B, S*O, *spatial]``."""
        S, O = self.plan.encoding.n_signals, self.plan.out_features
        if rt.calibrating:
            sig = y.reshape(K, B, S, O, -1).transpose(0, 2).reshape(S, -1)
            ranges = [calibrate_range(sig[s], self.adc_percentile) for s in range(S)]
            self.signal_lo = torch.tensor([r[0] for r in ranges], dtype=y.dtype, device=y.device)
            self.signal_hi = torch.tensor([r[1] for r in ranges], dtype=y.dtype, device=y.device)
        nsp = y.dim() - 3
        lo = self._channel_view(self.signal_lo.repeat_interleave(O), nsp)
        hi = self._channel_view(self.signal_hi.repeat_interleave(O), nsp)
        if rt.output_noise > 0 and not rt.calibrating:
            src = rt.noise_sources
            noise = src.normal(y.shape[1:], y.dtype) if isinstance(src, CounterStream) else torch.stack(
                [torch.randn(y.shape[1:], generator=g, device=y.device, dtype=y.dtype) for g in src])
            y = y + noise * ((hi - lo) * rt.output_noise)
        if rt.adc_levels is not None:
            y = quantize(y, lo, hi, rt.adc_levels, ste=rt.ste)
        return y
