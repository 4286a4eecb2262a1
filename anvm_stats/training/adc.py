"""ADC in the training loop (paper 1, Figure 9): analog layer outputs quantised with a straight-through estimator.

Each quantised output gets one range ``[lo, hi]`` from a min-max (``percentile=100``) or percentile observer
(:func:`anvm_stats.hardware.calibrate_range`) over a calibration batch of training data, recalibrated by HA-SGD at
the start of every epoch from the current weights (deterministic, so resumed runs match). The observer runs the
network in its own mode (train-mode BatchNorm uses batch statistics) on copies of the buffers: calibrating never
changes running statistics. The forward rounds to ``levels`` evenly spaced values in the range; the backward
passes gradients straight through inside the range and zeroes them outside (:func:`anvm_stats.hardware.quantize`
and an exact-forward straight-through estimator, :func:`quantize_ste`).

Which output is quantised: that of each analog layer, or, when a BatchNorm directly follows it (it is folded into
the crossbar at inference), the BatchNorm's output: what the folded layer's ADC reads on the chip.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..analog.fold import find_foldable_pairs
from ..errors import check_number
from ..hardware.periphery import calibrate_range, quantize

Tensor = torch.Tensor


def adc_points(model: nn.Module, layers: Sequence[str]) -> list[str]:
    """Module names whose outputs the ADC quantises: each layer, or the BatchNorm folded into it."""
    pairs = dict(find_foldable_pairs(model))
    return [pairs.get(n, n) for n in layers]


def quantize_ste(y: Tensor, lo: float, hi: float, levels: int) -> Tensor:
    """:func:`anvm_stats.hardware.quantize` with a straight-through gradient whose forward value is EXACTLY on the
    ``levels`` grid: ``q + (yc - yc.detach())`` (``x - x == 0`` in floating point), where ``yc + (q - yc).detach()``
    can be off the grid by round-off. Gradient 1 inside ``[lo, hi]``, 0 outside."""
    yc = y.clamp(lo, hi)
    return quantize(y.detach(), lo, hi, levels) + (yc - yc.detach())


class ADCInTheLoop:
    """Quantise the outputs of ``points`` (module names of ``model``) to ``levels`` values with an STE.

    Use :meth:`calibrate` on training inputs, then ``with adc: model(x)`` (forward hooks are attached inside the
    block only).

    Parameters
    ----------
    model : nn.Module
    points : sequence of str
        Module names (see :func:`adc_points`).
    levels : int >= 2
        ADC output levels.
    percentile : float in (50, 100]
        Range observer: 100 is min-max, else the inner percentile of the calibration values.
    """

    def __init__(self, model: nn.Module, points: Sequence[str], levels: int, percentile: float = 99.99):
        check_number("adc_levels", levels, low=2, high=2 ** 24, integer=True)
        check_number("adc_percentile", percentile, low=50.0, high=100.0, low_open=True)
        self.model, self.points = model, list(points)
        self.levels, self.percentile = int(levels), float(percentile)
        self.ranges: dict[str, tuple[float, float]] = {}
        self._handles: list = []

    @torch.no_grad()
    def calibrate(self, x: Tensor) -> dict[str, tuple[float, float]]:
        """Set ``ranges[point] = (lo, hi)`` from a forward of ``x`` ``[N, ...]`` at the current nominal weights."""
        seen: dict[str, list[Tensor]] = {p: [] for p in self.points}
        handles = [self.model.get_submodule(p).register_forward_hook(
            lambda m, a, out, p=p: seen[p].append(out.detach())) for p in self.points]
        params = dict(self.model.named_parameters())
        buffers = {k: v.clone() for k, v in self.model.named_buffers()}
        try:
            torch.func.functional_call(self.model, (params, buffers), (x,))
        finally:
            for h in handles:
                h.remove()
        self.ranges = {p: calibrate_range(torch.cat([v.reshape(-1) for v in seen[p]]), self.percentile)
                       for p in self.points}
        return self.ranges

    def _hook(self, point: str):
        lo, hi = self.ranges[point]
        return lambda m, a, out: quantize_ste(out, lo, hi, self.levels)

    def __enter__(self) -> "ADCInTheLoop":
        if not self.ranges:
            raise RuntimeError("ADCInTheLoop.calibrate() must run before the quantised forward")
        self._handles = [self.model.get_submodule(p).register_forward_hook(self._hook(p)) for p in self.points]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
