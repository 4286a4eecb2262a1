"""Phase-change memory (PCM) statistics: conductance-dependent programming noise, drift, 1/f read noise.

Sources (conductances normalised to ``G_max``; the fits were made at ``G_max = 25 uS``):

* Programming noise, Nandakumar et al., "Phase-change memory models for deep learning training and inference",
  ICECS 2019 (doi 10.1109/ICECS46596.2019.8964852), fit on a million-device doped-GST array (90 nm) after
  iterative program-and-verify: ``sigma_prog(G_T) = c0 + c1 g + c2 g^2`` in uS with ``g = G_T / G_max`` and
  ``(c0, c1, c2) = (0.26348, 1.9650, -1.1731)`` uS, i.e. 1.05 % of G_max at G_T = 0 rising to 4.2 % at G_max.
  These are the coefficients of IBM aihwkit's ``PCMLikeNoiseModel`` (``prog_coeff``), which cites that paper; the
  same model underlies Joshi et al., Nat. Commun. 11, 2473 (2020), doi 10.1038/s41467-020-16108-9.
* Drift ``G(t) = G(t0) (t / t0)^(-nu)`` for ``t >= t0``, ``t0 = 20 s`` (aihwkit ``t_0``), ``t`` the time after
  programming. Reads before ``t0`` (``0 < t < t0``) see the conductance at ``t0`` unchanged: the programming-noise
  fit describes the state at ``t0`` and the drift law is fitted from ``t0`` on, so no drift is extrapolated
  before it. aihwkit counts its ``t_inference`` from ``t0`` instead (its drift factor is
  ``((t_inference + t0) / t0)^(-nu)``): aihwkit's ``t_inference = tau`` is our ``t = tau + t0``.
  Two exponent laws:
  ``"constant"``: ``nu ~ N(nu_mean, nu_std)`` per device, default ``nu_mean = 0.031`` (the mean drift exponent
  this project quotes for Joshi et al. 2020) and ``nu_std = 0.008`` (ASSUMED: the floor of the Nandakumar
  ``sigma_nu(G)`` fit below, not a published value for that mean); ``"nandakumar"``: state-dependent
  ``mu_nu(g) = clip(-0.0155 ln g + 0.0244, 0.049, 0.1)``, ``sigma_nu(g) = clip(-0.0125 ln g - 0.0059, 0.008,
  0.045)`` (aihwkit's ``generate_drift_coefficients``), ``nu = |mu_nu + sigma_nu Z|``. Here ``g`` is the
  conductance the effect receives (after programming noise when that comes first); aihwkit evaluates the law at
  the target conductance.
  Drift compensation is not part of the device: a chip measures it, see
  :func:`anvm_stats.calibration.drift_sweep` (``compensation="global"``, a per-chip gain from a reference read).
* 1/f read noise accumulated to time t: ``sd = |G| Q_s(g) sqrt(ln((t + t_read) / (2 t_read)))`` with
  ``Q_s(g) = min(0.0088 / g^0.65, 0.2)`` (g floored at 1e-3) and ``t_read = 250 ns`` (aihwkit
  ``apply_drift_noise_to_conductance``, Nandakumar 2019): its sd grows like ``sqrt(log t)``. Modelled here as
  a ``phase="read"`` effect, drawn afresh at every forward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from ..errors import check, check_number
from ..hardware.effects import ONE_NORMAL, declared_draw
from ..hardware.registry import register

#: Nandakumar 2019 programming-noise polynomial (uS, ascending powers of G_T / G_max) at G_max = 25 uS
NANDAKUMAR_PROG_COEFFS = (0.26348, 1.9650, -1.1731)
NANDAKUMAR_G_MAX_US = 25.0
_DRIFT_MODELS = ("constant", "nandakumar")


def polynomial(g, coeffs) -> torch.Tensor:
    """``sum_i coeffs[i] g^i`` (Horner), elementwise on a tensor ``g``."""
    out = torch.zeros_like(g) + coeffs[-1]
    for c in reversed(coeffs[:-1]):
        out = out * g + c
    return out


def state_dependent_gaussian(g: torch.Tensor, sd: torch.Tensor, z: torch.Tensor, bounds, clip: bool) -> torch.Tensor:
    """``g + sd(g) * z``, clipped to the device window when ``clip``."""
    out = g + sd * z
    return out.clamp(bounds.g_min, bounds.g_max) if clip else out


@register("effect")
@dataclass(frozen=True, kw_only=True)
class PCMProgrammingNoise:
    """PCM programming error ``G = G_T + scale * sigma_prog(G_T) * Z`` (Nandakumar 2019 fit), sampled once.

    Parameters
    ----------
    coeffs : tuple of float
        ``sigma_prog`` polynomial in uS, ascending powers of ``G_T / G_max``.
    g_max_us : float > 0
        ``G_max`` of the fit (uS): ``sigma`` in normalised units is ``polynomial / g_max_us``.
    scale : float >= 0
        Multiplies sigma; sweep knob ``noise_level`` (1 = as published).
    clip : bool
        Clip to ``[g_min, g_max]``.
    """

    kind: ClassVar[str] = "pcm_programming"
    phase: ClassVar[str] = "program"
    coeffs: tuple = NANDAKUMAR_PROG_COEFFS
    g_max_us: float = NANDAKUMAR_G_MAX_US
    scale: float = 1.0
    clip: bool = True

    def __post_init__(self):
        object.__setattr__(self, "coeffs", tuple(float(c) for c in self.coeffs))
        check(len(self.coeffs) >= 1, "PCMProgrammingNoise.coeffs", self.coeffs, "at least one coefficient")
        check_number("PCMProgrammingNoise.g_max_us", self.g_max_us, low=0.0, low_open=True)
        check_number("PCMProgrammingNoise.scale", self.scale, low=0.0)
        check(isinstance(self.clip, bool), "PCMProgrammingNoise.clip", self.clip, "true or false")

    def sigma(self, g: torch.Tensor) -> torch.Tensor:
        """Normalised programming-noise sd at target ``g`` (before ``scale``), floored at 0."""
        return (polynomial(g.abs(), self.coeffs) / self.g_max_us).clamp(min=0.0)

    draw_kinds: ClassVar[dict] = ONE_NORMAL
    draw = declared_draw

    def apply(self, g, draws, bounds):
        return state_dependent_gaussian(g, self.sigma(g) * self.scale, draws["z"], bounds, self.clip)

    def with_knob(self, name, value):
        if name != "noise_level":
            return None
        check_number("noise_level", value, low=0.0)
        return replace(self, scale=float(value))

    @property
    def clips(self) -> bool:
        return self.clip


@register("effect")
@dataclass(frozen=True, kw_only=True)
class PCMDrift:
    """PCM conductance drift ``G(t) = G(t0) (t/t0)^(-nu)`` with a per-device exponent (see module docstring).

    Parameters
    ----------
    model : {"constant", "nandakumar"}
        ``"constant"``: ``nu = max(0, nu_mean + nu_std Z)``; ``"nandakumar"``: state-dependent mean and sd.
    nu_mean, nu_std : float >= 0
        Exponent statistics of the ``"constant"`` model.
    t0 : float > 0
        Time after programming from which the drift law holds (s); reads before it see no drift.
    t_inference : float > 0
        Time of inference after programming (s); sweep knob ``t_inference``.
    """

    kind: ClassVar[str] = "pcm_drift"
    phase: ClassVar[str] = "program"
    model: str = "constant"
    nu_mean: float = 0.031
    nu_std: float = 0.008
    t0: float = 20.0
    t_inference: float = 20.0

    def __post_init__(self):
        check(self.model in _DRIFT_MODELS, "PCMDrift.model", self.model, f"one of {_DRIFT_MODELS}")
        check_number("PCMDrift.nu_mean", self.nu_mean, low=0.0)
        check_number("PCMDrift.nu_std", self.nu_std, low=0.0)
        check_number("PCMDrift.t0", self.t0, low=0.0, low_open=True)
        check_number("PCMDrift.t_inference", self.t_inference, low=0.0, low_open=True)

    draw_kinds: ClassVar[dict] = ONE_NORMAL
    draw = declared_draw

    def exponent(self, g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Per-device drift exponent ``nu`` (shape of ``g``)."""
        if self.model == "constant":
            return (z * self.nu_std + self.nu_mean).clamp(min=0.0)
        lg = g.abs().clamp(min=1e-7).log()
        mu = (-0.0155 * lg + 0.0244).clamp(0.049, 0.1)
        sd = (-0.0125 * lg - 0.0059).clamp(0.008, 0.045)
        return (mu + sd * z).abs()

    def apply(self, g, draws, bounds):
        if self.t_inference <= self.t0:
            return g.clone()
        log_ratio = math.log(self.t_inference / self.t0)
        return g * torch.exp(self.exponent(g, draws["z"]) * -log_ratio)

    def with_knob(self, name, value):
        if name != "t_inference":
            return None
        check_number("t_inference", value, low=0.0, low_open=True)
        return replace(self, t_inference=float(value))


@register("effect")
@dataclass(frozen=True, kw_only=True)
class PCMReadNoise:
    """PCM 1/f read noise: ``G' = G + scale |G| Q_s(G) sqrt(ln((t + t_read)/(2 t_read))) Z``, fresh per read.

    Parameters
    ----------
    t_inference : float > 0
        Time after programming (s); sweep knob ``t_inference``.
    t_read : float > 0
        Read pulse duration of the 1/f fit (s).
    scale : float >= 0
        Multiplies the sd (1 = as published).
    """

    kind: ClassVar[str] = "pcm_read_noise"
    phase: ClassVar[str] = "read"
    t_inference: float = 20.0
    t_read: float = 250e-9
    scale: float = 1.0

    def __post_init__(self):
        check_number("PCMReadNoise.t_read", self.t_read, low=0.0, low_open=True)
        check_number("PCMReadNoise.t_inference", self.t_inference, low=self.t_read)
        check_number("PCMReadNoise.scale", self.scale, low=0.0)

    def relative_sd(self, g: torch.Tensor) -> torch.Tensor:
        """``Q_s(g) sqrt(ln((t + t_read)/(2 t_read)))``: the sd relative to ``|G|`` at this time."""
        q_s = (0.0088 / g.abs().clamp(min=1e-3).pow(0.65)).clamp(max=0.2)
        return q_s * math.sqrt(math.log((self.t_inference + self.t_read) / (2.0 * self.t_read)))

    draw_kinds: ClassVar[dict] = ONE_NORMAL
    draw = declared_draw

    def apply(self, g, draws, bounds):
        return g + g.abs() * self.relative_sd(g) * (self.scale * draws["z"])

    def read_sd(self, g, bounds):
        """Standard deviation of each device's Gaussian read fluctuation at conductance ``g`` (drawn per MVM)."""
        return g.abs() * self.relative_sd(g) * self.scale

    def with_knob(self, name, value):
        if name != "t_inference":
            return None
        check_number("t_inference", value, low=self.t_read)
        return replace(self, t_inference=float(value))
