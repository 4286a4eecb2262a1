"""anvm_stats.devices.pcm: the PCM formulas, and the PCM effects keep the device contract with declared moments."""

import math
from dataclasses import replace

import pytest
import torch

from anvm_stats.devices import PCMDrift, PCMProgrammingNoise, PCMReadNoise
from anvm_stats.errors import ConfigError
from anvm_stats.hardware.effects import Bounds
from anvm_stats.testing import check_device
from tests.helpers import nandakumar_drift_moments


def test_pcm_formulas():
    prog = PCMProgrammingNoise()
    g = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    c0, c1, c2 = 0.26348, 1.9650, -1.1731   # Nandakumar 2019 fit (uS at G_max = 25 uS)
    expected = torch.tensor([c0, c0 + c1 / 2 + c2 / 4, c0 + c1 + c2], dtype=torch.float64) / 25.0
    torch.testing.assert_close(prog.sigma(g), expected)
    read = PCMReadNoise(t_inference=3600.0)
    assert float(read.relative_sd(torch.tensor([1.0]))) == pytest.approx(
        0.0088 * math.sqrt(math.log((3600 + 250e-9) / 500e-9)))
    assert float(PCMReadNoise(t_inference=1e6).relative_sd(torch.tensor([0.5]))) > float(read.relative_sd(
        torch.tensor([0.5])))
    nd = PCMDrift(model="nandakumar")
    nu = nd.exponent(torch.tensor([1.0, 1e-4]), torch.zeros(2))
    torch.testing.assert_close(nu, torch.tensor([0.049, min(0.1, -0.0155 * math.log(1e-4) + 0.0244)]))


def drift_moments(d: PCMDrift):
    """E and sd of G0 (t/t0)^-nu for nu ~ N(m, s) (the clamp at 0 has probability Phi(-m/s) < 1e-4 here)."""
    L = math.log(d.t_inference / d.t0)
    m1 = math.exp(-d.nu_mean * L + 0.5 * (d.nu_std * L) ** 2)
    m2 = math.exp(-2 * d.nu_mean * L + 2 * (d.nu_std * L) ** 2)
    return (lambda g: g * m1), (lambda g: g * math.sqrt(m2 - m1 * m1))


def test_pcm_effects_keep_contract_with_declared_moments():
    prog = PCMProgrammingNoise()
    check_device(prog, declared_mean=lambda g: g, declared_std=prog.sigma, zero_noise={"noise_level": 0.0},
                 levels=(0.15, 0.5), n=20_000)
    drift = PCMDrift(t_inference=86400.0)
    mean, sd = drift_moments(drift)
    check_device(drift, declared_mean=mean, declared_std=sd, zero_noise={"t_inference": drift.t0}, n=20_000)
    read = PCMReadNoise(t_inference=3600.0)
    check_device(read, declared_mean=lambda g: g, declared_std=lambda g: g * read.relative_sd(g),
                 zero_noise=replace(read, scale=0.0), n=20_000)


@pytest.mark.parametrize("t", [86400.0, 3.15e7])
def test_nandakumar_drift_has_the_state_dependent_moments(t):
    """The state-dependent law's mean and sd at 1 day / 1 year against numerical integration over the exponent
    (tests/helpers.py), at low, middle and high states (check_device: false-failure rate 1e-6)."""
    drift = PCMDrift(model="nandakumar", t_inference=t)

    def moment(k):
        return lambda g: g * float(nandakumar_drift_moments(float(g.flatten()[0]), t)[k][0])

    check_device(drift, declared_mean=moment(0), declared_std=moment(1), zero_noise={"t_inference": drift.t0},
                 levels=(0.02, 0.3, 0.9), n=20_000)


def test_reads_before_t0_see_no_drift():
    """t is the time after programming; the law holds from t0 = 20 s; earlier reads see G(t0) (aihwkit's
    t_inference counts from t0 instead); t must be > 0."""
    g = torch.linspace(0.0, 1.0, 11)
    z = {"z": torch.randn(11, generator=torch.Generator().manual_seed(0))}
    for model in ("constant", "nandakumar"):
        d = PCMDrift(model=model).with_knob("t_inference", 1.0)
        assert d.t_inference == 1.0
        torch.testing.assert_close(d.apply(g, z, Bounds()), g, rtol=0, atol=0)
        assert not torch.equal(d.with_knob("t_inference", 21.0).apply(g[1:], {"z": z["z"][1:]}, Bounds()), g[1:])
    for bad in (0.0, -1.0):
        with pytest.raises(ConfigError, match="t_inference"):
            PCMDrift().with_knob("t_inference", bad)
        with pytest.raises(ConfigError, match="t_inference"):
            PCMDrift(t_inference=bad)
    with pytest.raises(TypeError):       # compensation is measured per chip (calibration.drift_sweep), not a device
        PCMDrift(compensation=True)
