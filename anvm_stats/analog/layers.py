"""The analog layer: a drop-in module that runs K chip instances of one crossbar layer at once.

Activations of K instances travel through the (copied) network folded into the batch dim, ``[K*B, ...]``,
instance-major, so every digital module (ReLU, pooling, residual adds, flatten, LayerNorm, attention's softmax)
works unchanged. Before the first analog layer the activations are still shared ``[B, ...]``; that layer computes
all instances with one GEMM or convolution against the stacked weights. Linear layers use batched GEMMs;
convolutions use a grouped convolution with ``groups = K``.

A linear layer maps inputs ``[B, ..., in]`` token by token: the ``T = prod(...)`` tokens of a sample are ``T``
MVMs, folded into the batch (``B*T`` rows) for the product; per-MVM noise is drawn per sample with ``T`` times the
values (element order signal, output, token), so every token has its own draw whatever the batch size. A layer
that a forward calls several times on the same samples (a recurrent matrix, once per time step) names each call
with ``step``, part of the noise key.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
from torch import nn

from ..counter_rng import CounterStream
from ..hardware.mapping import LayerEncoding
from ..hardware.periphery import calibrate_range, quantize
from .kernels import CONV, GenericKernel, select_kernel
from .lazy import LazyAffine
from .tiles import TileLayout, tiled_forward

Tensor = torch.Tensor


@dataclass(frozen=True, eq=False)
class LayerPlan:
    """Static description of one analog layer.

    Attributes
    ----------
    name : str
        Qualified module name in the user's model.
    op : {"linear", "conv1d", "conv2d", "conv3d"}
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
    tiles : TileLayout or None
        The layer's crossbar tiles (``HardwareSpec.tile``); None: one array per layer.
    one_hot : bool
        The layer reads integer indices as one-hot input vectors (an analog ``nn.Embedding``: the array holds the
        transposed table, ``in_features`` the vocabulary); its inputs are exact word-line pulses (no DAC).
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
    tiles: TileLayout | None = None
    one_hot: bool = False

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
    sample_major: bool = False            # activations fold as [B*K, ...] (linear-only programs, kernels.onednn_linear)
    # mode "tiles" (anvm_stats.analog.tiles): weight [K, S, R, O, rows], the layer's tile layout, per-MVM noise
    layout: TileLayout | None = None
    read_var: Tensor | None = None        # [K, S, R, O, rows] read-noise variances of the signals' devices, or
    #                                       [S] when every device has the same variance
    mvm_noise: object = None              # a SampleNoise: per-MVM normals keyed by sample index
    first_sample: int = 0                 # index in the evaluation data of the batch's first sample
    layer: int = 0                        # the layer's index in the program (part of the noise key)
    parasitics: object = None             # HardwareSpec.parasitics (IR drop), routed through tiles.tile_mvm


def widen(lo: Tensor | None, hi: Tensor | None, new_lo: Tensor, new_hi: Tensor, step: int) -> tuple[Tensor, Tensor]:
    """Converter ranges calibrated on call ``step`` of a layer in one forward: the new ranges for the first call,
    else the envelope of the earlier calls' ranges and the new ones (a recurrent matrix read once per time step
    gets ranges covering every step)."""
    if step == 0 or lo is None or lo.shape != new_lo.shape:
        return new_lo, new_hi
    return torch.minimum(lo, new_lo), torch.maximum(hi, new_hi)


class AnalogModule(nn.Module):
    """Replacement for one Linear / Conv1d / Conv2d / Conv3d (or one crossbar of a composite module) in the copied
    network (see module docstring)."""

    def __init__(self, plan: LayerPlan, dac_percentile: float = 99.99, adc_percentile: float = 99.99,
                 kernel: GenericKernel | None = None):
        super().__init__()
        self.plan = plan
        self.kernel = kernel if kernel is not None else select_kernel(plan.encoding.g.device)
        self.dac_percentile = dac_percentile
        self.adc_percentile = adc_percentile
        self.dac_range: tuple[float, float] | None = None
        self.signal_lo: Tensor | None = None   # [S]
        self.signal_hi: Tensor | None = None
        self.runtime: LayerRuntime | None = None
        self.relu_after = False   # an nn.ReLU that only takes this layer's output, fused (prepare(fuse_relu=True))
        self.input_shared = False  # reads a per-sample input shared by all instances (mark_shared_inputs)
        self.tile_floats = 0       # partial sums per instance and sample of the last tiled forward
        self.seq_first = False     # a linear layer reading [L, B, ..., in] (inside a batch_first=False transformer)
        self.tokens = 1            # tokens per sample of the last forward (a linear layer on [B, ..., in]: > 1)

    def extra_repr(self) -> str:
        p = self.plan
        return f"{p.name}: {p.op} {p.in_features}->{p.out_features}, arrays={p.n_arrays}, bias={p.bias_mode}"

    # ------------------------------------------------------------------ helpers
    def matmul(self, x: Tensor, w: Tensor, bias: Tensor | None, shared: bool, K: int, B: int) -> Tensor:
        """Apply stacked weights ``w`` ``[K, O, in]`` (+ per-instance ``bias`` ``[K, O]``) to ``x`` (``[B, ...]``
        when ``shared``, else the folded ``[K*B, ...]``) with the program's kernel (:mod:`.kernels`).

        Returns ``[K, B, O, *spatial]`` (possibly a non-contiguous view)."""
        p, rt = self.plan, self.runtime
        if p.op == "linear" and self.tokens > 1:
            return self.kernel.token_linear(x, w, bias, shared=shared, K=K, B=B,
                                            instances=lambda t: self._instances(t, K, B),
                                            sample_major=rt.sample_major, mode=rt.mode)
        if p.op == "linear":
            return self.kernel.linear(x, w, bias, shared=shared, K=K, B=B, instances=lambda t: self._instances(t, K, B),
                                      sample_major=rt.sample_major, mode=rt.mode)
        return self.kernel.conv(p.op, x, w, bias, shared=shared, K=K, B=B, kernel=p.kernel, groups=p.conv["groups"],
                                stride=p.conv["stride"], padding=p.conv["padding"], dilation=p.conv["dilation"])

    def _input_sum(self, x: Tensor, shared: bool, K: int, B: int) -> Tensor:
        """Sum of each output's inputs, ``[K or 1, B, O or 1, *spatial]`` (for digital offset correction; ``1``
        output when every output reads the same inputs)."""
        p = self.plan
        if p.op == "linear":
            s = x.sum(dim=-1, keepdim=True)
            s = s.view(1, B, 1) if s.shape[0] == B else self._instances(s, K, B)
        else:
            groups = p.conv["groups"]
            ones = x.new_ones(groups, x.shape[1] // groups, *p.kernel)
            s = CONV[p.op](x, ones, None, stride=p.conv["stride"], padding=p.conv["padding"],
                            dilation=p.conv["dilation"], groups=groups)
            if groups > 1:                    # one sum per group; a single sum broadcasts over the outputs
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

    def widen_ranges(self, lo: Tensor, hi: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """The layer's ADC ranges after calibrating ``(lo, hi)`` on call ``step`` (:func:`widen`)."""
        return widen(self.signal_lo, self.signal_hi, lo, hi, step)

    def per_instance(self, t: Tensor) -> Tensor:
        """A per-sample tensor ``[B, ...]`` (e.g. an attention mask or an initial state) repeated for the K
        instances in the fold this layer's outputs have (``[K*B, ...]``, or ``[B*K, ...]`` sample-major); a tensor
        already per instance (or K = 1) as it is."""
        rt = self.runtime
        if rt is None or rt.K == 1 or t.shape[0] != rt.B:
            return t
        if rt.sample_major:
            return t.repeat_interleave(rt.K, dim=0)
        return t.repeat(rt.K, *([1] * (t.dim() - 1)))

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, step: int = 0) -> Tensor:
        """The layer for K chips: ``x`` ``[B, ...]`` (shared) or ``[K*B, ...]`` (``[B*K, ...]`` sample-major);
        ``step`` numbers the calls of this layer on the same samples in one forward (noise key)."""
        rt = self.runtime
        if rt is None:
            raise RuntimeError(f"analog layer {self.plan.name!r} called outside an AnalogProgram evaluation")
        if self.seq_first and x.dim() > 2:
            return self._batch_first(x.transpose(0, 1), step).transpose(0, 1)
        return self._batch_first(x, step)

    def _batch_first(self, x: Tensor, step: int) -> Tensor:
        rt = self.runtime
        K, B = rt.K, rt.B
        if x.shape[0] not in (B, K * B):
            raise RuntimeError(f"analog layer {self.plan.name!r}: batch dim {x.shape[0]} (input {list(x.shape)}) is "
                               f"neither B={B} nor K*B={K * B}: analog layers read batch-first inputs [B, ..., in], "
                               f"or the model mixes per-sample and per-instance tensors")
        shared = x.shape[0] == B and K > 1
        p = self.plan
        if p.one_hot:
            if x.is_floating_point() or x.is_complex():
                raise RuntimeError(f"analog embedding {p.name!r}: indices of dtype {x.dtype}; it reads integer token "
                                   f"ids")
            key = x
            x = torch.nn.functional.one_hot(x.long(), p.in_features).to(p.encoding.g.dtype)
        else:
            key = x
        if p.op == "linear" and x.dim() > 2:
            return self._tokens(x, key, shared, K, B, step)
        self.tokens = 1
        return self._forward(x, key, shared, K, B, 1, step)

    def _tokens(self, x: Tensor, key: Tensor, shared: bool, K: int, B: int, step: int) -> Tensor:
        """A linear layer on ``[N, *lead, in]``: the ``T = prod(lead)`` tokens of every sample as ``B*T`` rows."""
        lead, d = x.shape[1:-1], x.shape[-1]
        T = 1
        for n in lead:
            T *= n
        self.tokens = T
        sm = self.runtime.sample_major and K > 1
        if sm and not shared:   # [B, K, T, in] -> [B*T, K, in]: the sample-major fold over B*T "samples"
            x2 = x.reshape(B, K, T, d).transpose(1, 2).reshape(B * T * K, d)
        else:
            x2 = x.reshape(x.shape[0] * T, d)
        y = self._forward(x2, key, shared, K, B, T, step)
        O = y.shape[-1]
        if sm:
            return y.view(B, T, K, O).transpose(1, 2).reshape(B * K, *lead, O)
        return y.view(-1, *lead, O)

    def _forward(self, x: Tensor, x_in: Tensor, shared: bool, K: int, B: int, T: int, step: int) -> Tensor:
        """The layer on ``x`` with ``B*T`` rows per instance (``T`` tokens per sample; 1 for images and vectors);
        ``x_in`` is the tensor the layer was called with (names cached products)."""
        rt, p = self.runtime, self.plan
        Bt = B * T
        if rt.dac_levels is not None and not p.one_hot:
            if rt.calibrating:
                r = calibrate_range(x, self.dac_percentile)
                # a layer called several times per forward (time steps): the envelope of every call's range
                self.dac_range = r if step == 0 or self.dac_range is None else (
                    min(r[0], self.dac_range[0]), max(r[1], self.dac_range[1]))
            x = quantize(x, *self.dac_range, rt.dac_levels, ste=rt.ste)
        if rt.mode == "tiles":
            y = tiled_forward(self, x, shared, K, B, T, step)
            if p.digital_bias is not None:
                y = y + self._channel_view(p.digital_bias, y.dim() - 3)
            if self.relu_after:
                y = y.relu_() if not y.requires_grad else torch.relu(y)
            return self._out(y, K, Bt)
        lazy = rt.affine
        if lazy is not None and self.input_shared and len(lazy.coef) == 1:
            # names the input of cached products (before DAC quantisation, which makes a new tensor each call)
            key = (p.name, rt.batch, rt.dac_levels, step, x_in.data_ptr(), tuple(x_in.shape), x_in.stride())
            y = lazy.shared_input_output(key, lambda w, b, k: self.matmul(x, w, b, shared and k > 1, k, Bt),
                                         p.bias_scale)
        else:
            read = rt.mode == "weights" and rt.read_var is not None and rt.mvm_noise is not None
            if lazy is not None and not read and T == 1:
                y = self._affine_fused(x, lazy, shared, K, Bt)
                if y is not None:
                    return self._out(y, K, Bt)
            w, b = lazy.weights() if lazy is not None else (rt.weight, rt.bias)
            bias = None if b is None else b * p.bias_scale
            fuse = (self.kernel.fuses_bias_relu and p.op == "linear" and bias is not None and self.relu_after
                    and rt.mode != "signals" and not read and p.digital_bias is None and not torch.is_grad_enabled())
            y = self.matmul(x, w, None if fuse else bias, shared, K, Bt)
            if read:
                y = self.add_read_noise(y, x, rt, shared, K, B, T, step)
            if fuse:
                if y.dim() == 3 and y.is_contiguous():
                    return self._out(self.kernel.bias_relu(y, bias), K, Bt)
                y = y + bias.unsqueeze(1)
        nsp = y.dim() - 3
        enc = p.encoding
        if rt.mode == "signals":
            y = self._digitise(y, rt, K, B, x, shared, T, step)
            S, O = enc.n_signals, p.out_features
            y = y.reshape(K, Bt, S, O, *y.shape[3:])
            y = (y * self._channel_view(enc.gain, nsp)).sum(dim=2)
            if enc.offset is not None:
                xsum = self._input_sum(x, shared, K, Bt)
                if p.bias_mode == "column":
                    xsum = xsum + p.bias_scale
                y = y + xsum * self._channel_view(enc.offset, nsp)
        if p.digital_bias is not None:
            y = y + self._channel_view(p.digital_bias, nsp)
        if self.relu_after:
            y = y.relu_() if not y.requires_grad else torch.relu(y)
        return self._out(y, K, Bt)

    def _affine_fused(self, x: Tensor, lazy: LazyAffine, shared: bool, K: int, B: int) -> Tensor | None:
        """The layer's output ``[K, B, O]`` (bias and fused ReLU applied) from one fused call of the kernel
        (:meth:`GenericKernel.affine_linear`), or None where that does not apply (the caller programs the weights):
        linear layers on vectors read as weights, one program effect, no digital bias or sample-major fold."""
        p, rt = self.plan, self.runtime
        if (p.op != "linear" or rt.mode != "weights" or rt.sample_major or len(lazy.coef) != 1
                or p.digital_bias is not None):
            return None
        return self.kernel.affine_linear(x, lazy.w0, lazy.coef[0], lazy.zw[0], lazy.bias_values(p.bias_scale),
                                         shared=shared, K=K, B=B, relu=self.relu_after)

    def _out(self, y: Tensor, K: int, B: int) -> Tensor:
        """``[K, B, ...]`` outputs as the next layer reads them: ``[K*B, ...]``, or ``[B*K, ...]`` sample-major."""
        if self.runtime.sample_major:
            return y.transpose(0, 1).reshape(B * K, *y.shape[2:])
        return y.reshape(K * B, *y.shape[2:])

    def _read_variance(self, x: Tensor, rt: LayerRuntime, shared: bool, K: int, B: int) -> Tensor:
        """Per-MVM read-noise variance of every signal, ``[K or 1, B, S*O, *spatial]``: ``sum_j x_j^2 var_j`` over
        each output's inputs (and the bias row)."""
        p, rv = self.plan, rt.read_var
        S, O = p.encoding.n_signals, p.out_features
        if isinstance(rv, Tensor):            # one variance per signal: the inputs' sums of squares
            xs = self._input_sum(x * x, shared, K, B)
            if p.bias_mode == "column":
                xs = xs + p.bias_scale ** 2
            nsp = xs.dim() - 3
            if xs.shape[2] != 1 and S > 1:
                xs = xs.repeat(1, 1, S, *([1] * nsp))
            return xs * self._channel_view(rv.repeat_interleave(O), nsp)
        w, b = rv
        return self.matmul(x * x, w, None if b is None else b * p.bias_scale ** 2, shared, K, B)

    def add_read_noise(self, y: Tensor, x: Tensor, rt: LayerRuntime, shared: bool, K: int, B: int, T: int = 1,
                       step: int = 0) -> Tensor:
        """Decoded outputs ``y`` ``[K, B*T, O, *spatial]`` plus the read noise of every MVM, ``sum_s gain_s sd_s
        z_s`` with ``sd_s^2 = sum_j x_j^2 var_sj`` over signal ``s``'s devices (and the bias row) and ``z`` the
        per-MVM normals of signal, output and pixel keyed by sample index (the draws the signals path adds before
        its ADCs; equal to it up to round-off)."""
        p, rv = self.plan, rt.read_var
        S, O, nsp, Bt = p.encoding.n_signals, p.out_features, y.dim() - 3, B * T
        z = self._normals(rt, "read", (K, Bt, S * O, *y.shape[3:]), y.device, B, T, step)
        z = z.view(K, Bt, S, O, *y.shape[3:])
        gain = p.encoding.gain.to(y.dtype)                                                   # [S, O]
        if isinstance(rv, Tensor):            # one variance per signal: sd_s = sqrt(sum x^2) sqrt(var_s)
            xs = self._input_sum(x * x, shared, K, Bt)
            if p.bias_mode == "column":
                xs = xs + p.bias_scale ** 2
            c = self._channel_view(gain * rv.sqrt()[:, None], nsp)                            # [S, O, 1...]
            noise = z[:, :, 0].mul_(c[0]) if S == 1 else (z * c).sum(dim=2)
            return y.addcmul_(noise, xs.sqrt_())          # y: this layer's fresh product (no new pages to fault in)
        sd = self._read_variance(x, rt, shared, K, Bt).sqrt_()                                # [K|1, Bt, S*O, ...]
        sd = sd.view(sd.shape[0], Bt, S, O, *y.shape[3:]).mul_(self._channel_view(gain, nsp))
        return y + (z.mul_(sd).sum(dim=2) if S > 1 else z[:, :, 0].mul_(sd[:, :, 0]))

    def _normals(self, rt: LayerRuntime, kind: str, shape: tuple, device, B: int, T: int, step: int) -> Tensor:
        """Per-MVM standard normals of ``shape`` ``[K, B*T, S*O, *spatial]``, keyed by each sample's index
        (per sample: element order signal, output, pixel, token)."""
        n = 1
        for d in shape[2:]:
            n *= d
        z = rt.mvm_noise.normal(rt.layer, kind, rt.first_sample, B, n * T, device, step=step, scratch=True)
        if T == 1:
            return z.view(shape)
        return z.view(shape[0], B, n, T).transpose(2, 3).reshape(shape)

    def _digitise(self, y: Tensor, rt: LayerRuntime, K: int, B: int, x: Tensor | None = None,
                  shared: bool = False, T: int = 1, step: int = 0) -> Tensor:
        """Read noise per MVM (``rt.mvm_noise``), output noise and ADC on the analog signals ``y``
        ``[K, B*T, S*O, *spatial]`` (``x``: the layer's input, for the read noise's variance; ``T`` tokens per
        sample)."""
        S, O = self.plan.encoding.n_signals, self.plan.out_features
        Bt = B * T
        if rt.calibrating:
            sig = y.reshape(K, Bt, S, O, -1).transpose(0, 2).reshape(S, -1)
            ranges = [calibrate_range(sig[s], self.adc_percentile) for s in range(S)]
            lo_ = torch.tensor([r[0] for r in ranges], dtype=y.dtype, device=y.device)
            hi_ = torch.tensor([r[1] for r in ranges], dtype=y.dtype, device=y.device)
            self.signal_lo, self.signal_hi = self.widen_ranges(lo_, hi_, step)
        nsp = y.dim() - 3
        lo = hi = None                        # uncalibrated: read noise per MVM only (no ADC, no output noise)
        if self.signal_lo is not None:
            lo = self._channel_view(self.signal_lo.repeat_interleave(O), nsp)
            hi = self._channel_view(self.signal_hi.repeat_interleave(O), nsp)
        if rt.mvm_noise is not None and not rt.calibrating:
            # keyed by (seed, instance, layer, step, sample): element order (signal, output, pixel) as on one tile
            if rt.read_var is not None:
                z = self._normals(rt, "read", y.shape, y.device, B, T, step)
                y = torch.addcmul(y, self._read_variance(x, rt, shared, K, Bt).sqrt_(), z)
            if rt.output_noise > 0:
                z = self._normals(rt, "output", y.shape, y.device, B, T, step)
                y = torch.addcmul(y, z, (hi - lo) * rt.output_noise)
        elif rt.output_noise > 0 and not rt.calibrating:
            src = rt.noise_sources
            noise = src.normal(y.shape[1:], y.dtype) if isinstance(src, CounterStream) else torch.stack(
                [torch.randn(y.shape[1:], generator=g, device=y.device, dtype=y.dtype) for g in src])
            y = y + noise * ((hi - lo) * rt.output_noise)
        if rt.adc_levels is not None:
            y = quantize(y, lo, hi, rt.adc_levels, ste=rt.ste)
        return y
