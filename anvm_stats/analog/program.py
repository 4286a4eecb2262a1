"""prepare(model, spec) -> AnalogProgram: the network as a chip, ready to be instantiated K times."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..data_source import first_samples
from ..errors import ConfigError, UnsupportedLayerError
from ..hardware.spec import HardwareSpec
from .fold import find_fusable_relus, fold_batchnorm
from .chain import probe_chain, run_chain
from .kernels import KERNELS, GenericKernel, select_kernel
from .layers import AnalogModule, LayerPlan, LayerRuntime
from .tiles import (bias_first, encode_tiles, wired_blocks, expand_groups, groups, signal_blocks, single_tile,
                    variance_blocks)
from .attention import AnalogMultiheadAttention
from .recurrent import AnalogRecurrent
from .selection import (ANALOG_TYPES, COMPOSITE_TYPES, Crossbar, LayerFilter, check_finite, check_rest, crossbars,
                        select_layers, resolve_device)

Tensor = torch.Tensor
#: per-sample activation size (floats) from which conv networks run channels-last (AnalogProgram.input)
CHANNELS_LAST_MIN_FLOATS = 8192
#: device types on which conv networks may run channels-last (oneDNN's and cuDNN's fast layouts)
CHANNELS_LAST_DEVICES = frozenset({"cpu", "cuda"})

def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def augmented_weights(w: Tensor, b: Tensor | None, mode: str) -> tuple[Tensor, float, str]:
    """``W~ = [W, b/s]`` with ``s = range(b)/range(W)`` (half-ranges), or W alone."""
    if b is None or mode == "digital":
        return w, 1.0, "none" if b is None else "digital"
    half = lambda t: float(t.max() - t.min()) / 2  # noqa: E731
    rw, rb = half(w), half(b)
    if rb > 0 and rw > 0:
        s = rb / rw
    else:
        mw, mb = float(w.abs().max()), float(b.abs().max())
        s = mb / mw if mw > 0 and mb > 0 else 1.0
    return torch.cat([w, (b / s)[:, None]], dim=1), s, "column"


class InputFold:
    """Forward pre-hook of the copied network: when :attr:`active`, its per-sample tensor inputs ``[B, ...]`` are
    repeated for the K instances (in the fold of the analog layers' outputs) before the network runs.

    Needed by networks that combine their input (or a digital function of it, e.g. an embedding) with an analog
    layer's output, such as the residual ``x + attention(x)`` of a transformer layer: a shared ``[B, ...]``
    tensor cannot be added to a per-instance ``[K*B, ...]`` one. Set by :meth:`AnalogProgram.input`."""

    def __init__(self, first: AnalogModule):
        self.first = first
        self.active = False

    def __call__(self, module: nn.Module, args: tuple):
        if not self.active or self.first.runtime is None:
            return None
        return tuple(self.first.per_instance(a) if isinstance(a, Tensor) and a.dim() > 0 else a for a in args)


@dataclass(eq=False)
class AnalogProgram:
    """A network mapped to a chip: nominal conductances of every analog device and the copied network.

    Attributes
    ----------
    module : nn.Module
        Deep copy of the user's model (eval mode, BatchNorm folded) with analog layers replaced by
        :class:`AnalogModule`. The user's model is never touched.
    plans : tuple of LayerPlan
        One per analog layer, in forward order of registration.
    g0 : Tensor [P]
        Nominal normalised conductances of all P devices of the chip (all layers, flat).
    spec : HardwareSpec
        The spec the program was prepared with (mapping, bounds, calibration percentiles).
    """

    module: nn.Module
    plans: tuple
    g0: Tensor
    spec: HardwareSpec
    folded: tuple
    #: activations run channels-last (NHWC); chosen by :meth:`input` from the first 4-d input's size
    channels_last: bool = False
    _layout_for: tuple | None = field(default=None, repr=False)
    _modules: tuple | None = field(default=None, repr=False)
    _shared_for: tuple | None = field(default=None, repr=False)
    #: the network's input pre-hook (:class:`InputFold`) and the input shape it was probed for
    fold: InputFold | None = field(default=None, repr=False)
    _fold_for: tuple | None = field(default=None, repr=False)
    #: the forward is a plain chain of the analog layers (:func:`~.chain.probe_chain`), for inputs shaped as
    #: ``_chain_for``
    chain: bool = False
    _chain_for: tuple | None = field(default=None, repr=False)

    @torch.no_grad()
    def probe_fold(self, x: Tensor) -> None:
        """Decide once per input shape whether the network's inputs must be repeated per instance
        (:class:`InputFold`): one nominal forward of 3 instances on 2 samples; if the network cannot combine its
        shared input with per-instance activations (a size mismatch), inputs are repeated from now on."""
        shape = (tuple(x.shape[1:]), x.dtype)
        if self.fold is None or self._fold_for == shape or x.shape[0] == 0:
            return
        xs = x[:2] if x.shape[0] >= 2 else x[:1].expand(2, *x.shape[1:])
        self.fold.active = False
        self.load(self.g0[None].repeat(3, 1), B=2)
        try:
            try:
                self.module(xs)
            except RuntimeError:
                self.fold.active = True
                self.module(xs)        # fails again (with the model's own message) when the cause is another
        finally:
            self.unload()
        self._fold_for = shape

    def input(self, x: Tensor) -> Tensor:
        """``x`` ``[B, ...]`` in the memory layout the program runs in (and :meth:`probe_fold` of its shape).

        For 4-d inputs, a network with Conv2d layers whose largest activation holds at least
        :data:`CHANNELS_LAST_MIN_FLOATS` floats per sample runs channels-last on the devices in
        :data:`CHANNELS_LAST_DEVICES` (oneDNN's fast layout on CPU, cuDNN's tensor-core layout on GPUs; small
        activations run better in the default layout). The choice is made once per input shape; it never changes
        a value beyond round-off."""
        self.probe_fold(x)
        if self._chain_for != (tuple(x.shape[1:]), x.dtype):
            self.chain, self._chain_for = probe_chain(self, x), (tuple(x.shape[1:]), x.dtype)
        if x.dim() != 4:
            return x
        shape = tuple(x.shape[1:])
        if self._layout_for != shape:
            want = (self.device.type in CHANNELS_LAST_DEVICES and any(p.op == "conv2d" for p in self.plans)
                    and self.largest_activation(x[:1]) >= CHANNELS_LAST_MIN_FLOATS)
            self.module.to(memory_format=torch.channels_last if want else torch.contiguous_format)
            self.channels_last, self._layout_for = want, shape
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def run_chain(self, x: Tensor) -> Tensor | None:
        """The network's output on ``x`` from one fused call of the kernel when the forward is a plain chain of
        the analog layers (:attr:`chain`) and the loaded chips allow it (:func:`~.chain.run_chain`), else None."""
        if not self.chain or self._chain_for != (tuple(x.shape[1:]), x.dtype):
            return None
        return run_chain(self, x)

    @property
    def sample_major_ok(self) -> bool:
        """Whether forwards may fold activations sample-major (``[B*K, ...]``, bitwise the same results): every
        analog layer is linear and read per sample (not token by token: its last forward), the kernel folds
        sample-major (:class:`~.kernels.OneDNNKernel`), and no hook watches an analog layer (hooks, e.g.
        per-chip calibration, read layer outputs instance-major)."""
        if not self.kernel.sample_major or any(p.op != "linear" or p.tiles is not None for p in self.plans):
            return False
        if any(m.tokens > 1 for m in self.analog_modules()):
            return False
        return not any(m._forward_hooks or m._forward_pre_hooks for m in self.analog_modules())

    def instances(self, out: Tensor, K: int, B: int, sample_major: bool = False) -> Tensor:
        """``[K, B, ...]`` view of the network output from its instance-major (or sample-major) fold (strided for
        the latter: reduce it only after copying it into one fixed layout, so the order never depends on the fold)."""
        if sample_major:
            return out.view(B, K, *out.shape[1:]).transpose(0, 1)
        return out.view(K, B, *out.shape[1:])

    @torch.no_grad()
    def largest_activation(self, x: Tensor) -> int:
        """Floats per sample of the largest module output (or input) of one nominal forward of ``x[:1]``."""
        sizes = [0]
        hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.numel() // max(1, o.shape[0]))
                                         if isinstance(o, Tensor) and o.dim() > 0 else None)
                 for m in self.module.modules()]
        try:
            self.load(self.g0[None], B=1)
            self.module(x[:1])
        finally:
            self.unload()
            for h in hooks:
                h.remove()
        # tiled layers hold every tile's partial sums: R times a layer's output; attention holds its projections,
        # every head's scores and outputs at once (analog/attention.py)
        sizes += [getattr(m, "tile_floats", 0) for m in self.analog_modules()]
        sizes += [getattr(m, "work_floats", 0) for m in self.module.modules()]
        return max(sizes + [x[:1].numel()])

    @property
    def n_devices(self) -> int:
        return self.g0.numel()

    @property
    def device(self) -> torch.device:
        return self.g0.device

    @property
    def layer_names(self) -> list[str]:
        return [p.name for p in self.plans]

    def analog_modules(self) -> list[AnalogModule]:
        """The analog layers of :attr:`module`, in plan order (looked up once per module object)."""
        if self._modules is None or self._modules[0] is not self.module:
            self._modules = (self.module, [self.module.get_submodule(p.name) for p in self.plans])
        return self._modules[1]

    @property
    def kernel(self) -> GenericKernel:
        """The back end every analog layer runs (:mod:`anvm_stats.analog.kernels`)."""
        return self.analog_modules()[0].kernel

    def use_kernel(self, kernel: GenericKernel) -> None:
        """Run every analog layer with ``kernel`` from now on (results agree to round-off)."""
        if not isinstance(kernel, GenericKernel):
            raise ConfigError("kernel", kernel, f"a kernel of anvm_stats.analog.kernels: one of {sorted(KERNELS)}")
        for m in self.analog_modules():
            m.kernel = kernel

    def to(self, device: torch.device | str) -> "AnalogProgram":
        """A copy on ``device`` (running that device's kernel, :func:`~.kernels.select_kernel`)."""
        new = copy.deepcopy(self)
        new.module.to(device)
        new.g0 = new.g0.to(device)
        for m in new.analog_modules():
            m.plan = _plan_to(m.plan, device)
            if m.signal_lo is not None:
                m.signal_lo, m.signal_hi = m.signal_lo.to(device), m.signal_hi.to(device)
        new.plans = tuple(m.plan for m in new.analog_modules())
        new.use_kernel(select_kernel(new.device))
        return new

    def weights(self, g: Tensor) -> dict[str, Tensor]:
        """Effective augmented weights ``[K, out, in(+1)]`` per layer from conductances ``g`` ``[K, P]`` (ideal
        periphery; the bias column holds ``b/s``)."""
        out = {}
        for p in self.plans:
            if p.tiles is not None:
                enc, bv = p.encoding, p.bias_view(g)
                w = p.tiles.decode(bias_first(enc.signals(p.weight_view(g)), None if bv is None else enc.signals(bv)))
                out[p.name] = torch.cat([w[..., 1:], w[..., :1]], dim=-1) if p.tiles.bias_row else w
                continue
            w = p.encoding.decode(p.weight_view(g))
            bv = p.bias_view(g)
            out[p.name] = w if bv is None else torch.cat([w, p.encoding.decode(bv)], dim=-1)
        return out

    @property
    def n_tiles(self) -> dict[str, int]:
        """Crossbar tiles of every analog layer (empty for an untiled program, ``HardwareSpec.tile`` None)."""
        return {p.name: p.tiles.n_tiles for p in self.plans if p.tiles is not None}

    def load(self, g: Tensor, *, B: int, dac_levels=None, adc_levels=None, output_noise: float = 0.0,
             noise_sources=None, ste: bool = False, calibrating: bool = False, sample_major: bool = False,
             mvm_noise=None, mvm_effects: tuple = (), parasitics=None) -> None:
        """Set every analog layer's runtime for a forward of ``K = g.shape[0]`` instances on batches of ``B``.

        ``sample_major``: the network's output comes folded ``[B*K, ...]`` (see :attr:`sample_major_ok`).
        ``mvm_noise`` (a :class:`~anvm_stats.sample_rng.SampleNoise`): draw output noise, and the read noise of
        ``mvm_effects`` (read effects with ``read_sd``), per MVM keyed by sample index, in the output domain;
        tiled programs, and ``parasitics``, run every layer on tiles (:mod:`anvm_stats.analog.tiles`)."""
        K = g.shape[0]
        if parasitics is not None or any(p.tiles is not None for p in self.plans):
            self._load_tiles(g, B=B, dac_levels=dac_levels, adc_levels=adc_levels, output_noise=output_noise,
                             ste=ste, calibrating=calibrating, mvm_noise=mvm_noise, mvm_effects=mvm_effects,
                             parasitics=parasitics, noise_sources=noise_sources)
            return
        # read noise per MVM with nothing non-linear after it (no ADC, no output noise) is added to the decoded
        # outputs (weights mode, AnalogModule.add_read_noise); anything digitised per signal runs on the signals
        signals = adc_levels is not None or output_noise > 0 or calibrating
        mats = []
        for p in self.plans:
            enc = p.encoding
            wv, bv = p.weight_view(g), p.bias_view(g)
            if signals:
                mats.append((enc.signals(wv).reshape(K, -1, p.in_features),
                             None if bv is None else enc.signals(bv).reshape(K, -1)))
            else:
                mats.append((enc.decode(wv), None if bv is None else enc.decode(bv)[..., 0]))
        self._set_runtime(mats, B=B, mode="signals" if signals else "weights", dac_levels=dac_levels,
                          adc_levels=adc_levels, output_noise=output_noise, noise_sources=noise_sources, ste=ste,
                          calibrating=calibrating, sample_major=sample_major)
        if mvm_noise is None:
            return
        # per-MVM noise on untiled layers: the signal matrices' read-noise variances, keyed draws per layer
        sds, const, var = self._read_variance(g, mvm_effects)
        for i, (p, m) in enumerate(zip(self.plans, self.analog_modules())):
            rt = m.runtime
            rt.mvm_noise, rt.layer = mvm_noise, i
            if not sds:
                continue
            c2 = p.encoding.combine.to(g.dtype) ** 2                                           # [S, A]
            if const:
                rt.read_var = c2.sum(1) * var                                                  # [S]
                continue
            vw = torch.einsum("sa,kaoi->ksoi", c2, p.weight_view(var)).reshape(K, -1, p.in_features)
            bv = p.bias_view(var)
            rt.read_var = (vw, None if bv is None else torch.einsum("sa,kaoi->ksoi", c2, bv).reshape(K, -1))

    def _read_variance(self, g: Tensor, mvm_effects: tuple) -> tuple:
        """``(sds, const, var)``: each effect's ``read_sd`` at ``g``; whether every device has the same variance;
        the summed variance (a float when constant, else ``[K, P]``)."""
        sds = [eff.read_sd(g, self.spec.bounds) for eff in mvm_effects]
        const = all(not isinstance(sd, Tensor) for sd in sds)
        var = sum(float(sd) ** 2 for sd in sds) if const else sum(
            sd * sd if isinstance(sd, Tensor) else torch.full_like(g, float(sd) ** 2) for sd in sds)
        return sds, const, var

    def _load_tiles(self, g: Tensor, *, B: int, mvm_effects: tuple, parasitics, **kw) -> None:
        # one variance for every device (e.g. ReadNoise relative to the range): per-signal coefficients suffice
        sds, const, var = self._read_variance(g, mvm_effects)
        for i, (p, m) in enumerate(zip(self.plans, self.analog_modules())):
            layout = p.tiles if p.tiles is not None else single_tile(p)
            wv, bv = expand_groups(p, p.weight_view(g)), p.bias_view(g)
            if parasitics is not None:   # per device array, each crossbar solved once per loaded chip
                w = wired_blocks(layout.blocks(bias_first(wv, bv)), parasitics, layout.tile.cols)
            else:
                w = signal_blocks(p, layout, wv, bv)
            if not sds:
                rv = None
            elif const and groups(p) == 1:
                rv = (p.encoding.combine.to(g.dtype) ** 2).sum(1) * var                      # [S]
            else:
                vw = p.weight_view(torch.full_like(g[:1], var) if const else var)
                vb = p.bias_view(torch.full_like(g[:1], var) if const else var)
                rv = variance_blocks(p, layout, expand_groups(p, vw), vb)
            _set(m, LayerRuntime(K=g.shape[0], B=B, mode="tiles", weight=w, bias=None, layout=layout, read_var=rv,
                                 layer=i, parasitics=parasitics, **kw))

    def load_weights(self, weights, *, B: int, dac_levels=None, ste: bool = False, sample_major: bool = False,
                     ) -> None:
        """Like :meth:`load` with ideal output periphery, from effective weights already decoded: one
        ``(w [K, out, in], b [K, out] or None)`` per layer (:mod:`anvm_stats.analog.affine`)."""
        self._set_runtime(weights, B=B, mode="weights", dac_levels=dac_levels, adc_levels=None, output_noise=0.0,
                          noise_sources=None, ste=ste, calibrating=False, sample_major=sample_major)

    def load_affine(self, lazies, *, B: int, dac_levels=None, sample_major: bool = False) -> None:
        """Like :meth:`load_weights`, from one :class:`~anvm_stats.analog.lazy.LazyAffine` per layer (weights
        programmed on first use; layers that read a shared input may skip programming, see
        :meth:`mark_shared_inputs`)."""
        for m, lazy in zip(self.analog_modules(), lazies):
            _set(m, LayerRuntime(K=lazy.K, B=B, mode="weights", weight=None, bias=None, affine=lazy,
                                 dac_levels=dac_levels, sample_major=sample_major))

    @torch.no_grad()
    def mark_shared_inputs(self, x: Tensor) -> None:
        """Set ``input_shared`` on every analog layer whose input is per sample (shared by all instances: the
        network input, or a digital function of it) in every call, from one nominal forward of two instances on
        ``x[:1]`` (once per input shape), on CPU. Those layers compute chips affine in their draws without programming
        weights (:mod:`anvm_stats.analog.lazy`); the choice depends only on the network and the device, never on the
        chunking."""
        if self.device.type != "cpu":
            # the shortcut adds a pass over the first layer's output and saves its GEMM only across grid points;
            # it is used on CPU only, GPUs keep programming the weights (same results up to round-off)
            for m in self.analog_modules():
                m.input_shared = False
            return
        shape = tuple(x.shape[1:])
        if self._shared_for == (shape, self.module):
            return
        calls: dict = {}
        modules = self.analog_modules()
        hooks = [m.register_forward_pre_hook(lambda m, args: calls.setdefault(m, []).append(args[0].shape[0] == 1))
                 for m in modules]
        try:
            self.load(self.g0[None].repeat(2, 1), B=1)
            self.module(x[:1])
        finally:
            self.unload()
            for h in hooks:
                h.remove()
        for m in modules:
            m.input_shared = bool(calls.get(m)) and all(calls[m])
        self._shared_for = (shape, self.module)

    def _set_runtime(self, mats, *, B: int, mode: str, **kw) -> None:
        for m, (w, b) in zip(self.analog_modules(), mats):
            _set(m, LayerRuntime(K=w.shape[0], B=B, mode=mode, weight=w, bias=b, **kw))

    def set_batch(self, B: int, batch: int, first_sample: int = 0) -> None:
        """Tell the loaded layers the next forward reads evaluation batch number ``batch`` of ``B`` samples, the
        first of them sample ``first_sample`` of the data (names the cached products of shared inputs,
        :mod:`anvm_stats.analog.lazy`; keys per-MVM noise, :mod:`anvm_stats.analog.tiles`)."""
        for m in self.analog_modules():
            m.runtime.B, m.runtime.batch, m.runtime.first_sample = B, batch, first_sample

    def unload(self) -> None:
        for m in self.analog_modules():
            _set(m, None)


def _set(module: AnalogModule, runtime: LayerRuntime | None) -> None:
    """``module.runtime = runtime`` without ``nn.Module.__setattr__``'s checks (a plain attribute; set thousands of
    times per Monte Carlo run)."""
    object.__setattr__(module, "runtime", runtime)


def _plan_to(plan: LayerPlan, device) -> LayerPlan:
    enc = plan.encoding
    enc = type(enc)(g=enc.g.to(device), combine=enc.combine.to(device), gain=enc.gain.to(device),
                    offset=None if enc.offset is None else enc.offset.to(device))
    db = None if plan.digital_bias is None else plan.digital_bias.to(device)
    tiles = None if plan.tiles is None else plan.tiles.to(device)
    return replace(plan, encoding=enc, digital_bias=db, tiles=tiles)


@torch.no_grad()
def _plan_layer(bar: Crossbar, spec: HardwareSpec, offset: int) -> tuple[LayerPlan, list[Tensor]]:
    """The plan of one crossbar and its nominal conductances (weights, then the bias column if any), placed
    at ``offset`` of the program's conductance vector ``g0``."""
    name, op = bar.name, bar.op
    w = bar.weight.reshape(bar.weight.shape[0], -1)
    b = bar.bias
    w_aug, s_b, bias_mode = augmented_weights(w, b, spec.bias)
    O, n_in = w.shape[0], w.shape[1]
    if spec.tile is None:
        enc, tiles = spec.mapping.encode(w_aug, spec.bounds), None
    else:
        if op != "linear" and bar.conv["groups"] != 1:
            raise UnsupportedLayerError(f"layer {name!r}: tiles need groups=1 (got groups={bar.conv['groups']})")
        enc, tiles = encode_tiles(spec.mapping, w_aug, n_in, bias_mode == "column", spec.tile, spec.bounds)
    chunks = [enc.g[:, :, :n_in].reshape(-1)]
    w_slice = slice(offset, offset + chunks[0].numel())
    b_slice = None
    if bias_mode == "column":
        chunks.append(enc.g[:, :, n_in:].reshape(-1))
        b_slice = slice(w_slice.stop, w_slice.stop + chunks[1].numel())
    plan = LayerPlan(name=name, op=op, out_features=O, in_features=n_in,
                     kernel=tuple(bar.weight.shape[2:]), conv=dict(bar.conv), bias_mode=bias_mode, bias_scale=s_b,
                     digital_bias=b if bias_mode == "digital" else None, encoding=enc,
                     w_slice=w_slice, b_slice=b_slice, tiles=tiles, one_hot=bar.one_hot)
    return plan, chunks


def _replacement(source: nn.Module, analog: list[AnalogModule]) -> nn.Module:
    """The module that takes ``source``'s place in the copied network: its analog layer, or the composite module
    (:mod:`.attention`, :mod:`.recurrent`) holding its crossbars."""
    if type(source) is nn.MultiheadAttention:
        return AnalogMultiheadAttention(source, analog)
    if type(source) in COMPOSITE_TYPES:
        return AnalogRecurrent(source, analog)
    return analog[0]


def _module_path_fixes(net: nn.Module, names: list[str], fuse_relu: bool) -> tuple[set[str], set[str]]:
    """Make torch's transformer modules take their module path (not the fused kernels that read the float
    weights): no nested-tensor conversion in ``nn.TransformerEncoder``. Returns the linear layers that read
    sequence-first activations (inside a ``batch_first=False`` transformer layer) and, with ``fuse_relu``, the
    analog ``linear1`` layers whose layer's ReLU activation they apply in place (the activation becomes
    ``nn.Identity``)."""
    seq_first, relu = set(), set()
    for path, m in net.named_modules():
        if isinstance(m, nn.TransformerEncoder):
            m.use_nested_tensor = False
        if not isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
            continue
        prefix = f"{path}." if path else ""
        if not m.self_attn.batch_first:
            seq_first |= {f"{prefix}linear1", f"{prefix}linear2"} & set(names)
        if fuse_relu and f"{prefix}linear1" in names and m.activation is F.relu:
            m.activation = nn.Identity()
            relu.add(f"{prefix}linear1")
    return seq_first, relu


def prepare(model: nn.Module, spec: HardwareSpec, *, calibration_data=None, layers: LayerFilter = None,
            digital: Iterable[str] = (), device: torch.device | str | None = None,
            n_calibration: int = 512, fuse_relu: bool = False, kernel: GenericKernel | None = None) -> AnalogProgram:
    """Map ``model`` onto the chip described by ``spec``.

    Parameters
    ----------
    model : nn.Module
        A trained network; it is deep-copied and never modified.
    spec : HardwareSpec
    calibration_data : (x, y) tensors, x tensor, Data, or iterable of batches, optional
        Data used to set DAC/ADC ranges (required when the spec has converters or output noise); at most
        ``n_calibration`` samples are used.
    layers : list of module names or callable(name, module) -> bool, optional
        Which modules become analog (default: every Linear, Conv1d/2d/3d, MultiheadAttention, LSTM, GRU and RNN;
        name an ``nn.Embedding`` here to make its table analog, :mod:`.selection`).
    digital : iterable of str
        Names of other parameterised modules allowed to run digitally beside the analog layers.
    device : torch device, optional
        Where the program lives (default: the model's parameters' device).
    fuse_relu : bool
        Run an ``nn.ReLU`` that only ever takes one analog layer's output (and the ReLU activation of a
        transformer layer's ``linear1``) in place inside that layer (saves a memory pass; results are
        bit-identical). Off by default: hooks on an analog layer's output (per-chip
        calibration, drift compensation) then see post-ReLU values.
    kernel : GenericKernel, optional
        The back end of the analog layers (:mod:`anvm_stats.analog.kernels`); default
        :func:`~anvm_stats.analog.kernels.select_kernel` of ``device``.

    Raises
    ------
    InvalidWeightsError, UnsupportedLayerError, ConfigError
    """
    if not isinstance(model, nn.Module):
        raise ConfigError("model", type(model).__name__, "a torch.nn.Module")
    if not isinstance(spec, HardwareSpec):
        raise ConfigError("spec", type(spec).__name__, "an anvm_stats.HardwareSpec")
    check_finite(model)
    net = copy.deepcopy(model).eval().float()
    if device is None:
        first = next(net.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = resolve_device(device)
    if kernel is None:
        kernel = select_kernel(device)
    elif not isinstance(kernel, GenericKernel):
        raise ConfigError("kernel", kernel, f"a kernel of anvm_stats.analog.kernels: one of {sorted(KERNELS)}")
    net.to(device)
    folded = tuple(fold_batchnorm(net)) if spec.fold_batchnorm else ()
    names = select_layers(net, layers)
    if not names:
        raise ConfigError("layers", layers, "a selection holding at least one analog-capable module (Linear, "
                                            "Conv1d/2d/3d, MultiheadAttention, LSTM, GRU, RNN, Embedding)")
    check_rest(net, set(names), digital)
    fused = find_fusable_relus(net, set(names)) if fuse_relu else {}
    for relu in fused.values():
        _set_submodule(net, relu, nn.Identity())
    seq_first, relu_in_layer = _module_path_fixes(net, names, fuse_relu)
    per = spec.periphery
    plans, chunks, offset = [], [], 0
    for name in names:
        source = net.get_submodule(name)
        analog = []
        for bar in crossbars(name, source):
            plan, layer_chunks = _plan_layer(bar, spec, offset)
            offset += sum(c.numel() for c in layer_chunks)
            chunks += layer_chunks
            plans.append(plan)
            analog.append(AnalogModule(plan, dac_percentile=per.dac.percentile if per.dac else 99.99,
                                       adc_percentile=per.adc.percentile if per.adc else 99.99, kernel=kernel))
        analog[0].relu_after = name in fused or name in relu_in_layer
        analog[0].seq_first = name in seq_first
        _set_submodule(net, name, _replacement(source, analog))
    fold = InputFold(net.get_submodule(plans[0].name))
    net.register_forward_pre_hook(fold)
    program = AnalogProgram(module=net, plans=tuple(plans), g0=torch.cat(chunks), spec=spec, folded=folded,
                            fold=fold)
    if per.needs_calibration:
        _calibrate(program, calibration_data, n_calibration)
    return program


def _calibrate(program: AnalogProgram, calibration, n_max: int) -> None:

    if calibration is None:
        raise ConfigError("calibration_data", None, "calibration data ((x, y) tensors, x, or batches): the spec's "
                                               "DAC/ADC/output-noise ranges come from a percentile of calibration values")
    x = first_samples(calibration, n_max).to(program.device)
    per = program.spec.periphery
    program.load(program.g0[None], B=x.shape[0], dac_levels=per.dac.n_levels if per.dac else None,
                 adc_levels=per.adc.n_levels if per.adc else None, calibrating=True)
    try:
        program.module(x)
    finally:
        program.unload()
