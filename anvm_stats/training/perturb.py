"""Weight-domain perturbations ``dW ~ q`` of a training model's CURRENT weights, and a forward that uses them.

For every analog layer (Linear / Conv1d / Conv2d, or a user selection) the perturbation is drawn from exactly the
hardware model the Monte Carlo engine uses (:func:`anvm_stats.analog.prepare` + :class:`anvm_stats.sampler.ChipSampler`):

1. ``W~ = [W, b/s]`` (:func:`anvm_stats.analog.program.augmented_weights`, ``spec.bias`` decides column / digital bias);
2. ``enc = spec.mapping.encode(W~, spec.bounds)``: nominal conductances ``g0`` of all devices, flattened in the
   engine's device order (per layer: weight devices, then bias-column devices);
3. base draws of every program-phase effect from one generator per draw ``l`` (stream ``Stream.TRAIN`` keyed by
   ``(seed, step, l)``), applied to ``g0`` in the spec's order;
4. ``dW~ = decode(g) - W~``, split back into a weight part (reshaped to the parameter) and a bias part (``s`` times
   the bias column).

When every device sits at its nominal conductance (a noise-free q) and the mapping reproduces ``W~`` up to float
round-off (below ``ROUNDOFF_ULPS`` ulps of ``max|W~|``), the perturbation is exactly zero (``is_zero``) and HA-SGD
reduces to plain SGD bit for bit. A mapping with a reconstruction error of its own (bit slicing) keeps it in
``dW``: training then sees the weights the chip really holds.

BatchNorm (``perturb_batchnorm=True``, the default): for a layer directly followed by an affine BatchNorm with
running statistics, the draw is made on the FOLDED layer the chip holds, ``W' = k W``, ``b' = k (b - mean) +
beta`` with ``k = gamma / sqrt(running_var + eps)``, from the same mapping and effects: ``deltas[layer.weight]``
is the folded ``dW'`` and ``deltas[bn.bias]`` the folded ``db'``. The forward (:mod:`.grouped`, :mod:`.local`)
runs the layer and its BatchNorm clean and adds ``dW' x + db'`` after the BatchNorm, exactly the noise the folded
chip adds at inference (``k W x + b' + dW' x + db'``): per-channel variance and bias noise match the engine's
(tested against :func:`anvm_stats.analog.moments.weight_perturbation_moments`), and the batch statistics of
train mode neither rescale nor absorb it. With ``perturb_batchnorm=False`` the layer's own unfolded ``[W, b/s]``
is perturbed inside the BatchNorm (per-channel noise off by the factor ``k`` of each channel, no bias noise
where the layer has no bias): kept for comparison, not a model of the chip. Cost: the folded noise runs its own
(grouped) product beside the clean one, one more convolution per BatchNorm layer and step.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..analog.fold import find_foldable_pairs
from ..analog.program import LayerFilter, augmented_weights
from ..analog.selection import select_layers
from ..errors import ConfigError, check_number
from ..hardware.spec import HardwareSpec
from ..rng import SeedLike, Stream, instance_generators, root_sequence
from .gaussian_form import gaussian_effects, layer_noise, mapping_error

Tensor = torch.Tensor

#: spawn-key prefixes of the training streams below a run's root SeedSequence
DATA_KEY, PERTURB_KEY, EVAL_KEY, TORCH_KEY = 0x0DA7A, 0x9E27, 0xE7A1, 0x7012C
#: mapping reconstruction errors below this many float32 ulps of max|W~| are round-off and set to 0
ROUNDOFF_ULPS = 64


@dataclass(frozen=True)
class PerturbTarget:
    """One analog layer as HA-SGD perturbs it.

    Attributes
    ----------
    name : str
        Qualified module name of the Linear / Conv, or of a composite layer (``nn.MultiheadAttention`` with packed
        projections, ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``).
    bn : str or None
        Name of the BatchNorm folded into the draw (``perturb_batchnorm=True``), else None.
    arrays : tuple of (str, str or None)
        A composite layer's arrays as the engine maps them: ``(weight, bias)`` parameter names relative to the
        module (the packed ``in_proj_weight`` with ``in_proj_bias``, ``out_proj.weight`` with its bias; per
        recurrent layer and direction ``weight_ih`` with ``bias_ih`` and ``weight_hh`` with ``bias_hh``). Empty
        for a Linear / Conv (its ``weight`` and ``bias``).
    """

    name: str
    bn: str | None = None
    arrays: tuple = ()

    def keys(self, model: nn.Module) -> list[tuple[str, str | None, str | None]]:
        """``(weight key, bias key, delta key of the bias)`` of every array, keys qualified by module name (the
        bias noise of a folded BatchNorm is carried by ``<bn>.bias``)."""
        if not self.arrays:
            m = model.get_submodule(self.name)
            bias = None if m.bias is None else f"{self.name}.bias"
            return [(f"{self.name}.weight", bias, f"{self.bn}.bias" if self.bn is not None else bias)]
        return [(f"{self.name}.{w}", None if b is None else f"{self.name}.{b}",
                 None if b is None else f"{self.name}.{b}") for w, b in self.arrays]


def composite_arrays(m: nn.Module, name: str) -> tuple:
    """:attr:`PerturbTarget.arrays` of a composite analog layer ``m`` (named ``name``).

    Raises
    ------
    ConfigError
        For a layer HA-SGD cannot perturb: attention with separate q/k/v projections (``kdim`` / ``vdim`` other
        than ``embed_dim``), a recurrent layer with ``proj_size``, an embedding."""
    if isinstance(m, nn.MultiheadAttention):
        if not m._qkv_same_embed_dim:
            raise ConfigError("layers", name, "attention with packed q/k/v projections for HA-SGD (kdim = vdim = "
                                              "embed_dim); keep this layer out of training's `layers`")
        return (("in_proj_weight", "in_proj_bias" if m.in_proj_bias is not None else None),
                ("out_proj.weight", "out_proj.bias" if m.out_proj.bias is not None else None))
    if isinstance(m, nn.RNNBase):
        if getattr(m, "proj_size", 0):
            raise ConfigError("layers", name, "a recurrent layer without proj_size for HA-SGD")
        out = []
        for k in range(m.num_layers):
            for sfx in ("", "_reverse")[:2 if m.bidirectional else 1]:
                for kind in ("ih", "hh"):
                    out.append((f"weight_{kind}_l{k}{sfx}", f"bias_{kind}_l{k}{sfx}" if m.bias else None))
        return tuple(out)
    raise ConfigError("layers", name, f"a Linear, Conv, MultiheadAttention or LSTM/GRU/RNN layer for HA-SGD "
                                      f"(got {type(m).__name__}); keep it out of training's `layers`")


@dataclass(frozen=True, eq=False)
class Perturbation:
    """``L`` perturbations of a model's parameters.

    Attributes
    ----------
    deltas : dict of str -> Tensor [L, *param.shape]
        Additive perturbation per perturbed parameter (qualified parameter name), detached.
    samples : int
        ``L``.
    is_zero : bool
        True when every delta is exactly zero (noise-free ``q``).
    """

    deltas: dict
    samples: int
    is_zero: bool

    def select(self, index: slice) -> "Perturbation":
        """The draws ``index`` (a slice along ``L``)."""
        deltas = {k: v[index] for k, v in self.deltas.items()}
        n = next(iter(deltas.values())).shape[0] if deltas else len(range(self.samples)[index])
        return Perturbation(deltas=deltas, samples=n, is_zero=self.is_zero)


def perturb_targets(model: nn.Module, *, layers: LayerFilter = None, perturb_batchnorm: bool = True,
                    ) -> tuple[PerturbTarget, ...]:
    """The analog layers of ``model`` (default: those :func:`anvm_stats.analog.prepare` makes analog: Linear, Conv,
    and the composite attention and recurrent layers, whose arrays are perturbed as the engine maps them).

    With ``perturb_batchnorm`` each layer directly followed by an affine BatchNorm with running statistics (found by
    torch.fx tracing, as in BN folding) is paired with it.
    """
    names = select_layers(model, layers)
    if not names:
        raise ConfigError("layers", layers, "a selection holding at least one Linear/Conv1d/Conv2d module")
    pairs = dict(find_foldable_pairs(model)) if perturb_batchnorm else {}
    out = []
    for n in names:
        m = model.get_submodule(n)
        if not isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            out.append(PerturbTarget(name=n, arrays=composite_arrays(m, n)))
            continue
        bn_name = pairs.get(n)
        if bn_name is not None:
            bn = model.get_submodule(bn_name)
            ok = (bn.affine and bn.track_running_stats and bn.running_var is not None
                  and bn.num_features == model.get_submodule(n).weight.shape[0])
            bn_name = bn_name if ok else None
        out.append(PerturbTarget(name=n, bn=bn_name))
    return tuple(out)


def step_root(seed: SeedLike, key: int, *index: int) -> np.random.SeedSequence:
    """SeedSequence of the training stream ``key`` at ``index`` (e.g. ``(PERTURB_KEY, step)``): a pure function of
    ``(seed, key, index)``, so a resumed run draws exactly what the uninterrupted run drew."""
    root = root_sequence(seed)
    return np.random.SeedSequence(root.entropy, spawn_key=tuple(root.spawn_key) + (int(key),) + tuple(map(int, index)))


def step_generators(seed: SeedLike, step: int, samples: int, device="cpu") -> list[torch.Generator]:
    """One torch generator per draw ``l < samples`` of optimiser step ``step`` (stream ``Stream.TRAIN``)."""
    return instance_generators(step_root(seed, PERTURB_KEY, step), range(samples), Stream.TRAIN, device)


def _base_draws(effects: Sequence, n: int, gens: list, device, dtype) -> list[dict]:
    """Base draws ``[L, n]`` of every effect, draw ``l`` from ``gens[l]`` only (threads over ``l`` on CPU; the
    result never depends on the number of threads)."""
    L = len(gens)
    bufs = [{} for _ in effects]

    def fill(rows) -> None:
        for r in rows:
            for j, e in enumerate(effects):
                for k, t in e.draw(n, gens[r], device=device, dtype=dtype).items():
                    if k not in bufs[j]:
                        raise RuntimeError("first row must be drawn first")
                    bufs[j][k][r].copy_(t)

    for j, e in enumerate(effects):
        for k, t in e.draw(n, gens[0], device=device, dtype=dtype).items():
            bufs[j][k] = torch.empty((L, *t.shape), dtype=t.dtype, device=t.device)
            bufs[j][k][0].copy_(t)
    workers = min(torch.get_num_threads(), L - 1) if torch.device(device).type == "cpu" else 1
    if workers <= 1 or not any(bufs):
        fill(range(1, L))
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(fill, [range(1 + w, L, workers) for w in range(workers)]))
    return bufs


def folded_weights(model: nn.Module, t: PerturbTarget) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The layer of ``t`` as the chip holds it (BatchNorm folded when ``t.bn`` is set).

    Returns
    -------
    (w, b, k)
        ``w`` ``[out, in]`` (the weight flattened per output), ``b`` ``[out]`` or None, ``k`` ``[out]`` the
        BatchNorm scale ``gamma / sqrt(running_var + eps)`` (None without a BatchNorm).
    """
    m = model.get_submodule(t.name)
    w = m.weight.detach().reshape(m.weight.shape[0], -1)
    b = None if m.bias is None else m.bias.detach()
    if t.bn is None:
        return w, b, None
    bn = model.get_submodule(t.bn)
    k = bn.running_var.add(bn.eps).rsqrt() * bn.weight.detach()
    shift = bn.bias.detach() - bn.running_mean * k
    return w * k[:, None], shift if b is None else b * k + shift, k


def _array_weights(model: nn.Module, t: PerturbTarget, params: dict) -> list[tuple[Tensor, Tensor | None]]:
    """``(w [out, in], b [out] or None)`` of every array of ``t`` as the chip holds it (BatchNorm folded)."""
    if not t.arrays:
        w, b, _ = folded_weights(model, t)
        return [(w, b)]
    return [(params[wk].detach().reshape(params[wk].shape[0], -1), None if bk is None else params[bk].detach())
            for wk, bk, _ in t.keys(model)]


@torch.no_grad()
def draw_perturbations(model: nn.Module, spec: HardwareSpec, *, samples: int, seed: SeedLike, step: int,
                       targets: Sequence[PerturbTarget] | None = None, layers: LayerFilter = None,
                       perturb_batchnorm: bool = True, generators: list | None = None,
                       weight_domain: bool = True) -> Perturbation:
    """Draw ``L = samples`` weight-domain perturbations from ``spec`` for the current weights of ``model``.

    Parameters
    ----------
    model : nn.Module
        The training model (read only).
    spec : HardwareSpec
        The training distribution q (mapping, program-phase effects, bounds, bias mode).
    samples : int
        ``L``.
    seed, step : SeedLike, int
        Draw ``l`` uses the generator of ``(seed, step, l)`` (:func:`step_generators`), unless ``generators``.
    targets : sequence of PerturbTarget, optional
        Precomputed :func:`perturb_targets` (else computed from ``layers`` and ``perturb_batchnorm``).
    weight_domain : bool
        When every program effect is unclipped additive Gaussian noise with some ``sigma > 0``, skip the
        conductance domain: ``dW~ = shift + sum c_a unit sigma Z_a`` straight from the same base draws
        (:func:`anvm_stats.training.gaussian_form.layer_noise`), one fused pass per layer and draw, drawn and mapped in
        parallel threads over ``l``. Equal to the conductance-domain path (``False``) up to float round-off
        (a few ulps of ``max|W~|``; the direct form avoids the cancellation in ``decode(g) - W~``).

    Returns
    -------
    Perturbation
        ``deltas[param_name]`` of shape ``[L, *param.shape]`` (for a target with a BatchNorm, the folded layer's
        ``dW'`` under ``<layer>.weight`` and ``db'`` under ``<bn>.bias``).
    """
    check_number("samples", samples, low=1, integer=True)
    if targets is None:
        targets = perturb_targets(model, layers=layers, perturb_batchnorm=perturb_batchnorm)
    params = dict(model.named_parameters())
    arrays = []                     # (weight key, delta key of the bias, w [out, in], b [out] or None)
    for t in targets:
        for (wk, bk, dbk), (w, b) in zip(t.keys(model), _array_weights(model, t, params)):
            arrays.append((wk, dbk, w, b))
    dev, dtype = arrays[0][2].device, torch.float32
    gens = generators if generators is not None else step_generators(seed, step, samples, dev)
    L = len(gens)
    layers_info, chunks, offset = [], [], 0
    for keys in arrays:
        w, b = keys[2], keys[3]
        w_aug, s, mode = augmented_weights(w.float(), None if b is None else b.float(), spec.bias)
        enc = spec.mapping.encode(w_aug, spec.bounds)
        A, O, n_in = enc.g.shape[0], w.shape[0], w.shape[1]
        chunks.append(enc.g[:, :, :n_in].reshape(-1))
        w_sl = slice(offset, offset + A * O * n_in)
        offset = w_sl.stop
        b_sl = None
        if mode == "column":
            chunks.append(enc.g[:, :, n_in:].reshape(-1))
            b_sl = slice(offset, offset + A * O)
            offset = b_sl.stop
        layers_info.append((keys[:2], enc, w_aug, s, None, w_sl, b_sl, (A, O, n_in)))
    g0 = torch.cat(chunks)
    effects = spec.program_effects
    plan = _weight_domain_plan(spec, layers_info) if weight_domain else None
    if plan is not None:
        return _draw_weight_domain(model, plan, layers_info, len(effects), g0.numel(), gens, dev, dtype)
    g = g0.expand(L, -1)
    for eff, d in zip(effects, _base_draws(effects, g0.numel(), gens, dev, dtype)):
        g = eff.apply(g, d, spec.bounds)
    if g.data_ptr() == g0.data_ptr():
        g = g0.expand(L, -1).clone()                                    # no program effects
    is_zero = torch.equal(g[0], g0) and torch.equal(g, g0.expand(L, -1))   # cheap test first: draw 0
    deltas = {}
    for (wk, dbk), enc, w_aug, s, k, w_sl, b_sl, (A, O, n_in) in layers_info:
        pw = params[wk]
        if is_zero:   # nominal chip: dW = decode(g0) - W~ (mapping error, e.g. bit slicing) unless pure round-off
            err = enc.decode(enc.g) - w_aug
            tol = ROUNDOFF_ULPS * torch.finfo(torch.float32).eps * float(w_aug.abs().max())
            is_zero = not bool((err.abs() > tol).any())
        dw = enc.decode(g[:, w_sl].view(L, A, O, n_in)).sub_(w_aug[:, :n_in])     # [L, out, in] (folded)
        deltas[wk] = dw.reshape(L, *pw.shape).to(pw.dtype)
        if b_sl is not None:
            db = enc.decode(g[:, b_sl].view(L, A, O, 1))[..., 0].sub_(w_aug[:, n_in]).mul_(s)   # [L, out]
            deltas[dbk] = db.to(pw.dtype)
    if is_zero:
        deltas = {k: torch.zeros_like(v) for k, v in deltas.items()}
    return Perturbation(deltas=deltas, samples=L, is_zero=is_zero)


def _weight_domain_plan(spec: HardwareSpec, layers_info: list) -> list | None:
    """Per layer ``(shift_w [O, in], terms_w, shift_b [O] or None, terms_b)`` of the weight-domain form (the bias
    scale ``s`` folded in), or None when q is not Gaussian-additive or noise-free."""
    try:
        effects = gaussian_effects(spec)
    except ConfigError:
        return None
    if not any(e.sigma > 0 for e in effects):
        return None
    plan = []
    for t, enc, w_aug, s, k, w_sl, b_sl, (A, O, n_in) in layers_info:
        shift, terms = layer_noise(enc, effects, spec.bounds)
        shift = mapping_error(enc, w_aug) + shift
        tw = [(j, a, sk[:, :n_in] if sk.shape[1] > 1 else sk) for j, a, sk in terms]
        tb = [(j, a, sk[:, -1] * s) for j, a, sk in terms] if b_sl is not None else []
        plan.append((shift[:, :n_in], tw, shift[:, n_in] * s if b_sl is not None else None, tb))
    return plan


def _draw_weight_domain(model: nn.Module, plan: list, layers_info: list, n_effects: int, n: int, gens: list,
                        dev, dtype) -> Perturbation:
    """Draw row ``l`` of every effect's base draws (``Z_j [L, n]``, generator ``l`` only, effects in order, as
    :func:`_base_draws`) and map it to ``dW`` in the same thread; threads over ``l`` on CPU."""
    L = len(gens)
    z = [torch.empty(L, n, dtype=dtype, device=dev) for _ in range(n_effects)]
    outs = []
    for (t, enc, w_aug, s, k, w_sl, b_sl, (A, O, n_in)), (_, _, sb, _) in zip(layers_info, plan):
        outs.append((torch.empty(L, O, n_in, dtype=dtype, device=dev),
                     None if sb is None else torch.empty(L, O, dtype=dtype, device=dev)))

    def fill(rows) -> None:
        for r in rows:
            for zj in z:
                zj[r].normal_(generator=gens[r])
            for (t, enc, w_aug, s, k, w_sl, b_sl, (A, O, n_in)), (sw, tw, sb, tb), (ow, ob) in zip(
                    layers_info, plan, outs):
                for out, shift, terms, sl, shape in ((ow, sw, tw, w_sl, (A, O, n_in)), (ob, sb, tb, b_sl, (A, O))):
                    if out is None:
                        continue
                    for i, (j, a, sk) in enumerate(terms):
                        zk = z[j][r, sl].view(shape)[a]
                        if i == 0:
                            torch.addcmul(shift, zk, sk, out=out[r])
                        else:
                            out[r].addcmul_(zk, sk)

    workers = min(torch.get_num_threads(), L) if torch.device(dev).type == "cpu" else 1
    if workers <= 1:
        fill(range(L))
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(fill, [range(w, L, workers) for w in range(workers)]))
    deltas = {}
    params = dict(model.named_parameters())
    for ((wk, dbk), *_), (ow, ob) in zip(layers_info, outs):
        pw = params[wk]
        deltas[wk] = ow.reshape(L, *pw.shape).to(pw.dtype)
        if ob is not None:
            deltas[dbk] = ob.to(pw.dtype)
    return Perturbation(deltas=deltas, samples=L, is_zero=False)
