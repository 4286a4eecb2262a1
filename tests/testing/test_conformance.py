"""anvm_stats.testing (check_device): good devices pass, a broken device fails naming the property it violates,
with a minimal example.

check_device's statistical checks run at a false-failure rate alpha = 1e-6 per call (its default)."""

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import pytest
import torch

from anvm_stats.hardware import ConductanceLevels, Drift, ProgrammingNoise, ReadNoise, StuckAt
from anvm_stats.testing import PROPERTIES, DeviceContractError, check_device


@dataclass(frozen=True, kw_only=True)
class Gaussian:
    """A correct reference device: state-independent Gaussian error in units of the window, optional clip."""

    kind: ClassVar[str] = "kit_gaussian"
    phase: ClassVar[str] = "program"
    sigma: float = 0.1
    clip: bool = False

    def draw(self, n, generator, *, device, dtype):
        return {"z": torch.randn(n, generator=generator, device=device, dtype=dtype)}

    def noisy(self, g, z, bounds):
        return g + bounds.span * self.sigma * z

    def apply(self, g, draws, bounds):
        out = self.noisy(g, draws["z"], bounds)
        return out.clamp(bounds.g_min, bounds.g_max) if self.clip else out

    def with_knob(self, name, value):
        return replace(self, sigma=float(value)) if name == "noise_level" else None


class GlobalRNG(Gaussian):
    def draw(self, n, generator, *, device, dtype):
        return {"z": torch.randn(n, device=device, dtype=dtype)}          # ignores the generator


class NumpyGlobalRNG(Gaussian):
    def apply(self, g, draws, bounds):
        return g + self.sigma * torch.as_tensor(np.random.standard_normal(g.shape), dtype=g.dtype)


class Mutates(Gaussian):
    def apply(self, g, draws, bounds):
        return g.add_(draws["z"], alpha=bounds.span * self.sigma)        # writes into the caller's tensor


class MutatesDraws(Gaussian):
    def apply(self, g, draws, bounds):
        z = draws["z"].mul_(bounds.span * self.sigma)
        return g + z


class IgnoresBounds(Gaussian):
    def apply(self, g, draws, bounds):
        return self.noisy(g, draws["z"], bounds).clamp(0.0, 1.0)          # clips to [0, 1], not [g_min, g_max]


class WrongMoments(Gaussian):
    def noisy(self, g, z, bounds):
        return g + bounds.span * 1.2 * self.sigma * z                     # 20 % too much noise


class FixedSeed(Gaussian):
    def draw(self, n, generator, *, device, dtype):
        own = torch.Generator(device=device).manual_seed(1234)             # every instance gets the same chip
        return {"z": torch.randn(n, generator=own, device=device, dtype=dtype)}


class ParameterDependentDraws(Gaussian):
    def draw(self, n, generator, *, device, dtype):
        if self.sigma == 0:
            return {"z": torch.zeros(n, device=device, dtype=dtype)}      # skips the draw at zero noise
        return {"z": torch.randn(n, generator=generator, device=device, dtype=dtype)}


class ChangesDtype(Gaussian):
    def apply(self, g, draws, bounds):
        return super().apply(g, draws, bounds).double()


class NotIdentityAtZero(Gaussian):
    def apply(self, g, draws, bounds):
        return super().apply(g, draws, bounds) + 1e-3


SPAN = 0.9   # default test window of check_device: [0.1, 1]


def test_correct_reference_device_passes_everything():
    report = check_device(Gaussian(sigma=0.1), declared_mean=lambda g: g, declared_std=SPAN * 0.1,
                          zero_noise={"noise_level": 0.0})
    assert list(report) == list(PROPERTIES)
    assert report["moments"] == "passed" and report["zero_noise_identity"] == "passed"
    assert check_device(Gaussian(clip=True))["bounds"] == "passed"


@pytest.mark.parametrize("device,kwargs,prop", [
    (GlobalRNG(), {}, "determinism"),
    (NumpyGlobalRNG(), {}, "determinism"),
    (Mutates(), {}, "no_mutation"),
    (MutatesDraws(), {}, "no_mutation"),
    (IgnoresBounds(clip=True), {}, "bounds"),
    (WrongMoments(), {"declared_std": SPAN * 0.1, "declared_mean": lambda g: g}, "moments"),
    (FixedSeed(), {}, "instance_independence"),
    (ParameterDependentDraws(), {}, "draws_independent_of_parameters"),
    (ChangesDtype(), {}, "shape_dtype"),
    (NotIdentityAtZero(), {"zero_noise": {"noise_level": 0.0}}, "zero_noise_identity"),
])
def test_broken_devices_fail_with_the_right_property(device, kwargs, prop):
    with pytest.raises(DeviceContractError) as info:
        check_device(device, **kwargs)
    err = info.value
    assert err.property == prop
    assert f"property {prop!r} failed" in str(err) and "minimal example" in str(err)
    assert isinstance(err.example, dict)


@pytest.mark.parametrize("device,prop", [(GlobalRNG(), "determinism"), (Mutates(), "no_mutation"),
                                         (IgnoresBounds(clip=True), "bounds"), (ChangesDtype(), "shape_dtype")])
def test_deterministic_failures_shrink_to_one_device(device, prop):
    with pytest.raises(DeviceContractError) as info:
        check_device(device, n=4096)
    ex = info.value.example
    assert ex["n"] <= 4
    if prop in ("bounds", "no_mutation"):
        assert "g" in ex and "draws" in ex
    if prop == "bounds":
        assert not (0.1 <= ex["output"] <= 1.0)


def test_moment_check_has_power_and_knows_its_tolerance():
    # 20 % excess sd is found at n=20000 ...
    with pytest.raises(DeviceContractError, match="moments"):
        check_device(WrongMoments(), declared_std=SPAN * 0.1)
    # ... and the true sd is accepted at every n (the tolerance scales as 1/sqrt(n))
    for n in (500, 5000, 50_000):
        check_device(Gaussian(), declared_std=SPAN * 0.1, n=n)


def test_check_device_leaves_global_rngs_alone():
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    for broken in (GlobalRNG(), NumpyGlobalRNG()):
        with pytest.raises(DeviceContractError):
            check_device(broken)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == np_state[1].tolist()


@pytest.mark.parametrize("effect,kw", [
    (ProgrammingNoise(sigma=0.05, mu=0.01, clip=False),
     dict(declared_mean=lambda g: g + SPAN * 0.01, declared_std=SPAN * 0.05,
          zero_noise=ProgrammingNoise(sigma=0.0, mu=0.0, clip=False))),
    (ProgrammingNoise(sigma=0.2, relative_to="state", distribution="uniform", clip=False),
     dict(declared_mean=lambda g: g, declared_std=lambda g: 0.2 * g)),
    (StuckAt(p_off=0.1, p_on=0.05),
     dict(declared_mean=lambda g: 0.85 * g + 0.1 * 0.1 + 0.05 * 1.0, zero_noise={"stuck_at_rate": 0.0})),
    (ConductanceLevels(levels=4), dict(zero_noise=None)),
    (Drift(nu_mean=0.05, nu_std=0.0, t_inference=100.0), dict(declared_mean=lambda g: g * 100.0 ** -0.05,
                                                             declared_std=0.0)),
    (ReadNoise(sigma=0.03), dict(declared_mean=lambda g: g, declared_std=SPAN * 0.03)),
])
def test_builtin_effects_pass_with_closed_form_moments(effect, kw):
    check_device(effect, n=20_000, **kw)
