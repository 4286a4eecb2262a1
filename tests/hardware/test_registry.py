"""Devices written HERE, outside the package, run through evaluate, sweep, HA-SGD and the sensitivity analysis
with no change to anvm_stats.

The strongest check: a user device with the same law and the same draws as a built-in one gives bit-identical
results everywhere (same instance streams), so it must be taking exactly the built-in's path."""

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import pytest
import torch
import xarray as xr

import anvm_stats as av
from anvm_stats.devices import effect_from_function
from anvm_stats.hardware import HardwareSpec, ProgrammingNoise, register
from anvm_stats.testing import check_device
from anvm_stats.fragility import sensitivity
from tests.helpers import make_data, make_mlp


@register("effect")
@dataclass(frozen=True, kw_only=True)
class UserGaussian:
    """State-independent Gaussian error in units of the window: ProgrammingNoise(relative_to="range",
    clip=False) re-written by a user."""

    kind: ClassVar[str] = "test_user_gaussian"
    phase: ClassVar[str] = "program"
    sigma: float = 0.05

    def draw(self, n, generator, *, device, dtype):
        return {"z": torch.randn(n, generator=generator, device=device, dtype=dtype)}

    def apply(self, g, draws, bounds):
        return torch.add(g, draws["z"], alpha=bounds.span * self.sigma)

    def with_knob(self, name, value):
        return replace(self, sigma=float(value)) if name == "noise_level" else None


@register("effect")
@dataclass(frozen=True, kw_only=True)
class Telegraph:
    """A law no built-in has: every device sits +-amplitude (fraction of the window) off target, clipped."""

    kind: ClassVar[str] = "test_telegraph"
    phase: ClassVar[str] = "program"
    amplitude: float = 0.05
    clips: ClassVar[bool] = True

    def draw(self, n, generator, *, device, dtype):
        return {"u": torch.rand(n, generator=generator, device=device, dtype=dtype)}

    def apply(self, g, draws, bounds):
        sign = torch.where(draws["u"] < 0.5, -1.0, 1.0).to(g.dtype)
        return (g + bounds.span * self.amplitude * sign).clamp(bounds.g_min, bounds.g_max)

    def with_knob(self, name, value):
        return replace(self, amplitude=float(value)) if name == "noise_level" else None


def gaussian_law(g, draws, bounds, noise_level):
    """The same law as UserGaussian, as a plain function."""
    return torch.add(g, draws["z"], alpha=bounds.span * noise_level)


FUNCTION_DEVICE = effect_from_function(gaussian_law, kind="test_function_gaussian", knobs={"noise_level": 0.05})


def spec_of(effect, **kw):
    return HardwareSpec(effects=(effect,), g_min=0.1, name="user", **kw)


BUILTIN = spec_of(ProgrammingNoise(sigma=0.15, relative_to="range", clip=False))
USER = spec_of(UserGaussian(sigma=0.15))
FUNCTION = spec_of(FUNCTION_DEVICE.with_knob("noise_level", 0.15))


@pytest.fixture(scope="module")
def setup():
    return make_mlp(sizes=(8, 16, 16, 6)), make_data(n=48, n_classes=6)


def values(ds):
    return ds.drop_attrs() if hasattr(ds, "drop_attrs") else ds.assign_attrs({})


def test_user_devices_keep_the_contract():
    check_device(UserGaussian(sigma=0.1), declared_mean=lambda g: g, declared_std=0.9 * 0.1,
                 zero_noise={"noise_level": 0.0})
    check_device(FUNCTION_DEVICE, declared_mean=lambda g: g, declared_std=0.9 * 0.05,
                 zero_noise={"noise_level": 0.0})
    report = check_device(Telegraph(), zero_noise={"noise_level": 0.0})
    assert report["bounds"] == "passed"


def test_user_specs_serialise():
    for spec in (USER, FUNCTION, spec_of(Telegraph(amplitude=0.2))):
        assert HardwareSpec.from_toml(spec.to_toml()) == spec
        assert HardwareSpec.from_dict(spec.to_dict()) == spec
    assert type(FUNCTION_DEVICE)(noise_level=0.3).noise_level == 0.3


def test_evaluate_user_device_equals_the_builtin_it_rewrites(setup):
    net, data = setup
    ref = av.evaluate(net, BUILTIN, data, n_instances=12, seed=5, progress=False)
    assert float(ref.accuracy.std()) > 0
    for spec in (USER, FUNCTION):
        ds = av.evaluate(net, spec, data, n_instances=12, seed=5, progress=False)
        xr.testing.assert_identical(values(ds), values(ref))


def test_sweep_over_a_user_knob(setup):
    net, data = setup
    spec = spec_of(Telegraph())
    grid = [0.0, 0.05, 0.3]
    ds = av.sweep(net, spec, data, grid={"noise_level": grid}, n_instances=10, seed=2, progress=False)
    assert ds.sizes == {"noise_level": 3, "instance": 10}
    ideal = av.evaluate(net, HardwareSpec(g_min=0.1), data, n_instances=1, seed=0, progress=False)
    # zero amplitude is the nominal chip for every instance
    np.testing.assert_array_equal(ds.correct_count.sel(noise_level=0.0).values,
                                  np.full(10, int(ideal.correct_count.values[0])))
    assert float(ds.accuracy.sel(noise_level=0.3).std()) > 0
    # common random numbers: a grid point equals a separate run at that knob value
    alone = av.evaluate(net, spec.with_knobs(noise_level=0.05), data, n_instances=10, seed=2, progress=False)
    np.testing.assert_array_equal(ds.correct_count.sel(noise_level=0.05).values, alone.correct_count.values)
    # the sweep sees the user's device in its provenance
    assert "test_telegraph" in ds.attrs["hardware_spec"]


def test_hasgd_with_a_user_device(setup):
    training = pytest.importorskip("anvm_stats.training")
    net, data = setup
    kw = dict(samples=2, epochs=1, batch_size=16, lr=0.05, seed=0, progress=False, eval_instances=0)
    ref = training.train_hasgd(net, BUILTIN, data, **kw)
    for spec in (USER, FUNCTION):
        res = training.train_hasgd(net, spec, data, **kw)
        # the built-in unclipped Gaussian takes HA-SGD's weight-domain shortcut, the user device the general
        # conductance-domain path: equal up to float32 rounding, not bit for bit
        for (name, a), (_, b) in zip(ref.model.state_dict().items(), res.model.state_dict().items()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    res = training.train_hasgd(net, spec_of(Telegraph(amplitude=0.1)), data, **kw)
    assert all(torch.isfinite(p).all() for p in res.model.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(res.model.parameters(), net.parameters()))


def test_sensitivity_with_a_user_device(setup):
    net, data = setup
    kw = dict(seed=0, n_draws=32, n_instances=8, per_layer_monte_carlo=False, eigen=False, max_probes=10)
    ref = sensitivity(net, BUILTIN, data, **kw)
    out = sensitivity(net, USER, data, **kw)
    np.testing.assert_array_equal(out["predicted_total"].values, ref["predicted_total"].values)
    tel = sensitivity(net, spec_of(Telegraph(amplitude=0.1)), data, **kw)
    assert np.all(np.isfinite(tel["predicted_total"].values))
