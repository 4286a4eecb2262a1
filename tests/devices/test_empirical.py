"""anvm_stats.devices.empirical: EmpiricalDevice recovers a known synthetic device and keeps the device contract.

False-failure rates: every statistical assertion states its own; tolerances are sampling errors times normal
quantiles (Bonferroni over the assertions of one test)."""

import math
from dataclasses import replace

import numpy as np
import pytest
import scipy.stats
import torch
import xarray as xr

import anvm_stats as av
from anvm_stats.devices import EmpiricalDevice
from anvm_stats.hardware import Bounds, HardwareSpec
from anvm_stats.testing import check_device


G_UNIT = 25e-6            # the synthetic table is in siemens: 25 uS window


LEVELS = np.linspace(0.1, 0.9, 8)


PER_LEVEL = 4000


P_OFF, P_ON = 0.006, 0.004  # 1 % stuck cells in all


def true_mean(t):
    return 0.01 * (0.5 - t)          # state-dependent bias


def true_sd(t):
    return 0.004 + 0.02 * t          # state-dependent spread


def synthetic_table(seed=0, per_level=PER_LEVEL):
    rng = np.random.default_rng(seed)
    t = np.repeat(LEVELS, per_level)
    m = t + true_mean(t) + true_sd(t) * rng.standard_normal(t.size)
    u = rng.random(t.size)
    stuck_off, stuck_on = u < P_OFF, u >= 1 - P_ON
    m[stuck_off], m[stuck_on] = 0.0, 1.0
    order = rng.permutation(t.size)
    return t[order] * G_UNIT, m[order] * G_UNIT, int(stuck_off.sum()), int(stuck_on.sum())


@pytest.fixture(scope="module")
def fitted():
    t, m, n_off, n_on = synthetic_table()
    return EmpiricalDevice.from_table(t, m, g_min=0.0, g_max=G_UNIT), n_off, n_on


def test_empirical_recovers_levels_moments_and_stuck_rates(fitted):
    dev, n_off, n_on = fitted
    s = dev.summary()
    np.testing.assert_allclose(s.level.values, LEVELS, rtol=0, atol=1e-12)
    assert dev.g_min == 0.0 and dev.g_scale == G_UNIT
    # detection is exact here (every level lies > 4.7 sd from both edges): counts equal the injected ones
    assert int(s.n_stuck_off.sum()) == n_off and int(s.n_stuck_on.sum()) == n_on
    # 8 levels x (mean, sd) + 2 rates = 18 two-sided tests at a joint false-failure rate 1e-6
    z = scipy.stats.norm.isf(1e-6 / (2 * 18))
    n_ok = s.n.values - s.n_stuck_off.values - s.n_stuck_on.values
    sd = true_sd(LEVELS)
    assert np.all(np.abs(s.error_mean.values - true_mean(LEVELS)) <= z * sd / np.sqrt(n_ok))
    assert np.all(np.abs(s.error_sd.values - sd) <= z * sd / np.sqrt(2 * (n_ok - 1)))
    n = len(LEVELS) * PER_LEVEL
    for p_hat, p in ((float(s.p_off), P_OFF), (float(s.p_on), P_ON)):
        assert abs(p_hat - p) <= z * math.sqrt(p * (1 - p) / n)


def sample_at(dev, target, n, seed):
    return dev.sample(np.full(n, float(target)), torch.Generator().manual_seed(seed)).numpy()


def test_empirical_samples_match_the_synthetic_distribution(fitted):
    dev, _, _ = fitted
    n = PER_LEVEL // 10   # sqrt(n / n_fit) ~ 0.3: the fit's own error moves the KS statistic by well under 1
    for k, level in enumerate(LEVELS):
        out = sample_at(dev, level, n, seed=k)
        good = out[(out > 0.0) & (out < 1.0)]
        p = scipy.stats.kstest(good, scipy.stats.norm(level + true_mean(level), true_sd(level)).cdf).pvalue
        assert p > 1e-4, (level, p)
    # stuck outputs: P_OFF + P_ON of all samples, within binomial error (false-failure rate 1e-6)
    out = sample_at(dev, 0.5, 20_000, seed=99)
    stuck = float(np.mean((out == 0.0) | (out == 1.0)))
    p = float(dev.p_off + dev.p_on)
    assert abs(stuck - p) <= scipy.stats.norm.isf(5e-7) * math.sqrt(p * (1 - p) / out.size)


def test_empirical_sample_moments_match_the_synthetic_device(fitted):
    """More power than KS: mean and sd of 20000 samples per level against the true law. The error of a sample
    moment is the fit's (n_fit cells) plus the sampling's (n draws); 16 two-sided tests at a joint 1e-6."""
    dev, _, _ = fitted
    n, z = 20_000, scipy.stats.norm.isf(1e-6 / 32)
    for k, level in enumerate(LEVELS):
        out = sample_at(dev, level, n, seed=100 + k)
        e = out[(out > 0.0) & (out < 1.0)] - level
        sd, n_fit = true_sd(level), PER_LEVEL * (1 - P_OFF - P_ON)
        assert abs(e.mean() - true_mean(level)) <= z * sd * math.sqrt(1 / n_fit + 1 / e.size)
        assert abs(e.std() - sd) <= z * sd * math.sqrt(1 / (2 * n_fit) + 1 / (2 * e.size))


def test_empirical_interpolates_between_levels(fitted):
    """Halfway between two levels the error quantiles are averaged: for Gaussian levels that is the Gaussian with
    the averaged mean and sd, which here is the synthetic device's own law at that target (both are linear)."""
    dev, _, _ = fitted
    mid = 0.5 * (LEVELS[3] + LEVELS[4])
    v = torch.linspace(0, 1, 11, dtype=torch.float64)
    at = [dev.error(torch.full_like(v, x), v) for x in (LEVELS[3], mid, LEVELS[4])]
    torch.testing.assert_close(at[1], 0.5 * (at[0] + at[2]))
    below, first = (dev.error(torch.full_like(v, x), v) for x in (0.0, LEVELS[0]))
    torch.testing.assert_close(below, first)   # constant below the first level
    out = sample_at(dev, mid, 400, seed=5)
    good = out[(out > 0.0) & (out < 1.0)]
    assert scipy.stats.kstest(good, scipy.stats.norm(mid + true_mean(mid), true_sd(mid)).cdf).pvalue > 1e-4


def test_empirical_continuous_targets_are_binned():
    rng = np.random.default_rng(3)
    t = rng.uniform(0.1, 0.9, 8000)
    m = np.clip(t + 0.01 * rng.standard_normal(t.size), 0, 1)
    dev = EmpiricalDevice.from_table(t, m, g_min=0.0, g_max=1.0, n_bins=8)
    s = dev.summary()
    assert s.sizes["level"] == 8 and np.all(np.diff(s.level.values) > 0)
    assert int(s.n.sum()) == t.size and float(s.p_off) == 0.0 and float(s.p_on) == 0.0
    z = scipy.stats.norm.isf(1e-6 / 16)   # 8 two-sided sd tests, joint false-failure rate 1e-6
    assert np.all(np.abs(s.error_sd.values - 0.01) <= z * 0.01 / np.sqrt(2 * (s.n.values - 1)))


def test_empirical_readers_and_serialisation(fitted, tmp_path):
    t, m, _, _ = synthetic_table(seed=1, per_level=300)
    ref = EmpiricalDevice.from_table(t, m, g_min=0.0, g_max=G_UNIT)
    import pandas as pd

    pd.DataFrame({"target": t, "measured": m}).to_csv(tmp_path / "dev.csv", index=False)
    assert EmpiricalDevice.from_csv(tmp_path / "dev.csv", "target", "measured", g_min=0.0, g_max=G_UNIT) == ref
    xr.Dataset({"target": ("cell", t), "measured": ("cell", m)}).to_netcdf(tmp_path / "dev.nc", engine="scipy")
    assert EmpiricalDevice.from_netcdf(tmp_path / "dev.nc", "target", "measured", g_min=0.0, g_max=G_UNIT) == ref
    spec = fitted[0].spec()
    assert HardwareSpec.from_toml(spec.to_toml()) == spec
    assert HardwareSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(av.errors.ConfigError, match="column"):
        EmpiricalDevice.from_csv(tmp_path / "dev.csv", "nope", "measured")


def test_empirical_keeps_the_device_contract(fitted):
    dev, _, _ = fitted
    ideal = replace(dev, error_scale=0.0, p_off=0.0, p_on=0.0)
    check_device(dev, zero_noise=ideal, n=5000, bounds=Bounds(g_min=0.0))
    check_device(dev, n=5000)   # in a spec window other than its own (mapped linearly)
    assert dev.with_knob("stuck_at_rate", 0.02).p_off == pytest.approx(0.02 * dev.p_off / (dev.p_off + dev.p_on))
