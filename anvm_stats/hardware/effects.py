"""Device effects on normalised conductance.

Conductances are normalised so the device's maximum is 1 and its minimum is ``g_min`` (the off/on ratio,
:class:`Bounds`). Every effect is a frozen dataclass with two pure methods:

``draw(n, generator, device=, dtype=) -> dict[str, Tensor]``
    the base randomness of one chip instance, shape ``[n]`` each, drawn from ``generator`` only. What is drawn
    never depends on the effect's parameter values, so a sweep over sigma, fault rate or time reuses the same
    draws at every point (common random numbers) and pays for sampling once.
``apply(g, draws, bounds) -> Tensor``
    the conductances after the effect; ``g`` and every draw have shape ``[..., n]`` (usually ``[K, n]`` for K
    instances). Must not modify ``g`` in place.

Optionally, ``draw_kinds`` (name -> one of :data:`DRAW_KINDS`) declares that ``draw`` returns exactly those
primitive draws in that order; the sampler then writes them directly into its buffers.

``phase`` is ``"program"`` (sampled once when the chip is programmed and then held) or ``"read"`` (drawn afresh
at every forward pass). ``with_knob(name, value)`` returns a copy with a sweep knob set, or ``None`` when the
effect has no such knob. User effects follow the same protocol and join with ``@register("effect")``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar, Mapping, Protocol, runtime_checkable

import torch

from ..errors import ConfigError, check, check_number
from .registry import register

Tensor = torch.Tensor


@dataclass(frozen=True)
class Bounds:
    """Normalised conductance window ``[g_min, g_max]`` (``g_max`` is 1 by convention)."""

    g_min: float = 0.0
    g_max: float = 1.0

    @property
    def span(self) -> float:
        """``g_max - g_min``: the device's dynamic range."""
        return self.g_max - self.g_min


@runtime_checkable
class DeviceEffect(Protocol):
    """What every device effect provides (see module docstring)."""

    kind: ClassVar[str]
    phase: ClassVar[str]

    def draw(self, n: int, generator: torch.Generator, *, device: torch.device, dtype: torch.dtype,
             ) -> dict[str, Tensor]: ...

    def apply(self, g: Tensor, draws: Mapping[str, Tensor], bounds: Bounds) -> Tensor: ...

    def with_knob(self, name: str, value: float) -> "DeviceEffect | None": ...


_DISTRIBUTIONS = ("gaussian", "uniform", "lognormal")
_UNITS = ("range", "half_range", "state")


#: primitive base draws an effect may declare in ``draw_kinds`` (name -> kind); the sampler then writes them
#: straight into its per-chunk buffers (no copies), in declaration order, from the instance's generator
DRAW_KINDS = ("normal", "uniform", "centered_uniform")


def fill_standard(kind: str, out: Tensor, generator: torch.Generator) -> Tensor:
    """Fill ``out`` (contiguous) in place: ``"normal"`` N(0,1), ``"uniform"`` U[0,1), ``"centered_uniform"``
    uniform with zero mean and unit variance (on [-sqrt3, sqrt3])."""
    if kind == "normal":
        return torch.randn(out.shape, generator=generator, out=out)
    torch.rand(out.shape, generator=generator, out=out)
    if kind == "centered_uniform":
        out.mul_(2.0 * math.sqrt(3.0)).sub_(math.sqrt(3.0))
    return out


def draw_standard(kinds: Mapping[str, str], n: int, generator: torch.Generator, device, dtype) -> dict[str, Tensor]:
    """``draw`` for effects declaring ``draw_kinds``: one fresh ``[n]`` tensor per name, in order."""
    return {name: fill_standard(kind, torch.empty(n, device=device, dtype=dtype), generator)
            for name, kind in kinds.items()}


#: ``draw_kinds`` of an effect driven by one standard normal per device
ONE_NORMAL = {"z": "normal"}


def declared_draw(self, n: int, generator: torch.Generator, *, device, dtype) -> dict[str, Tensor]:
    """A ready-made ``draw`` method for effects with a ``draw_kinds`` attribute (``draw = declared_draw``)."""
    return draw_standard(self.draw_kinds, n, generator, device, dtype)


def _unit(relative_to: str, g: Tensor, bounds: Bounds) -> Tensor | float:
    if relative_to == "range":
        return bounds.span
    if relative_to == "half_range":
        return 0.5 * bounds.span
    return g


@register("effect")
@dataclass(frozen=True, kw_only=True)
class ProgrammingNoise:
    """Programming error, sampled once per chip: ``g' = g + unit * (mu + sigma * Z)``.

    Parameters
    ----------
    sigma : float >= 0
        Standard deviation in units of ``relative_to``.
    mu : float
        Mean shift (device bias) in the same units.
    relative_to : {"range", "half_range", "state"}
        ``"range"``: state-independent, unit = g_max - g_min (Xiao et al. a_ind);
        ``"half_range"``: unit = half the device range (paper 1, whose range_l is a half-range);
        ``"state"``: state-proportional, unit = g (Xiao et al. a_prop).
    distribution : {"gaussian", "uniform", "lognormal"}
        Shape of Z (unit variance). ``"lognormal"`` is multiplicative: ``g' = g exp(sigma Z - sigma^2/2) + unit mu``
        (mean-preserving, always positive).
    clip : bool
        Clip to ``[g_min, g_max]`` (physical devices); paper 1's model is unclipped.
    """

    kind: ClassVar[str] = "programming_noise"
    phase: ClassVar[str] = "program"
    sigma: float = 0.0
    mu: float = 0.0
    relative_to: str = "range"
    distribution: str = "gaussian"
    clip: bool = True

    def __post_init__(self):
        check_number("ProgrammingNoise.sigma", self.sigma, low=0.0)
        check_number("ProgrammingNoise.mu", self.mu)
        check(self.relative_to in _UNITS, "ProgrammingNoise.relative_to", self.relative_to, f"one of {_UNITS}")
        check(self.distribution in _DISTRIBUTIONS, "ProgrammingNoise.distribution", self.distribution,
              f"one of {_DISTRIBUTIONS}")
        check(isinstance(self.clip, bool), "ProgrammingNoise.clip", self.clip, "true or false")

    @property
    def draw_kinds(self) -> dict[str, str]:
        return {"z": "centered_uniform" if self.distribution == "uniform" else "normal"}

    draw = declared_draw

    def apply(self, g, draws, bounds):
        z = draws["z"]
        unit = _unit(self.relative_to, g, bounds)
        if self.distribution == "lognormal":
            out = g * torch.exp(z * self.sigma - 0.5 * self.sigma ** 2)
            if self.mu:
                out = out + unit * self.mu
        elif isinstance(unit, float):
            out = torch.add(g, z, alpha=unit * self.sigma)
            if self.mu:
                out.add_(unit * self.mu)
        else:
            out = g + unit * (z * self.sigma + self.mu)
        return out.clamp_(bounds.g_min, bounds.g_max) if self.clip else out

    def with_knob(self, name, value):
        return replace(self, sigma=float(value)) if name == "noise_level" else None


@register("effect")
@dataclass(frozen=True, kw_only=True)
class ConductanceLevels:
    """Finite programmable levels: ``g`` snaps to the nearest of ``levels`` evenly spaced values in [g_min, g_max].

    Deterministic (no draws). Put it before :class:`ProgrammingNoise` to program to a level and then miss it.
    """

    kind: ClassVar[str] = "levels"
    phase: ClassVar[str] = "program"
    levels: int = 16

    def __post_init__(self):
        check_number("ConductanceLevels.levels", self.levels, low=2, integer=True)

    draw_kinds: ClassVar[dict] = {}

    def draw(self, n, generator, *, device, dtype):
        return {}

    def apply(self, g, draws, bounds):
        step = bounds.span / (self.levels - 1)
        idx = torch.round((g - bounds.g_min) / step).clamp_(0, self.levels - 1)
        # the clamp keeps the top level exactly at g_max (idx * step + g_min may round one ulp above it)
        return idx.mul_(step).add_(bounds.g_min).clamp_(bounds.g_min, bounds.g_max)

    def with_knob(self, name, value):
        return None


@register("effect")
@dataclass(frozen=True, kw_only=True)
class StuckAt:
    """Stuck-at faults: a cell is stuck at g_min with probability ``p_off`` and at g_max with ``p_on``.

    One uniform draw ``u`` per device: stuck off where ``u < p_off``, stuck on where ``u >= 1 - p_on``; raising a
    rate in a sweep therefore only adds faulty cells (nested fault sets, paired comparisons).
    The sweep knob ``stuck_at_rate`` sets the total rate and keeps the off:on ratio (1:1 when both are 0).
    """

    kind: ClassVar[str] = "stuck_at"
    phase: ClassVar[str] = "program"
    p_off: float = 0.0
    p_on: float = 0.0

    def __post_init__(self):
        check_number("StuckAt.p_off", self.p_off, low=0.0, high=1.0)
        check_number("StuckAt.p_on", self.p_on, low=0.0, high=1.0)
        check(self.p_off + self.p_on <= 1.0, "StuckAt.p_off + p_on", self.p_off + self.p_on, "at most 1")

    draw_kinds: ClassVar[dict] = {"u": "uniform"}
    draw = declared_draw

    def apply(self, g, draws, bounds):
        u = draws["u"]
        out = torch.where(u < self.p_off, torch.full_like(g, bounds.g_min), g)
        return torch.where(u >= 1.0 - self.p_on, torch.full_like(g, bounds.g_max), out)

    def with_knob(self, name, value):
        if name != "stuck_at_rate":
            return None
        check_number("stuck_at_rate", value, low=0.0, high=1.0)
        total = self.p_off + self.p_on
        frac_off = 0.5 if total == 0 else self.p_off / total
        return replace(self, p_off=float(value) * frac_off, p_on=float(value) * (1.0 - frac_off))


def t_inference_knob(effect, name: str, value):
    """``with_knob`` of a drift effect: the sweep knob ``t_inference`` (seconds, >= the effect's ``t0``) gives a
    copy read at that time; any other knob gives None (not this effect's)."""
    if name != "t_inference":
        return None
    check_number("t_inference", value, low=effect.t0)
    return replace(effect, t_inference=float(value))


@register("effect")
@dataclass(frozen=True, kw_only=True)
class Drift:
    """Conductance drift ``G(t) = G0 (t / t0)^(-nu)`` with ``nu ~ N(nu_mean, nu_std)`` per device, floored at 0.

    Parameters
    ----------
    nu_mean, nu_std : float >= 0
        Drift exponent statistics (PCM: about 0.05 and 0.02; RRAM: near 0).
    t0 : float > 0
        Time of the reference read after programming (s).
    t_inference : float >= t0
        Time of inference (s); sweep knob ``t_inference``.
    """

    kind: ClassVar[str] = "drift"
    phase: ClassVar[str] = "program"
    nu_mean: float = 0.05
    nu_std: float = 0.0
    t0: float = 1.0
    t_inference: float = 1.0

    def __post_init__(self):
        check_number("Drift.nu_mean", self.nu_mean, low=0.0)
        check_number("Drift.nu_std", self.nu_std, low=0.0)
        check_number("Drift.t0", self.t0, low=0.0, low_open=True)
        check_number("Drift.t_inference", self.t_inference, low=self.t0)

    draw_kinds: ClassVar[dict] = ONE_NORMAL
    draw = declared_draw

    def exponent(self, draws: Mapping[str, Tensor]) -> Tensor:
        """Per-device drift exponent nu (shape of the draws)."""
        return (draws["z"] * self.nu_std + self.nu_mean).clamp_(min=0.0)

    def apply(self, g, draws, bounds):
        if self.t_inference == self.t0:
            return g.clone()
        log_ratio = math.log(self.t_inference / self.t0)
        return g * torch.exp(self.exponent(draws) * -log_ratio)

    with_knob = t_inference_knob


@register("effect")
@dataclass(frozen=True, kw_only=True)
class ReadNoise:
    """Read (cycle-to-cycle) noise, drawn afresh at every forward pass: ``g' = g + unit * sigma * Z``.

    ``relative_to`` as in :class:`ProgrammingNoise` ("range" or "state"). Not clipped: it is a current
    fluctuation, not a stored state.
    """

    kind: ClassVar[str] = "read_noise"
    phase: ClassVar[str] = "read"
    sigma: float = 0.0
    relative_to: str = "range"

    def __post_init__(self):
        check_number("ReadNoise.sigma", self.sigma, low=0.0)
        check(self.relative_to in _UNITS, "ReadNoise.relative_to", self.relative_to, f"one of {_UNITS}")

    draw_kinds: ClassVar[dict] = ONE_NORMAL
    draw = declared_draw

    def apply(self, g, draws, bounds):
        return g + _unit(self.relative_to, g, bounds) * self.sigma * draws["z"]

    def read_sd(self, g, bounds):
        """Standard deviation of the zero-mean Gaussian fluctuation of each device read at conductance ``g``
        (any shape; a float when it does not depend on ``g``): the engine draws it per MVM in the output domain."""
        unit = _unit(self.relative_to, g, bounds)
        return unit * self.sigma if isinstance(unit, float) else unit.abs() * self.sigma

    def with_knob(self, name, value):
        return None


def validate_effect(effect: object, where: str = "effect") -> None:
    """Check that ``effect`` follows the :class:`DeviceEffect` protocol.

    Raises
    ------
    ConfigError
        Naming the missing member or a bad ``phase``.
    """
    for attr in ("kind", "phase", "draw", "apply", "with_knob"):
        if not hasattr(effect, attr):
            raise ConfigError(f"{where}.{attr}", None, "a DeviceEffect member (see anvm_stats.hardware.effects)")
    if effect.phase not in ("program", "read"):
        raise ConfigError(f"{where}.phase", effect.phase, "'program' or 'read'")
