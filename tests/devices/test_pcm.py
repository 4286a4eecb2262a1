"""anvm_stats.devices.pcm: the PCM formulas, and the PCM effects keep the device contract with declared moments."""

import math
from dataclasses import replace

import pytest
import torch

from anvm_stats.devices import PCMDrift, PCMProgrammingNoise, PCMReadNoise
from anvm_stats.testing import check_device


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
    comp = math.exp(d.nu_mean * L) if d.compensation else 1.0
    m1 = math.exp(-d.nu_mean * L + 0.5 * (d.nu_std * L) ** 2)
    m2 = math.exp(-2 * d.nu_mean * L + 2 * (d.nu_std * L) ** 2)
    return (lambda g: g * comp * m1), (lambda g: g * comp * math.sqrt(m2 - m1 * m1))


@pytest.mark.parametrize("compensation", [False, True])
def test_pcm_effects_keep_contract_with_declared_moments(compensation):
    prog = PCMProgrammingNoise()
    check_device(prog, declared_mean=lambda g: g, declared_std=prog.sigma, zero_noise={"noise_level": 0.0},
                 levels=(0.15, 0.5), n=20_000)
    drift = PCMDrift(t_inference=86400.0, compensation=compensation)
    mean, sd = drift_moments(drift)
    check_device(drift, declared_mean=mean, declared_std=sd, zero_noise={"t_inference": drift.t0}, n=20_000)
    read = PCMReadNoise(t_inference=3600.0)
    check_device(read, declared_mean=lambda g: g, declared_std=lambda g: g * read.relative_sd(g),
                 zero_noise=replace(read, scale=0.0), n=20_000)
