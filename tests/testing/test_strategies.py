"""anvm_stats.testing.strategies: the Hypothesis strategies generate valid effects, specs, weights and
conductances."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anvm_stats.hardware import Bounds, HardwareSpec
from anvm_stats.testing import check_device, conductances, effects, specs, weights


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(effects())
def test_every_generated_effect_keeps_the_contract(effect):
    check_device(effect, n=1000)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_generated_specs_validate_and_round_trip(spec):
    assert isinstance(spec, HardwareSpec)
    assert HardwareSpec.from_dict(spec.to_dict()) == spec


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_weight_and_conductance_strategies(data):
    w = data.draw(weights(max_side=5))
    assert w.ndim == 2 and 1 <= min(w.shape) and bool(torch.isfinite(w).all()) and float(w.abs().max()) <= 1.0
    b = Bounds(g_min=data.draw(st.floats(0.0, 0.5)))
    g = data.draw(conductances(window=b))
    assert bool(((g >= b.g_min) & (g <= b.g_max)).all())
