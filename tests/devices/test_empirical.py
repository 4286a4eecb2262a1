"""Device models: EmpiricalDevice recovers a known synthetic device, PCM / NeuRRAM formulas, presets keep the
device contract and run through evaluate.

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
from anvm_stats.devices import (
    PRESETS, EmpiricalDevice, NeuRRAMNoise, PCMDrift, PCMProgrammingNoise, PCMReadNoise, neurram_rram, pcm_joshi2020,
)
from anvm_stats.hardware import Bounds, HardwareSpec
from anvm_stats.testing import check_device
from tests.helpers import make_data, make_mlp

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


def test_neurram_sigma_and_time_interpolation():
    eff = NeuRRAMNoise()
    g = torch.tensor([0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(eff.sigma(g), torch.tensor([0.348, 1.103], dtype=torch.float64) / 40.0)
    day = NeuRRAMNoise(t_inference=86400.0).sigma(g)
    half = NeuRRAMNoise(t_inference=math.sqrt(86400.0)).sigma(g)   # halfway in log t between 1 s and 1 day
    torch.testing.assert_close(half, 0.5 * (eff.sigma(g) + day))
    check_device(eff, declared_mean=lambda x: x, declared_std=eff.sigma, zero_noise={"noise_level": 0.0},
                 levels=(0.2, 0.5), n=20_000)


def declared(spec):
    """Closed-form moments of the presets' single Gaussian effects (else None: contract only)."""
    e = spec.effects[0]
    if isinstance(e, av.ProgrammingNoise) and len(spec.effects) == 1 and e.relative_to == "half_range":
        return dict(declared_mean=lambda g: g + 0.45 * e.mu, declared_std=0.45 * e.sigma)
    return {}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_keep_the_device_contract(name):
    spec = PRESETS[name]()
    bounds = Bounds(g_min=0.1)
    for e in spec.effects:
        kw = declared(spec) if e is spec.effects[0] else {}
        check_device(e, n=5000, bounds=bounds, **kw)
    assert HardwareSpec.from_dict(spec.to_dict()) == spec
    assert PRESETS[name].factory.__doc__ and PRESETS[name].source and PRESETS[name].name == name


@pytest.fixture(scope="module")
def tiny():
    return make_mlp(sizes=(8, 12, 5)), make_data(n=32, n_classes=5)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_runs_through_evaluate(name, tiny):
    net, data = tiny
    spec = PRESETS[name]()
    a = av.evaluate(net, spec, data, n_instances=6, seed=3, progress=False)
    b = av.evaluate(net, spec, data, n_instances=6, seed=3, progress=False)
    assert a.sizes["instance"] == 6
    assert np.all((a.accuracy.values >= 0) & (a.accuracy.values <= 1)) and np.all(np.isfinite(a.loss.values))
    np.testing.assert_array_equal(a.correct_count.values, b.correct_count.values)


def test_time_knobs_sweep_through_pcm_and_neurram(tiny):
    net, data = tiny
    for spec, times in ((pcm_joshi2020(), [20.0, 3600.0, 1e6]), (neurram_rram(), [1.0, 86400.0])):
        ds = av.sweep(net, spec, data, grid={"t_inference": times}, n_instances=4, seed=0, progress=False)
        assert ds.sizes == {"t_inference": len(times), "instance": 4}


def test_one_registry_reaches_python_toml_and_the_cli(tmp_path, capsys):
    """Every preset by name from Python, from a study file's [hardware] table (PCM and NeuRRAM included), and in
    ``anvm-stats presets``; an unknown name is refused naming the known ones."""
    from anvm_stats.cli import main
    from anvm_stats.errors import ConfigError
    from anvm_stats.study import load_study

    assert av.devices.preset("paper1", sigma=0.07) == av.devices.paper1(0.07)
    assert av.devices.preset("pcm_joshi2020", t_inference=20.0) == pcm_joshi2020(t_inference=20.0)
    with pytest.raises(ConfigError) as err:
        av.devices.preset("charan_rram")
    assert err.value.field == "preset" and "rram_charan" in str(err.value)
    for name, args in (("pcm_joshi2020", "{ t_inference = 86400.0 }"), ("neurram_rram", "{ t_inference = 1.0 }"),
                       ("rram_charan", "{ levels = 8 }")):
        path = tmp_path / f"{name}.toml"
        path.write_text(f"""[study]\nname = "p"\n[model]\nname = "mlp"\n[data]\nname = "digits"\n[training]
method = "plain"\nepochs = 1\n[hardware]\npreset = "{name}"\nargs = {args}\n[sweep]\nn_instances = 2\n""")
        (spec,) = load_study(path).hardware.values()
        import tomllib
        assert spec == av.devices.preset(name, **tomllib.loads(f"a = {args}")["a"])
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == list(PRESETS)
    assert all(PRESETS[ln.split()[0]].source in ln for ln in lines)
