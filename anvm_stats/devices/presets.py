"""The one registry of device presets: each a function returning a :class:`~anvm_stats.hardware.HardwareSpec`,
registered under a name with its literature source.

Every docstring names its source and the parameters taken from it, and says plainly which values are assumed.
``PRESETS`` maps a name to a :class:`Preset` (all callable without arguments); :func:`preset` builds one by name
(as TOML study files and ``anvm-stats presets`` do).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, replace
from typing import Callable, ClassVar

import numpy as np
import torch

from ..errors import ConfigError, check, check_number
from ..hardware.effects import ONE_NORMAL, ConductanceLevels, ProgrammingNoise, StuckAt, declared_draw
from ..hardware.mapping import DifferentialMapping, OffsetMapping
from ..hardware.periphery import Periphery, Quantizer
from ..hardware.registry import register
from ..hardware.spec import HardwareSpec
from .pcm import PCMDrift, PCMProgrammingNoise, PCMReadNoise, polynomial, state_dependent_gaussian

#: Wan et al., Nature 608, 504 (2022) (NeuRRAM) as fitted in IBM aihwkit's ``ReRamWan2022NoiseModel``:
#: sd of G - G_target in uS, ascending powers of G_target / 40 uS, at 1 s, 1 day and 2 days after programming.
NEURRAM_TIMES = (1.0, 86400.0, 172800.0)
NEURRAM_COEFFS = (
    (0.348, 16.030, -43.853, 45.393, -16.815),
    (0.701, 22.086, -50.773, 47.095, -16.458),
    (0.782, 20.274, -43.507, 37.062, -11.934),
)
NEURRAM_G_MAX_US = 40.0


@register("effect")
@dataclass(frozen=True, kw_only=True)
class NeuRRAMNoise:
    """RRAM conductance error relative to the target, ``G = G_T + scale * sigma(G_T, t) * Z`` (one draw per chip).

    ``sigma(G_T, t)`` is a polynomial in ``G_T / G_max`` fitted at the times ``times``; between them it is
    interpolated linearly in ``log t`` (held constant outside), an interpolation of ours, not of the source.

    Parameters
    ----------
    times : tuple of float
        Fit times (s), increasing.
    coeffs : tuple of tuple
        One sd polynomial (uS, ascending powers) per time.
    g_max_us : float
        ``G_max`` of the fit: ``sigma`` in normalised units is ``polynomial / g_max_us``.
    t_inference : float > 0
        Time after programming (s); sweep knob ``t_inference``.
    scale : float >= 0
        Multiplies sigma; sweep knob ``noise_level`` (1 = as published).
    clip : bool
        Clip to the window.
    """

    kind: ClassVar[str] = "neurram_rram"
    phase: ClassVar[str] = "program"
    times: tuple = NEURRAM_TIMES
    coeffs: tuple = NEURRAM_COEFFS
    g_max_us: float = NEURRAM_G_MAX_US
    t_inference: float = 1.0
    scale: float = 1.0
    clip: bool = True

    def __post_init__(self):
        object.__setattr__(self, "times", tuple(float(t) for t in self.times))
        object.__setattr__(self, "coeffs", tuple(tuple(float(c) for c in row) for row in self.coeffs))
        check(len(self.times) >= 1 and len(self.coeffs) == len(self.times), "NeuRRAMNoise.coeffs",
              f"{len(self.coeffs)} rows", f"one polynomial per time ({len(self.times)})")
        check(all(t > 0 for t in self.times) and bool(np.all(np.diff(self.times) > 0)), "NeuRRAMNoise.times",
              self.times, "positive, strictly increasing")
        check_number("NeuRRAMNoise.g_max_us", self.g_max_us, low=0.0, low_open=True)
        check_number("NeuRRAMNoise.t_inference", self.t_inference, low=0.0, low_open=True)
        check_number("NeuRRAMNoise.scale", self.scale, low=0.0)
        check(isinstance(self.clip, bool), "NeuRRAMNoise.clip", self.clip, "true or false")

    def sigma(self, g: torch.Tensor) -> torch.Tensor:
        """Normalised sd at target ``g`` and time ``t_inference`` (before ``scale``), floored at 0."""
        logs = np.log(self.times)
        lt = math.log(self.t_inference)
        k = int(np.clip(np.searchsorted(logs, lt), 1, max(1, len(logs) - 1)))
        if len(logs) == 1 or lt <= logs[0]:
            rows, w = (0, 0), 0.0
        elif lt >= logs[-1]:
            rows, w = (len(logs) - 1, len(logs) - 1), 0.0
        else:
            rows, w = (k - 1, k), (lt - logs[k - 1]) / (logs[k] - logs[k - 1])
        x = g.abs()
        a = polynomial(x, self.coeffs[rows[0]])
        b = polynomial(x, self.coeffs[rows[1]])
        return ((1.0 - w) * a + w * b).clamp(min=0.0) / self.g_max_us

    draw_kinds: ClassVar[dict] = ONE_NORMAL
    draw = declared_draw

    def apply(self, g, draws, bounds):
        return state_dependent_gaussian(g, self.sigma(g) * self.scale, draws["z"], bounds, self.clip)

    def with_knob(self, name, value):
        if name == "t_inference":
            check_number("t_inference", value, low=0.0, low_open=True)
            return replace(self, t_inference=float(value))
        if name == "noise_level":
            check_number("noise_level", value, low=0.0)
            return replace(self, scale=float(value))
        return None

    @property
    def clips(self) -> bool:
        return self.clip


def ideal() -> HardwareSpec:
    """No device effects and ideal periphery: the analog output equals the float output (a reference chip)."""
    return HardwareSpec(name="ideal")


def paper1(sigma: float = 0.05, mu: float = 0.0) -> HardwareSpec:
    """Wan, Wang, Zhou, Iyer, Roychowdhury, arXiv 2008.02400 (2020) / ACM JETC 2022 (doi 10.1145/3502721).

    ``W~ -> W~ + range_l (sigma N(0,1) + mu)`` on ``W~ = [W, b/s]``, ``range_l = (max W~ - min W~) / 2``,
    unclipped, sampled once per chip: implemented exactly as an asymmetric offset mapping of
    ``[min W~, max W~]`` onto the device range with unclipped Gaussian noise in units of half the range, the bias
    as an extra column. Published test points: sigma in {0.02, 0.05, 0.08, 0.1, 0.12, 0.15, 0.18, 0.2}; mu in
    {+-0.002, +-0.005, +-0.01, +-0.02, +-0.04}. Sweep knob ``noise_level`` = sigma.
    """
    return HardwareSpec(name=f"paper1(sigma={sigma}, mu={mu})",
                        mapping=OffsetMapping(granularity="layer", symmetric=False),
                        effects=(ProgrammingNoise(sigma=sigma, mu=mu, relative_to="half_range", clip=False),),
                        bias="column")


def _xiao(sigma: float, *, proportional: bool, state_proportional: bool, adc_bits: int | None,
          g_min: float) -> HardwareSpec:
    return HardwareSpec(name=f"xiao(sigma={sigma}, {'differential' if proportional else 'offset'})",
                        mapping=DifferentialMapping() if proportional else OffsetMapping(),
                        effects=(ProgrammingNoise(sigma=sigma, relative_to="state" if state_proportional else "range"),),
                        periphery=Periphery(adc=None if adc_bits is None else Quantizer(bits=adc_bits, percentile=99.99)),
                        g_min=g_min)


def xiao_state_independent(a_ind: float = 0.05, *, proportional: bool = True, adc_bits: int | None = 8,
                           g_min: float = 0.0) -> HardwareSpec:
    """Xiao, Feinberg, Bennett, Cardwell, Agarwal, Marinella, IEEE CAS Magazine 2022 (arXiv 2109.01262).

    State-independent programming error ``dG ~ N(0, a_ind G_max)``, clipped to ``[G_min, G_max]``, sampled once;
    differential (proportional) mapping by default, offset mapping with ``proportional=False``; ADC of
    ``adc_bits`` whose range covers the inner 99.98 % of calibration outputs (as in the paper). The paper sweeps
    ``a_ind``; the default 0.05 is an illustrative point, not a published operating point. ``g_min`` (off/on
    ratio) is a free choice here (0 by default). Sweep knob ``noise_level`` = ``a_ind``.
    """
    return _xiao(a_ind, proportional=proportional, state_proportional=False, adc_bits=adc_bits, g_min=g_min)


def xiao_state_proportional(a_prop: float = 0.05, *, proportional: bool = True, adc_bits: int | None = 8,
                            g_min: float = 0.0) -> HardwareSpec:
    """Xiao et al., IEEE CAS Magazine 2022 (arXiv 2109.01262): state-proportional error ``dG ~ N(0, a_prop G)``.

    As :func:`xiao_state_independent` otherwise (clipped, sampled once, 8-bit ADC over the inner 99.98 %). The
    default ``a_prop = 0.05`` is illustrative (the paper sweeps it). Sweep knob ``noise_level`` = ``a_prop``.
    """
    return _xiao(a_prop, proportional=proportional, state_proportional=True, adc_bits=adc_bits, g_min=g_min)


def rram_charan(*, levels: int = 10, variation: float = 0.5, p_stuck_off: float = 0.01,
                p_stuck_on: float = 0.01) -> HardwareSpec:
    """Charan et al., IEEE JXCDC 2020 (doi 10.1109/JXCDC.2020.2987605): measured 65 nm RRAM.

    Published: 10 conductance levels and 50 % device-to-device variation (read here as a state-proportional sd of
    0.5 G of the programmed level), plus stuck-at faults. ASSUMED: the stuck-at rates (1 % stuck at G_min and 1 %
    at G_max; the rates are not given in this project's references) and the differential mapping.
    """
    return HardwareSpec(name=f"rram_charan(levels={levels}, variation={variation})",
                        mapping=DifferentialMapping(),
                        effects=(ConductanceLevels(levels=levels),
                                 ProgrammingNoise(sigma=variation, relative_to="state"),
                                 StuckAt(p_off=p_stuck_off, p_on=p_stuck_on)))

def _pcm(name: str, drift_model: str, t_inference: float, read_noise: bool, g_min: float) -> HardwareSpec:
    """PCM in a differential pair: programming noise, drift with ``drift_model``, optional 1/f read noise."""
    effects = [PCMProgrammingNoise(), PCMDrift(model=drift_model, t_inference=t_inference)]
    if read_noise:
        effects.append(PCMReadNoise(t_inference=t_inference))
    return HardwareSpec(name=f"{name}(t={t_inference:g}s)", mapping=DifferentialMapping(),
                        effects=tuple(effects), g_min=g_min)


def pcm_joshi2020(*, t_inference: float = 3600.0, read_noise: bool = True, g_min: float = 0.0) -> HardwareSpec:
    """PCM in a differential pair (Joshi et al., Nat. Commun. 11, 2473 (2020), doi 10.1038/s41467-020-16108-9,
    with the statistical PCM model of Nandakumar et al., ICECS 2019, doi 10.1109/ICECS46596.2019.8964852).

    Effects (see :mod:`anvm_stats.devices.pcm` for the formulas and where each number comes from):
    programming noise ``sigma_prog(G_T) = 0.26348 + 1.9650 g - 1.1731 g^2`` uS at ``G_max = 25 uS``
    (:class:`PCMProgrammingNoise`); drift ``(t/t0)^-nu`` with ``t0 = 20 s`` and ``nu ~ N(0.031, 0.008)`` per device,
    one exponent law for every state (the sd 0.008 is ASSUMED; :func:`pcm_nandakumar2019` has the state-dependent
    law); 1/f read noise with sd ``|G| min(0.0088 g^-0.65, 0.2) sqrt(ln((t + 250 ns)/(500 ns)))`` drawn at every
    read (:class:`PCMReadNoise`). ``g_min = 0`` (PCM RESET state taken as 0 conductance, as in aihwkit) is an
    assumption. No drift compensation: the chip's global compensation is
    ``anvm_stats.calibration.drift_sweep(..., compensation="global")``. Sweep knobs: ``t_inference`` (s after
    programming, > 0; no drift before ``t0 = 20 s``) and ``noise_level`` (programming-noise scale, 1 = published).
    """
    return _pcm("pcm_joshi2020", "constant", t_inference, read_noise, g_min)


#: where :func:`pcm_nandakumar2019` differs from aihwkit's PCMLikeNoiseModel (also its registry source string)
PCM_NANDAKUMAR_VS_AIHWKIT = (
    "differs from aihwkit 1.2 PCMLikeNoiseModel in: t = time after programming (aihwkit t_inference = t - 20 s; "
    "no drift before t0); nu drawn from the programmed, not the target, conductance; 1/f read noise sd "
    "|G(t)| Q_s(G(t)) from the drifted conductance (aihwkit: |G(t)| Q_s(G_programmed)), drawn at every read and "
    "not clipped at 0 (aihwkit: once per drift_analog_weights, clipped at 0); programming noise clipped to "
    "[0, G_max] (aihwkit: at 0 only); one weight scale per layer (aihwkit: per tile); the global compensation's "
    "reference reads are free of read noise (aihwkit's read at t includes it)")


def pcm_nandakumar2019(*, t_inference: float = 3600.0, read_noise: bool = True, g_min: float = 0.0
                       ) -> HardwareSpec:
    """PCM with the state-dependent drift law of Nandakumar et al., ICECS 2019, doi
    10.1109/ICECS46596.2019.8964852, as implemented in IBM aihwkit's ``PCMLikeNoiseModel``.

    The programming noise and 1/f read noise of :func:`pcm_joshi2020`; drift ``(t/t0)^-nu``, ``t0 = 20 s``, with
    ``nu = |mu_nu(g) + sigma_nu(g) Z|``, ``mu_nu(g) = clip(-0.0155 ln g + 0.0244, 0.049, 0.1)``,
    ``sigma_nu(g) = clip(-0.0125 ln g - 0.0059, 0.008, 0.045)`` (:class:`PCMDrift` ``model="nandakumar"``).
    Where ours differs from aihwkit: see :data:`PCM_NANDAKUMAR_VS_AIHWKIT`. ``g_min = 0`` as in aihwkit. No drift
    compensation in the device (``drift_sweep(..., compensation="global")`` measures it per chip). Sweep knobs:
    ``t_inference`` (s after programming, > 0; no drift before ``t0``) and ``noise_level``.
    """
    return _pcm("pcm_nandakumar2019", "nandakumar", t_inference, read_noise, g_min)


def neurram_rram(*, t_inference: float = 1.0, g_min: float = 1.0 / 40.0) -> HardwareSpec:
    """NeuRRAM-style RRAM: Wan et al., "A compute-in-memory chip based on resistive random-access memory",
    Nature 608, 504-512 (2022), doi 10.1038/s41586-022-04992-8.

    Published statistics as fitted by IBM aihwkit (``ReRamWan2022NoiseModel``, "estimated from the published
    figures"): the sd of ``G - G_target`` is a 4th-order polynomial in ``G_target / 40 uS`` at 1 s, 1 day and
    2 days after programming (coefficients in ``NEURRAM_COEFFS``; e.g. at 1 s: 0.35 uS at G=0, 2.0 uS at
    mid-range, 1.1 uS at G_max). ASSUMED: ``G_max = 40 uS`` with ``g_min = 1/40`` (a 1 uS low state), the
    differential mapping, no stuck cells and no separate read noise (the source has none; aihwkit suggests ~1 %
    additive read noise), and log-time interpolation between the fitted times (:class:`NeuRRAMNoise`).
    Sweep knobs: ``t_inference`` (s) and ``noise_level`` (noise scale, 1 = published).
    """
    return HardwareSpec(name=f"neurram_rram(t={t_inference:g}s)", mapping=DifferentialMapping(),
                        effects=(NeuRRAMNoise(t_inference=t_inference),), g_min=g_min)


@dataclass(frozen=True)
class Preset:
    """One registered preset: ``factory(**args) -> HardwareSpec`` and the literature it comes from."""

    name: str
    factory: Callable[..., HardwareSpec]
    source: str

    def __call__(self, *args, **kwargs) -> HardwareSpec:
        return self.factory(*args, **kwargs)

    @property
    def parameters(self) -> tuple[str, ...]:
        """Keyword arguments the factory takes (the ``args`` a TOML preset table may give)."""
        return tuple(inspect.signature(self.factory).parameters)


#: every preset, by name (each callable without arguments)
PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("ideal", ideal, "no device effects (reference)"),
    Preset("paper1", paper1, "Wan et al., arXiv 2008.02400 (2020) / ACM JETC 2022, doi 10.1145/3502721"),
    Preset("xiao_state_independent", xiao_state_independent,
           "Xiao et al., IEEE CAS Magazine 2022, arXiv 2109.01262 (state-independent error)"),
    Preset("xiao_state_proportional", xiao_state_proportional,
           "Xiao et al., IEEE CAS Magazine 2022, arXiv 2109.01262 (state-proportional error)"),
    Preset("rram_charan", rram_charan, "Charan et al., IEEE JXCDC 2020, doi 10.1109/JXCDC.2020.2987605"),
    Preset("pcm_joshi2020", pcm_joshi2020,
           "Joshi et al., Nat. Commun. 11, 2473 (2020), doi 10.1038/s41467-020-16108-9; Nandakumar et al., "
           "ICECS 2019"),
    Preset("pcm_nandakumar2019", pcm_nandakumar2019,
           "Nandakumar et al., ICECS 2019, doi 10.1109/ICECS46596.2019.8964852 (state-dependent drift, as aihwkit "
           "PCMLikeNoiseModel); " + PCM_NANDAKUMAR_VS_AIHWKIT),
    Preset("neurram_rram", neurram_rram,
           "Wan et al., Nature 608, 504 (2022), doi 10.1038/s41586-022-04992-8 (aihwkit ReRamWan2022NoiseModel fit)"),
)}


def preset(name: str, *args, **kwargs) -> HardwareSpec:
    """The spec of the preset ``name`` built with the factory's arguments, e.g. ``preset("paper1", sigma=0.05)``.

    Raises
    ------
    ConfigError
        For a name not in :data:`PRESETS` (the error lists them).
    """
    if name not in PRESETS:
        raise ConfigError("preset", name, f"one of {sorted(PRESETS)}")
    return PRESETS[name](*args, **kwargs)
