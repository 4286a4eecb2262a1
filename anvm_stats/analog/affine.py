"""Programming and decoding fused into one pass, for chips whose programmed weights are affine in the draws.

When every program-phase effect is unclipped additive :class:`~anvm_stats.hardware.effects.ProgrammingNoise`
with a state-independent unit (``relative_to`` "range" or "half_range"; Gaussian or uniform draws ``z`` of unit
variance), every layer reads one device array as one signal (``W = gain * G (+ offset)``), and the periphery
reads weights (no ADC, no output noise: DAC input quantisation is fine), the programmed weights are::

    G = G0 + sum_e unit_e (sigma_e z_e + mu_e)
    W = decode(G0 + sum_e unit_e mu_e) + sum_e (unit_e sigma_e gain) * z_e

so the weights of a chunk come straight from its base draws in one ``addcmul`` per layer, instead of one pass
to program conductances and a second to decode them (the general path, :meth:`ChipSampler.program_chips` then
:meth:`AnalogProgram.load`): one memory pass over the chunk's ``K x P`` weights fewer.
The two paths give the same weights up to float round-off (``(g0 + a z) * c`` vs ``w0 + (a c) z``); a run uses
one of them for every chunk and grid point, so results stay independent of the chunking.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..hardware.effects import ProgrammingNoise
from ..hardware.spec import HardwareSpec
from .lazy import LazyAffine, ProductCache
from .program import AnalogProgram

Tensor = torch.Tensor


@dataclass(frozen=True, eq=False)
class AffineLayer:
    """``W = w0 + sum_j coef_j * z_j`` for one layer: ``w0`` ``[out, in]``, ``coef`` ``[out, 1]`` per effect; the
    bias column likewise (``b0`` ``[out]``, same coefficients), or None."""

    w0: Tensor
    coef: tuple
    b0: Tensor | None


def _unit(effect: ProgrammingNoise, span: float) -> float | None:
    if effect.relative_to == "range":
        return span
    if effect.relative_to == "half_range":
        return 0.5 * span
    return None


def affine_layers(program: AnalogProgram, spec: HardwareSpec) -> list[AffineLayer] | None:
    """Per-layer affine maps from base draws to weights, or None when ``spec`` is not of that form (see module
    docstring). ``spec`` must be ``program.spec`` up to knob values (the mapping of ``program`` is used)."""
    per = spec.periphery
    if spec.read_effects or per.adc is not None or per.output_noise > 0:
        return None
    effects = spec.program_effects
    if not effects:
        return None
    units = []
    for e in effects:
        if type(e) is not ProgrammingNoise or e.clip or e.distribution not in ("gaussian", "uniform"):
            return None
        u = _unit(e, spec.bounds.span)
        if u is None:
            return None
        units.append(u)
    layers = []
    for p in program.plans:
        enc = p.encoding
        if enc.n_arrays != 1 or enc._single() != 0:
            return None
        shift = sum(u * float(e.mu) for u, e in zip(units, effects))
        g0 = program.g0[None] + shift if shift else program.g0[None]
        gain = enc.gain[0]                                                   # [out]
        w0 = enc.decode(p.weight_view(g0))[0]
        coef = tuple((gain * (u * float(e.sigma)))[:, None] for u, e in zip(units, effects))
        b0 = None if p.b_slice is None else enc.decode(p.bias_view(g0))[0, :, 0]
        layers.append(AffineLayer(w0=w0, coef=coef, b0=b0))
    return layers


def draw_views(program: AnalogProgram, draws: list) -> list[tuple]:
    """Per layer, the chunk's draws as ``(zw, zb)``: tuples (one per program effect) of ``[K, out, in]`` weight
    and ``[K, out]`` bias-column views (``zb`` empty without a bias column) of the base draws (one dict
    ``{"z": [K, P]}`` per effect, as :meth:`ChipSampler.draw` returns them). Shared by all grid points."""
    out = []
    for p in program.plans:
        zw = tuple(d["z"][:, p.w_slice].view(-1, p.out_features, p.in_features) for d in draws)
        zb = () if p.b_slice is None else tuple(d["z"][:, p.b_slice].view(-1, p.out_features) for d in draws)
        out.append((zw, zb))
    return out


def affine_runtime(program: AnalogProgram, layers: list[AffineLayer], views: list[tuple], *,
                   products: ProductCache | None = None, nominal: ProductCache | None = None) -> list[LazyAffine]:
    """Every layer's :class:`~anvm_stats.analog.lazy.LazyAffine` from the chunk's :func:`draw_views`; weights are
    programmed when first used."""
    return [LazyAffine(w0=lay.w0, b0=lay.b0, coef=lay.coef, zw=zw, zb=zb, products=products, nominal=nominal)
            for lay, (zw, zb) in zip(layers, views)]


def affine_weights(program: AnalogProgram, layers: list[AffineLayer], draws: list) -> list[tuple]:
    """Weights ``[K, out, in]`` and bias-column values ``[K, out]`` (or None) of every layer from the base draws."""
    return [lazy.weights() for lazy in affine_runtime(program, layers, draw_views(program, draws))]
