"""Local reparameterisation (Kingma, Salimans & Welling 2015) of HA-SGD for additive Gaussian device noise.

When every program-phase effect of q is unclipped additive Gaussian programming noise
(``ProgrammingNoise(distribution="gaussian", clip=False)``, any ``relative_to``, any ``mu``), the perturbation of
each weight is Gaussian with a mean and variance that do not depend on the draw. The mapping decodes linearly,
``W~ = sum_a c_a G_a + offset`` with ``c_a[o] = sum_s gain[s, o] combine[s, a]``, and each effect adds
``unit_a (mu + sigma Z_a)`` to every device, so per element of ``W~ = [W, b/s]``::

    E[dW~]   = decode(E[G]) - W~           (mean shift; includes the mapping's own reconstruction error)
    Var[dW~] = sum_a sum_e (c_a unit_{e,a} sigma_e)^2

(:func:`layer_noise`). The pre-activation of a Linear layer for one sample then is exactly
``y ~ N(x (W + E dW)^T + b + E db, (x^2) Var[dW]^T + Var[db])``, independently per output, so
``mode="local"`` draws ``B x O`` standard normals per layer (instead of ``L x P`` per step) and every sample of the
mini-batch sees its own independent draw of q: it is HA-SGD with ``L = batch size``, an unbiased estimate of the
gradient of ``E_q[J(w + dw)]`` (the same objective as ``split``/``direct``) with lower variance per step. As in
those modes the moments are taken at the current weights and held fixed (``dw`` is not differentiated); the
gradient flows to ``w`` through the mean term and to earlier layers through both terms (pathwise).

Convolutions share each weight across output positions, so their outputs are correlated over positions and the
local trick is not exact for them. ``conv="split"`` (default, exact) gives conv layers the ``split`` treatment:
``G = min(L, B)`` contiguous sample groups, each with its own draw of the conv weights.
``conv="local"`` instead adds independent noise of the right per-output variance ``conv(x^2, Var[dW])`` at
every output position: the per-output marginals are right, the spatial correlations are dropped (a different,
weaker penalty; an approximation).

Any other effect (clipping, stuck-at faults, conductance levels, drift, non-Gaussian or state-proportional noise
on top of a random state) has no such closed form: it is refused with a :class:`ConfigError` that names it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..analog.program import augmented_weights
from ..errors import check
from ..hardware.mapping import DifferentialMapping, OffsetMapping
from ..hardware.spec import HardwareSpec
from ..rng import SeedLike, Stream, instance_generators
from .gaussian_form import gaussian_effects, layer_noise, mapping_error
from .grouped import perturbed_forward
from .perturb import (ROUNDOFF_ULPS, Perturbation, PerturbTarget, draw_perturbations, folded_weights,
                      perturb_targets, step_root)

Tensor = torch.Tensor
#: spawn-key prefix of the per-sample noise stream of ``mode="local"`` below a run's root SeedSequence
LOCAL_KEY = 0x10CA1
CONV_MODES = ("split", "local")


#: mappings whose reconstruction error is float round-off only (the local moments skip computing it)
EXACT_MAPPINGS = (OffsetMapping, DifferentialMapping)


@dataclass(frozen=True, eq=False)
class LayerMoments:
    """Mean and variance of the weight-domain perturbation of one analog layer (detached).

    Attributes
    ----------
    weight_mean : Tensor or None
        ``[out, 1, ...]`` (the same for every input of an output) or ``[*weight.shape]``; None when zero.
    weight_var : Tensor
        ``[out, 1, ...]`` or ``[*weight.shape]``.
    bias_mean, bias_var : Tensor [out] or None
        Of the bias column (None for digital or absent bias).
    bias_on : str or None
        Module whose output the bias noise is added to: the layer, or the BatchNorm folded into the draw.
    after : str or None
        The BatchNorm folded into the draw: the weight moments are the folded layer's and their noise is added to
        that BatchNorm's output (None: inside the layer).
    """

    weight_mean: Tensor | None
    weight_var: Tensor
    bias_mean: Tensor | None
    bias_var: Tensor | None
    bias_on: str | None
    after: str | None = None

    @property
    def row_constant(self) -> bool:
        """The variance is the same for all inputs of an output (then ``(x^2) Var^T = |x|^2 v_o``)."""
        return self.weight_var[0].numel() == 1


@torch.no_grad()
def weight_moments(model: nn.Module, spec: HardwareSpec, targets: Sequence[PerturbTarget],
                   ) -> tuple[dict[str, LayerMoments], bool]:
    """Closed-form per-element mean and variance of the perturbation ``dW ~ q`` of each target layer.

    Same conventions as :func:`anvm_stats.training.perturb.draw_perturbations` (augmented ``[W, b/s]``; with a
    BatchNorm the folded layer's ``dW'`` and ``db'``, both acting on the BatchNorm's output), so the moments are
    those of its deltas. The mapping's reconstruction error joins the mean unless it is round-off (below ``ROUNDOFF_ULPS``
    ulps of ``max|W~|``; never computed for the exact :data:`EXACT_MAPPINGS`).

    Returns
    -------
    (moments, is_zero) : (dict of layer name -> LayerMoments, bool)
        ``is_zero``: no variance and no mean anywhere; HA-SGD then reduces to plain SGD.

    Raises
    ------
    ConfigError
        For effects without a closed form (:func:`gaussian_effects`).
    """
    effects = gaussian_effects(spec)
    exact = type(spec.mapping) in EXACT_MAPPINGS
    # exact built-in mappings scale by per-row (or layer) min / max / max|.| only, so with no state-relative unit
    # the encoding of [row min, row max] (augmented like W) has the same gains: no full-size passes needed
    proxy = exact and not any(e.relative_to == "state" and (e.sigma > 0 or e.mu) for e in effects)
    out, is_zero = {}, True
    for t in targets:
        m = model.get_submodule(t.name)
        w, b, k = folded_weights(model, t)
        if proxy:
            w = torch.stack([w.amin(1), w.amax(1)], 1)
        w_aug, s, mode = augmented_weights(w.float(), None if b is None else b.float(), spec.bias)
        enc = spec.mapping.encode(w_aug, spec.bounds)
        shift, terms = layer_noise(enc, effects, spec.bounds)
        var = torch.zeros_like(shift)
        for _, _, sk in terms:
            var = var + sk.square()
        if not exact:
            err = mapping_error(enc, w_aug)
            if bool((err.abs() > ROUNDOFF_ULPS * torch.finfo(torch.float32).eps * float(w_aug.abs().max())).any()):
                shift = shift + err
        has_mean = bool(shift.any())
        is_zero &= not terms and not has_mean
        n_in = m.weight[0].numel()
        wm, wv = shift[:, :n_in], var[:, :n_in]          # of the folded layer when t.bn is set
        bm = bv = None
        if mode == "column":
            bm, bv = shift[:, -1] * s, var[:, -1] * (s * s)
        dt, shape = m.weight.dtype, m.weight.shape
        as_w = lambda v: v.reshape(shape if v.shape[1] > 1 else (shape[0],) + (1,) * (len(shape) - 1)).to(dt)  # noqa: E731
        out[t.name] = LayerMoments(weight_mean=as_w(wm) if has_mean else None, weight_var=as_w(wv),
                                   bias_mean=None if bm is None else bm.to(dt),
                                   bias_var=None if bv is None else bv.to(dt),
                                   bias_on=None if bm is None else (t.bn or t.name), after=t.bn)
    return out, is_zero


@dataclass(frozen=True, eq=False)
class LocalPerturbation:
    """What one ``mode="local"`` step needs.

    Attributes
    ----------
    moments : dict of str -> LayerMoments
        Layers run with the local reparameterisation.
    conv : Perturbation or None
        ``split`` draws of the conv layers (``conv="split"``), ``[G, ...]`` per parameter.
    conv_targets : tuple of PerturbTarget
    generator : torch.Generator
        Source of the per-sample, per-output standard normals (drawn in forward order).
    samples : int
        Groups ``G`` of the conv draws (1 without conv draws).
    is_zero : bool
        Noise-free: the plain forward.
    """

    moments: dict
    conv: Perturbation | None
    conv_targets: tuple
    generator: torch.Generator
    samples: int
    is_zero: bool


def local_generator(seed: SeedLike, step: int, device="cpu") -> torch.Generator:
    """The generator of the per-sample noise of optimiser step ``step`` (a pure function of ``(seed, step)``,
    stream ``Stream.TRAIN``)."""
    return instance_generators(step_root(seed, LOCAL_KEY), (int(step),), Stream.TRAIN, device)[0]


def draw_local(model: nn.Module, spec: HardwareSpec, *, samples: int, seed: SeedLike, step: int,
               targets: Sequence[PerturbTarget] | None = None, conv: str = "split") -> LocalPerturbation:
    """Moments of every Linear target (and Conv target with ``conv="local"``) and ``split`` draws (``samples``
    groups, the generators of :func:`~anvm_stats.training.perturb.step_generators`) of the remaining convs.

    Raises
    ------
    ConfigError
        For a q without a closed form (see :func:`gaussian_effects`) or an unknown ``conv``.
    """
    check(conv in CONV_MODES, "conv", conv, f"one of {CONV_MODES}")
    targets = perturb_targets(model) if targets is None else tuple(targets)
    gaussian_effects(spec)
    mods = [model.get_submodule(t.name) for t in targets]
    # composite layers (attention, recurrent) have no closed form here: always drawn and run as in split mode
    local = [t for t, m in zip(targets, mods) if not t.arrays and (conv == "local" or isinstance(m, nn.Linear))]
    split = tuple(t for t in targets if t not in local)
    moments, zero = weight_moments(model, spec, local) if local else ({}, True)
    pert = None
    if split:
        pert = draw_perturbations(model, spec, samples=samples, seed=seed, step=step, targets=split)
        zero &= pert.is_zero
    return LocalPerturbation(moments=moments, conv=pert, conv_targets=split, samples=samples if split else 1,
                             generator=local_generator(seed, step, next(model.parameters()).device), is_zero=zero)


def _noisy(y: Tensor, s: Tensor, gen: torch.Generator) -> Tensor:
    """``y + sqrt(s) * eps``, ``eps ~ N(0, 1)`` of y's shape from ``gen`` (``s`` clamped at the smallest normal float, so the gradient stays finite where an
    input is all zeros)."""
    eps = torch.randn(y.shape, generator=gen, device=y.device, dtype=y.dtype)
    return torch.addcmul(y, s.clamp_min(torch.finfo(s.dtype).tiny).sqrt(), eps)


def _local_module_forward(m: nn.Module, name: str, mom: LayerMoments, gen: torch.Generator, pending: list):
    """``y = f(x, W + E dW, b + E db) + sqrt(f(x^2, Var dW, Var db)) * eps`` with ``f`` the layer's linear map
    (``db`` only when the bias noise acts on this layer rather than on a folded BatchNorm). A row-constant
    variance needs no second GEMM: ``f(x^2, Var) = |x|^2 v_o`` (Linear) or the window sums of ``sum_c x^2``
    times ``v_o`` (ungrouped conv). With a folded BatchNorm (``mom.after``) the layer returns ``f(x, W, b)`` and
    leaves its noise ``f(x, E dW') + sqrt(f(x^2, Var dW')) * eps`` in ``pending`` for the BatchNorm's output."""
    own, lin = mom.bias_on == name, isinstance(m, nn.Linear)
    v, vb = mom.weight_var, (mom.bias_var if mom.bias_on == name else None)
    cheap = mom.row_constant and (lin or m.groups == 1)
    ones = None if lin or not cheap else torch.ones(1, 1, *m.weight.shape[2:], dtype=v.dtype, device=v.device)
    v_row = v.reshape(-1) if lin else v.reshape(1, -1, *([1] * (v.dim() - 2)))
    vb_row = vb if vb is None or lin else vb.reshape(1, -1, *([1] * (v.dim() - 2)))

    def forward(x: Tensor) -> Tensor:
        b = m.bias
        if own:
            b = mom.bias_mean if b is None else b + mom.bias_mean
        w = m.weight if mom.weight_mean is None or mom.after else m.weight + mom.weight_mean
        y = F.linear(x, w, b) if lin else m._conv_forward(x, w, b)
        x2 = x * x
        if cheap:
            x2 = x2.sum(-1, keepdim=True) if lin else m._conv_forward(x2.sum(1, keepdim=True), ones, None)
            s = x2 * v_row if vb is None else torch.addcmul(vb_row, x2, v_row)
        else:
            s = F.linear(x2, v.expand_as(m.weight), vb) if lin else m._conv_forward(x2, v.expand_as(m.weight), vb)
        if mom.after is None:
            return _noisy(y, s, gen)
        wm = mom.weight_mean
        mean = torch.zeros_like(y) if wm is None else (
            F.linear(x, wm.expand_as(m.weight)) if lin else m._conv_forward(x, wm.expand_as(m.weight), None))
        pending.append(_noisy(mean, s, gen))
        return y
    return forward


def _bn_noise_forward(bn: nn.Module, mean: Tensor | None, var: Tensor | None, gen: torch.Generator, pending: list):
    """BatchNorm whose output gets its layer's folded weight noise (left in ``pending``) and the folded bias noise
    ``E db' + sqrt(Var db') eps``, one draw per sample and channel (shared by the channel's positions, like the
    one bias device it models; none when ``mean`` is None)."""
    original = type(bn).forward

    def forward(x: Tensor) -> Tensor:
        y = original(bn, x)
        if pending:
            y = y + pending.pop()
        if mean is None:
            return y
        eps = torch.randn(y.shape[:2], generator=gen, device=y.device, dtype=y.dtype)
        shift = torch.addcmul(mean, var.sqrt(), eps)
        return y + shift.reshape(*shift.shape, *([1] * (y.dim() - 2)))
    return forward


@contextlib.contextmanager
def local_forward(model: nn.Module, lp: LocalPerturbation, sizes: Sequence[int]) -> Iterator[None]:
    """Within the block ``model(x)`` runs the local reparameterisation on the layers of ``lp.moments`` and the
    ``split`` forward (contiguous groups of ``sizes``, one conv draw each) on ``lp.conv_targets``.
    Implemented by temporarily overriding ``forward`` (hooks still run); gradients flow to the weights."""
    if lp.is_zero:
        yield
        return
    patched = []
    try:
        for name, mom in lp.moments.items():
            m = model.get_submodule(name)
            pending: list = []
            m.forward = _local_module_forward(m, name, mom, lp.generator, pending)
            patched.append(m)
            if mom.after is not None:
                bn = model.get_submodule(mom.after)
                bn.forward = _bn_noise_forward(bn, mom.bias_mean, mom.bias_var, lp.generator, pending)
                patched.append(bn)
        split = lp.conv is not None and not lp.conv.is_zero
        with perturbed_forward(model, lp.conv, lp.conv_targets, sizes) if split else contextlib.nullcontext():
            yield
    finally:
        for m in patched:
            del m.forward


__all__ = ["LOCAL_KEY", "CONV_MODES", "LayerMoments", "LocalPerturbation", "EXACT_MAPPINGS",
           "weight_moments", "draw_local", "local_forward", "local_generator"]
