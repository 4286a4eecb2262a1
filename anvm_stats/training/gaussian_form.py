"""Additive Gaussian device noise in the weight domain: the closed form that HA-SGD's local
reparameterisation (:mod:`anvm_stats.training.local`) and the weight-domain draws of ``split``/``direct``
(:mod:`anvm_stats.training.perturb`) share.

For a spec whose program-phase effects are all unclipped additive Gaussian programming noise, each element of
``W~ = [W, b/s]`` is perturbed by ``dW~ = err + shift + sum_k S_k * Z_k`` with ``Z_k`` standard normal base draws
(:func:`layer_noise`), ``err`` the mapping's own reconstruction error (:func:`mapping_error`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import ConfigError
from ..hardware.effects import Bounds, ProgrammingNoise
from ..hardware.mapping import LayerEncoding
from ..hardware.spec import HardwareSpec

Tensor = torch.Tensor


def gaussian_effects(spec: HardwareSpec) -> tuple[ProgrammingNoise, ...]:
    """The program-phase effects of ``spec``, checked to be additive unclipped Gaussian noise.

    Raises
    ------
    ConfigError
        Naming the first effect (``spec.effects[i]``) that is not ``ProgrammingNoise(distribution="gaussian",
        clip=False)``, and suggesting ``mode="split"``.
    """
    out, random = [], False
    for i, e in enumerate(spec.effects):
        if e.phase != "program":
            continue
        ok = type(e) is ProgrammingNoise and e.distribution == "gaussian" and not e.clip
        why = ("additive unclipped Gaussian programming noise (ProgrammingNoise(distribution='gaussian', "
               "clip=False)); clipping, faults, conductance levels, drift and non-Gaussian noise have no closed "
               "form: use mode='split' or 'direct'")
        if ok and e.relative_to == "state" and random:
            ok, why = False, ("state-proportional noise only before any other random effect (its unit would be "
                              "random); use mode='split' or 'direct'")
        if not ok:
            raise ConfigError(f"spec.effects[{i}]", getattr(e, "kind", type(e).__name__) + f" {e!r}", why)
        random |= e.sigma > 0
        out.append(e)
    return tuple(out)


def layer_noise(enc: LayerEncoding, effects: Sequence[ProgrammingNoise], bounds: Bounds,
                ) -> tuple[Tensor, list[tuple[int, int, Tensor]]]:
    """Weight-domain form of Gaussian programming noise on one layer: ``dW~ = err + shift + sum_k S_k * Z_k``.

    Parameters
    ----------
    enc : LayerEncoding
        ``g [A, out, in']``, linear decode.
    effects : sequence of ProgrammingNoise
        From :func:`gaussian_effects`.
    bounds : Bounds

    Returns
    -------
    shift : Tensor [out, 1] or [out, in']
        Mean shift of the effects' ``mu``: ``sum_a c_a unit_a mu``; ``[out, 1]`` (the same for every input) unless
        a unit is the device state. ``err = decode(g0) - W~`` (:func:`mapping_error`) is not included.
    terms : list of (effect index j, array a, S : Tensor [out, 1] or [out, in'])
        ``Z_k`` is the base draw of effect ``j`` on the devices of array ``a`` (shape ``[out, in']``), ``S_k =
        c_a unit sigma_j``; ``[out, 1]`` for state-independent units. Effects with ``sigma_j = 0`` give none.
    """
    coef = (enc.combine.t().to(enc.gain.dtype) @ enc.gain)[:, :, None]      # [A, out, 1]: decode = sum_a c_a G_a
    state, shift, terms = enc.g, torch.zeros_like(coef[0]), []
    for j, e in enumerate(effects):
        unit = state if e.relative_to == "state" else (bounds.span if e.relative_to == "range" else 0.5 * bounds.span)
        if e.sigma > 0:
            terms += [(j, a, coef[a] * (unit[a] if isinstance(unit, Tensor) else unit) * float(e.sigma))
                      for a in range(coef.shape[0])]
        if e.mu:
            shift = shift + (coef * unit).sum(0) * float(e.mu)
            state = state + unit * float(e.mu)
    return shift, terms


def mapping_error(enc: LayerEncoding, w_aug: Tensor) -> Tensor:
    """``decode(g0) - W~`` ``[out, in']``: the mapping's own reconstruction error (round-off, or bit slicing's
    weight quantisation)."""
    return enc.decode(enc.g) - w_aug


__all__ = ["gaussian_effects", "layer_noise", "mapping_error"]
