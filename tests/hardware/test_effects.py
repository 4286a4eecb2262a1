"""Device effects: zero noise is the identity, moments and fault fractions match their parameters, bounds hold.

Statistical tolerances: Z = 4.89 standard errors (two-sided false-failure rate 1e-6 per check)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anvm_stats.errors import ConfigError
from anvm_stats.hardware import Bounds, ConductanceLevels, Drift, ProgrammingNoise, ReadNoise, StuckAt

Z = 4.89
N = 200_000


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def apply(effect, g, seed=0, bounds=Bounds()):
    d = effect.draw(g.numel(), gen(seed), device=g.device, dtype=g.dtype)
    return effect.apply(g, d, bounds)


@pytest.mark.parametrize("effect", [ProgrammingNoise(sigma=0.0), ProgrammingNoise(sigma=0.0, relative_to="state"),
                                    StuckAt(p_off=0.0, p_on=0.0), Drift(nu_mean=0.0, nu_std=0.0, t_inference=100.0),
                                    ReadNoise(sigma=0.0), ProgrammingNoise(sigma=0, distribution="lognormal")])
def test_zero_noise_is_identity(effect):
    g = torch.rand(1000, generator=gen(1))
    assert torch.equal(apply(effect, g), g)


@pytest.mark.parametrize("dist", ["gaussian", "uniform"])
@pytest.mark.parametrize("relative_to,unit", [("range", 0.8), ("half_range", 0.4)])
def test_state_independent_moments(dist, relative_to, unit):
    sigma, mu, g0 = 0.05, 0.01, 0.5
    b = Bounds(g_min=0.2)   # span 0.8
    g = torch.full((N,), g0, dtype=torch.float64)
    out = apply(ProgrammingNoise(sigma=sigma, mu=mu, relative_to=relative_to, distribution=dist, clip=False), g,
                bounds=b)
    d = out - g0
    sd = sigma * unit
    assert abs(float(d.mean()) - mu * unit) < Z * sd / math.sqrt(N)
    assert abs(float(d.var()) - sd ** 2) < Z * sd ** 2 * math.sqrt(2.0 / N) * (1.5 if dist == "uniform" else 1)


def test_state_proportional_moments():
    sigma = 0.1
    g = torch.tensor([0.2, 0.8], dtype=torch.float64).repeat(N // 2)
    d = apply(ProgrammingNoise(sigma=sigma, relative_to="state", clip=False), g) - g
    for level in (0.2, 0.8):
        sel = d[g == level]
        assert abs(float(sel.std()) - sigma * level) < Z * sigma * level / math.sqrt(2 * sel.numel())


def test_lognormal_is_mean_preserving_and_positive():
    sigma = 0.3
    g = torch.full((N,), 0.5, dtype=torch.float64)
    out = apply(ProgrammingNoise(sigma=sigma, relative_to="state", distribution="lognormal", clip=False), g)
    assert (out > 0).all()
    sd = 0.5 * math.sqrt(math.exp(sigma ** 2) - 1)
    assert abs(float(out.mean()) - 0.5) < Z * sd / math.sqrt(N)


def test_stuck_at_fractions_and_nesting():
    g = torch.full((N,), 0.5)
    eff = StuckAt(p_off=0.03, p_on=0.01)
    out = apply(eff, g, bounds=Bounds(g_min=0.1))
    for value, p in ((0.1, 0.03), (1.0, 0.01)):
        frac = float((out == value).float().mean())
        assert abs(frac - p) < Z * math.sqrt(p * (1 - p) / N)
    more = apply(eff.with_knob("stuck_at_rate", 0.08), g, bounds=Bounds(g_min=0.1))
    stuck, stuck_more = out != 0.5, more != 0.5
    assert bool((stuck_more | ~stuck).all()), "raising the rate must keep every earlier fault"
    assert eff.with_knob("stuck_at_rate", 0.08).p_off == pytest.approx(0.06)


def test_levels_snap_to_grid():
    g = torch.rand(1000, generator=gen(3))
    out = apply(ConductanceLevels(levels=5), g, bounds=Bounds(g_min=0.2))
    grid = torch.linspace(0.2, 1.0, 5)
    assert torch.isclose(out[:, None], grid[None]).any(1).all()
    assert (out - g.clamp(0.2, 1)).abs().max() <= 0.1 + 1e-6


def test_drift_power_law_and_identity_at_t0():
    g = torch.full((N,), 0.9, dtype=torch.float64)
    eff = Drift(nu_mean=0.06, nu_std=0.0, t0=1.0, t_inference=1e4)
    out = apply(eff, g)
    assert torch.allclose(out, g * (1e4) ** -0.06)
    assert torch.equal(apply(Drift(nu_mean=0.06, nu_std=0.02, t_inference=1.0), g), g)
    noisy = apply(Drift(nu_mean=0.06, nu_std=0.02, t_inference=1e4), g)
    nu = -torch.log(noisy / 0.9) / math.log(1e4)
    assert abs(float(nu.mean()) - 0.06) < Z * 0.02 / math.sqrt(N)


@settings(max_examples=40, deadline=None)
@given(sigma=st.floats(0, 2), mu=st.floats(-0.5, 0.5), g_min=st.floats(0, 0.9),
       rel=st.sampled_from(["range", "half_range", "state"]), dist=st.sampled_from(["gaussian", "uniform", "lognormal"]),
       seed=st.integers(0, 2 ** 31))
def test_clipping_bounds_hold(sigma, mu, g_min, rel, dist, seed):
    b = Bounds(g_min=g_min)
    g = torch.rand(500, generator=gen(seed)) * b.span + g_min
    out = apply(ProgrammingNoise(sigma=sigma, mu=mu, relative_to=rel, distribution=dist, clip=True), g, seed, b)
    assert out.shape == g.shape and out.dtype == g.dtype
    lo = torch.tensor(g_min, dtype=out.dtype)   # the bound as the tensor's dtype represents it
    assert bool((out >= lo).all()) and bool((out <= 1.0).all())


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2 ** 31), n=st.integers(1, 300))
def test_draws_are_deterministic_and_do_not_depend_on_parameters(seed, n):
    a = ProgrammingNoise(sigma=0.1).draw(n, gen(seed), device="cpu", dtype=torch.float32)
    b = ProgrammingNoise(sigma=0.7, mu=0.2).draw(n, gen(seed), device="cpu", dtype=torch.float32)
    assert torch.equal(a["z"], b["z"])


def test_apply_does_not_mutate_input():
    g = torch.rand(100, generator=gen(0))
    keep = g.clone()
    for eff in (ProgrammingNoise(sigma=0.1), StuckAt(p_off=0.2), Drift(t_inference=10.0), ConductanceLevels(levels=4),
                ReadNoise(sigma=0.1)):
        apply(eff, g)
        assert torch.equal(g, keep)


@pytest.mark.parametrize("make,field", [
    (lambda: ProgrammingNoise(sigma=-0.1), "ProgrammingNoise.sigma"),
    (lambda: ProgrammingNoise(sigma=float("nan")), "ProgrammingNoise.sigma"),
    (lambda: ProgrammingNoise(relative_to="weird"), "ProgrammingNoise.relative_to"),
    (lambda: StuckAt(p_off=1.5), "StuckAt.p_off"),
    (lambda: StuckAt(p_off=0.6, p_on=0.6), "StuckAt.p_off + p_on"),
    (lambda: ConductanceLevels(levels=1), "ConductanceLevels.levels"),
    (lambda: Drift(t0=10.0, t_inference=1.0), "Drift.t_inference"),
    (lambda: ReadNoise(sigma=-1), "ReadNoise.sigma"),
])
def test_bad_parameters_name_the_field(make, field):
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.field == field
    assert field in str(info.value) and "expected" in str(info.value)


def test_levels_top_level_is_exactly_g_max():
    """Found by the test kit: (levels-1) * step + g_min rounded one ulp above g_max for levels=57, g_min=0.1."""
    for levels in range(2, 80):
        out = ConductanceLevels(levels=levels).apply(torch.tensor([1.0], dtype=torch.float64), {}, Bounds(g_min=0.1))
        assert float(out) <= 1.0
