"""Weight-domain moments of the perturbation a HardwareSpec implies: ``E[dW~]`` and ``Var[dW~]`` per element.

Estimated by sampling chips (no forward passes), so it holds for every effect, user-defined ones included:
clipping, faults and finite levels make the perturbation non-Gaussian and biased, and the mean term captures that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..hardware.spec import HardwareSpec
from ..rng import SeedLike
from .program import AnalogProgram


@dataclass(frozen=True, eq=False)
class WeightMoments:
    """Per-element moments of ``dW~ = W~_chip - W~_nominal`` for one layer, shapes ``[out, in(+1)]``.

    ``mean_se`` is the Monte Carlo standard error of ``mean``; ``n_draws`` the chips sampled.
    """

    mean: torch.Tensor
    variance: torch.Tensor
    mean_se: torch.Tensor
    n_draws: int


@torch.no_grad()
def weight_perturbation_moments(program: AnalogProgram, spec: HardwareSpec | None = None, *, n_draws: int = 512,
                                seed: SeedLike = 0, chunk: int = 64) -> dict[str, WeightMoments]:
    """Moments of the augmented-weight perturbation of every analog layer under ``spec`` (default: the
    program's), from ``n_draws`` sampled chips (read-phase effects excluded: they are not held)."""
    from ..sampler import ChipSampler

    spec = spec or program.spec
    sampler = ChipSampler(program, seed)
    nominal = program.weights(program.g0[None])
    s1 = {k: torch.zeros_like(v[0], dtype=torch.float64) for k, v in nominal.items()}
    s2 = {k: torch.zeros_like(v[0], dtype=torch.float64) for k, v in nominal.items()}
    for start in range(0, n_draws, chunk):
        idx = range(start, min(n_draws, start + chunk))
        w = program.weights(sampler.chips(idx, spec))
        for k, v in w.items():
            d = (v - nominal[k]).double()
            s1[k] += d.sum(0)
            s2[k] += (d * d).sum(0)
    out = {}
    for k in nominal:
        mean = s1[k] / n_draws
        var = (s2[k] / n_draws - mean ** 2).clamp(min=0) * (n_draws / max(1, n_draws - 1))
        out[k] = WeightMoments(mean=mean, variance=var, mean_se=(var / n_draws).sqrt(), n_draws=n_draws)
    return out
