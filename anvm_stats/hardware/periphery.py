"""Periphery: DAC (input) and ADC (output) quantisers, their calibrated ranges, additive output noise."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from ..errors import ConfigError, check, check_number
from .registry import from_dict, register, to_dict

Tensor = torch.Tensor

#: calibration uses at most this many values per layer (an evenly strided subset beyond it)
MAX_CALIBRATION_VALUES = 4_000_000


@register("quantizer")
@dataclass(frozen=True, kw_only=True)
class Quantizer:
    """Uniform quantiser with a range calibrated from data.

    Parameters
    ----------
    bits : int, optional
        Resolution in bits (``levels = 2**bits``). Give exactly one of ``bits`` and ``levels``.
    levels : int, optional
        Number of output levels (>= 2), e.g. 2..18 for paper 1's Figure 9.
    percentile : float in (50, 100]
        The range covers this inner percentile of the calibration values: ``[0, P_p]`` for non-negative signals,
        ``[P_(100-p), P_p]`` otherwise (Xiao et al. use 99.98 % of pre-ADC outputs).
    """

    kind: ClassVar[str] = "uniform"
    bits: int | None = None
    levels: int | None = None
    percentile: float = 99.99

    def __post_init__(self):
        if (self.bits is None) == (self.levels is None):
            raise ConfigError("Quantizer.bits/levels", (self.bits, self.levels), "exactly one of bits and levels")
        if self.bits is not None:
            check_number("Quantizer.bits", self.bits, low=1, high=24, integer=True)
        else:
            check_number("Quantizer.levels", self.levels, low=2, high=2 ** 24, integer=True)
        check_number("Quantizer.percentile", self.percentile, low=50.0, high=100.0, low_open=True)

    @property
    def n_levels(self) -> int:
        return int(2 ** self.bits) if self.bits is not None else int(self.levels)

    def with_bits(self, bits: int) -> "Quantizer":
        return replace(self, bits=int(bits), levels=None)


def quantize(y: Tensor, lo: Tensor | float, hi: Tensor | float, levels: int, *, ste: bool = False) -> Tensor:
    """Clip ``y`` to ``[lo, hi]`` and round to ``levels`` evenly spaced values.

    ``lo`` and ``hi`` broadcast against ``y``. With ``ste=True`` the gradient passes straight through inside the
    range (and is zero outside), for training with the quantiser in the loop.
    """
    step = (hi - lo) / (levels - 1)
    yc = torch.maximum(torch.minimum(y, hi), lo) if isinstance(lo, Tensor) else y.clamp(lo, hi)
    q = torch.round((yc - lo) / step) * step + lo
    return q + (yc - yc.detach()) if ste else q   # values exactly on the grid, gradient of the clip


def calibrate_range(values: Tensor, percentile: float) -> tuple[float, float]:
    """Range ``(lo, hi)`` covering the inner ``percentile`` of ``values`` (any shape)."""
    v = values.detach().reshape(-1).float()
    if v.numel() == 0:
        raise ConfigError("calibration data", 0, "at least one value to calibrate a converter range")
    if v.numel() > MAX_CALIBRATION_VALUES:
        v = v[:: v.numel() // MAX_CALIBRATION_VALUES + 1]
    v = v.cpu()
    p = percentile / 100.0
    hi = float(torch.quantile(v, p)) if v.numel() <= 16_000_000 else float(v.max())
    lo = 0.0 if float(v.min()) >= 0.0 else float(torch.quantile(v, 1.0 - p))
    if hi <= lo:
        hi = lo + max(abs(lo), 1.0) * 1e-6
    return lo, hi


@dataclass(frozen=True, kw_only=True)
class Periphery:
    """Converters around each analog layer.

    Parameters
    ----------
    dac : Quantizer, optional
        Input (DAC) quantisation, range calibrated per layer on the layer's inputs.
    adc : Quantizer, optional
        Output (ADC) quantisation of each analog signal (per layer and per bit slice), range calibrated on the
        nominal chip's pre-ADC values.
    output_noise : float >= 0
        Additive Gaussian noise on each analog signal before the ADC, drawn afresh per forward, with standard
        deviation ``output_noise * (hi - lo)`` of the signal's calibrated range.
    """

    dac: Quantizer | None = None
    adc: Quantizer | None = None
    output_noise: float = 0.0

    def __post_init__(self):
        for name in ("dac", "adc"):
            q = getattr(self, name)
            check(q is None or isinstance(q, Quantizer), f"Periphery.{name}", q, "a Quantizer or None")
        check_number("Periphery.output_noise", self.output_noise, low=0.0)

    @property
    def needs_calibration(self) -> bool:
        return self.dac is not None or self.adc is not None or self.output_noise > 0

    def with_knob(self, name: str, value) -> "Periphery | None":
        if name in ("adc_bits", "dac_bits"):
            which = name.split("_")[0]
            q = getattr(self, which)
            if q is None:
                raise ConfigError(name, value, f"a spec whose periphery has a {which.upper()} (it has none)")
            return replace(self, **{which: q.with_bits(value)})
        return None

    def to_dict(self) -> dict:
        out: dict = {"output_noise": self.output_noise}
        for name in ("dac", "adc"):
            q = getattr(self, name)
            if q is not None:
                out[name] = {k: v for k, v in to_dict(q).items() if v is not None}
        return out

    @classmethod
    def from_dict(cls, data: dict, where: str = "periphery") -> "Periphery":
        if not isinstance(data, dict):
            raise ConfigError(where, data, "a table with optional keys dac, adc, output_noise")
        unknown = sorted(set(data) - {"dac", "adc", "output_noise"})
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}", data[unknown[0]], "one of dac, adc, output_noise")
        kw = {}
        for name in ("dac", "adc"):
            if data.get(name) is not None:
                kw[name] = from_dict("quantizer", {"kind": "uniform", **data[name]}, f"{where}.{name}")
        try:
            return cls(output_noise=data.get("output_noise", 0.0), **kw)
        except ConfigError as err:
            raise ConfigError(f"{where}.{err.field.split('.')[-1]}", err.value, err.allowed) from None
