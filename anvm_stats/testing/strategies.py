"""Hypothesis strategies for property tests of device models, mappings and specs.

All values are valid by construction: effects are built-in (and :mod:`anvm_stats.devices`) effects with
parameters inside their documented ranges, specs validate, conductances lie in their window.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ..devices import EmpiricalDevice, NeuRRAMNoise, PCMDrift, PCMProgrammingNoise, PCMReadNoise
from ..hardware import (
    BitSlicedMapping, Bounds, ConductanceLevels, DifferentialMapping, Drift, HardwareSpec, OffsetMapping, Periphery,
    ProgrammingNoise, Quantizer, ReadNoise, StuckAt,
)


def _finite(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


@st.composite
def weights(draw, shape=None, *, max_side: int = 8, scale: float = 1.0, dtype=torch.float32) -> torch.Tensor:
    """A weight matrix ``[out, in]`` (``shape`` or sides 1..``max_side``) of finite values in ``[-scale, scale]``,
    sometimes with exact zeros and repeated values (edge cases of mappings)."""
    if shape is None:
        shape = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
    elements = st.one_of(_finite(-scale, scale), st.just(0.0), st.sampled_from([-scale, scale]))
    arr = draw(hnp.arrays(np.float64, shape, elements=elements))
    return torch.as_tensor(arr, dtype=dtype)


@st.composite
def bounds(draw, max_g_min: float = 0.5) -> Bounds:
    """A conductance window ``[g_min, 1]`` with ``g_min`` in ``[0, max_g_min]``."""
    return Bounds(g_min=draw(st.one_of(st.just(0.0), _finite(0.0, max_g_min))), g_max=1.0)


@st.composite
def conductances(draw, n=None, window: Bounds | None = None, *, max_n: int = 64,
                 dtype=torch.float64) -> torch.Tensor:
    """A vector ``[n]`` of conductances inside ``window`` (default ``[0, 1]``), edges included."""
    b = window or Bounds()
    n = n if n is not None else draw(st.integers(1, max_n))
    elements = st.one_of(_finite(b.g_min, b.g_max), st.sampled_from([b.g_min, b.g_max]))
    return torch.as_tensor(draw(hnp.arrays(np.float64, (n,), elements=elements)), dtype=dtype)


def _programming_noise():
    return st.builds(ProgrammingNoise, sigma=_finite(0.0, 0.3), mu=_finite(-0.05, 0.05),
                     relative_to=st.sampled_from(["range", "half_range", "state"]),
                     distribution=st.sampled_from(["gaussian", "uniform", "lognormal"]), clip=st.booleans())


@st.composite
def _stuck_at(draw):
    p_off = draw(_finite(0.0, 0.3))
    return StuckAt(p_off=p_off, p_on=draw(_finite(0.0, 0.3)))


@st.composite
def _drift(draw):
    t0 = draw(_finite(0.1, 100.0))
    return Drift(nu_mean=draw(_finite(0.0, 0.1)), nu_std=draw(_finite(0.0, 0.05)), t0=t0,
                 t_inference=t0 * draw(_finite(1.0, 1e6)))


@st.composite
def empirical_devices(draw, *, per_level: int = 200) -> EmpiricalDevice:
    """An :class:`~anvm_stats.devices.EmpiricalDevice` fitted to a small synthetic table: 2..8 levels,
    state-dependent Gaussian error, a few stuck cells."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    levels = np.linspace(0.1, 0.9, draw(st.integers(2, 8)))
    a, b = draw(_finite(0.0, 0.02)), draw(_finite(0.0, 0.05))
    t = np.repeat(levels, per_level)
    m = t + rng.normal(0.0, 1.0, t.size) * (a + b * t)
    u = rng.random(t.size)
    m[u < 0.005] = 0.0
    m[u > 0.995] = 1.0
    return EmpiricalDevice.from_table(t, np.clip(m, 0.0, 1.0), g_min=0.0, g_max=1.0, n_quantiles=51)


def _device_effects():
    return [
        empirical_devices(),
        st.builds(PCMProgrammingNoise, scale=_finite(0.0, 3.0), clip=st.booleans()),
        st.builds(PCMDrift, model=st.sampled_from(["constant", "nandakumar"]), t_inference=_finite(1.0, 1e7)),
        st.builds(PCMReadNoise, t_inference=_finite(1e-6, 1e7), scale=_finite(0.0, 3.0)),
        st.builds(NeuRRAMNoise, t_inference=_finite(0.1, 1e6), scale=_finite(0.0, 3.0), clip=st.booleans()),
    ]


def effects(*, phase: str | None = None, include_devices: bool = True) -> st.SearchStrategy:
    """Any built-in device effect with valid parameters (optionally only ``phase`` "program" or "read")."""
    options = [_programming_noise(), st.builds(ConductanceLevels, levels=st.integers(2, 64)), _stuck_at(), _drift(),
               st.builds(ReadNoise, sigma=_finite(0.0, 0.2), relative_to=st.sampled_from(["range", "state"]))]
    if include_devices:
        options += _device_effects()
    strat = st.one_of(options)
    return strat.filter(lambda e: e.phase == phase) if phase is not None else strat


def mappings() -> st.SearchStrategy:
    """Differential, offset (symmetric or not) and bit-sliced mappings, per layer or per column."""
    gran = st.sampled_from(["layer", "column"])
    return st.one_of(
        st.builds(DifferentialMapping, granularity=gran),
        st.builds(OffsetMapping, granularity=gran, symmetric=st.booleans()),
        st.builds(BitSlicedMapping, n_slices=st.integers(1, 4), bits_per_slice=st.integers(1, 4), granularity=gran),
    )


def peripheries() -> st.SearchStrategy:
    """Ideal periphery, or DAC/ADC quantisers of 2..12 bits and small output noise."""
    quant = st.one_of(st.none(), st.builds(Quantizer, bits=st.integers(2, 12), percentile=_finite(99.0, 100.0)))
    return st.builds(Periphery, dac=quant, adc=quant, output_noise=st.one_of(st.just(0.0), _finite(0.0, 0.05)))


@st.composite
def specs(draw, *, max_effects: int = 3, include_devices: bool = True) -> HardwareSpec:
    """A valid :class:`HardwareSpec`: a mapping, 0..``max_effects`` effects, a periphery, window and bias mode."""
    effs = draw(st.lists(effects(include_devices=include_devices), max_size=max_effects))
    return HardwareSpec(mapping=draw(mappings()), effects=tuple(effs), periphery=draw(peripheries()),
                        g_min=draw(st.one_of(st.just(0.0), _finite(0.0, 0.3))),
                        bias=draw(st.sampled_from(["column", "digital"])), fold_batchnorm=draw(st.booleans()),
                        name=draw(st.text("abcdefgh_0123456789", min_size=1, max_size=12)))
