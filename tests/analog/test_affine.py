"""The fused program+decode path (anvm_stats.analog.affine) gives the general path's weights, and is used only
where the weights are affine in the draws."""

from dataclasses import replace

import numpy as np
import pytest
import torch

import anvm_stats as av
from anvm_stats.analog.affine import affine_layers, affine_weights
from anvm_stats.hardware import Periphery, ProgrammingNoise, Quantizer, ReadNoise
from tests.helpers import make_data, make_mlp

AFFINE = {
    "paper1": av.devices.paper1(0.1, mu=0.03),
    "uniform-range": av.HardwareSpec(mapping=av.OffsetMapping(), effects=(
        ProgrammingNoise(sigma=0.05, relative_to="range", distribution="uniform", clip=False),), bias="column"),
    "two-effects-dac": av.HardwareSpec(mapping=av.OffsetMapping(granularity="column"), effects=(
        ProgrammingNoise(sigma=0.05, mu=-0.01, relative_to="range", clip=False),
        ProgrammingNoise(sigma=0.02, relative_to="half_range", distribution="uniform", clip=False)),
        periphery=Periphery(dac=Quantizer(bits=6)), bias="column"),
}
NOT_AFFINE = {
    "clipped": av.HardwareSpec(mapping=av.OffsetMapping(), effects=(ProgrammingNoise(sigma=0.05),)),
    "state": av.HardwareSpec(mapping=av.OffsetMapping(), effects=(
        ProgrammingNoise(sigma=0.05, relative_to="state", clip=False),)),
    "lognormal": av.HardwareSpec(mapping=av.OffsetMapping(), effects=(
        ProgrammingNoise(sigma=0.05, distribution="lognormal", clip=False),)),
    "differential": av.HardwareSpec(mapping=av.DifferentialMapping(), effects=(
        ProgrammingNoise(sigma=0.05, clip=False),)),
    "adc": replace(av.devices.paper1(0.05), periphery=Periphery(adc=Quantizer(bits=6))),
    "read-noise": replace(av.devices.paper1(0.05), 
        effects=av.devices.paper1(0.05).effects + (ReadNoise(sigma=0.01),)),
    "noise-free": av.HardwareSpec(mapping=av.OffsetMapping(), effects=()),
}


def _program(spec):
    net = make_mlp(seed=3)
    x, y = make_data(seed=4, n=64)
    return av.prepare(net, spec, calibration_data=(x, y)), x, y


@pytest.mark.parametrize("name", list(AFFINE))
def test_fused_weights_equal_programmed_then_decoded(name):
    spec = AFFINE[name]
    program, _, _ = _program(spec)
    layers = affine_layers(program, spec)
    assert layers is not None
    sampler = av.ChipSampler(program, seed=11)
    draws = sampler.draw(range(5), spec)
    fused = affine_weights(program, layers, draws)
    g = sampler.program_chips(draws, spec, K=5)
    for p, (w, b) in zip(program.plans, fused):
        w_ref = p.encoding.decode(p.weight_view(g))
        scale = float(w_ref.abs().max())
        torch.testing.assert_close(w, w_ref, rtol=0, atol=1e-5 * scale)
        assert not torch.equal(w, w_ref.mean(0).expand_as(w))      # the draws moved the weights
        if p.b_slice is not None:
            b_ref = p.encoding.decode(p.bias_view(g))[..., 0]
            torch.testing.assert_close(b, b_ref, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("name", list(NOT_AFFINE))
def test_non_affine_chips_take_the_general_path(name):
    spec = NOT_AFFINE[name]
    program, _, _ = _program(spec)
    assert affine_layers(program, spec) is None


def test_sweep_through_fused_path_matches_general_path(monkeypatch):
    """Same chips, same metrics (up to round-off of the weights) with the fused path switched off."""
    spec = AFFINE["two-effects-dac"]
    net = make_mlp(seed=3)
    x, y = make_data(seed=4, n=200)
    grid = {"noise_level": [0.02, 0.08]}
    fast = av.sweep(net, spec, (x, y), grid=grid, n_instances=12, seed=5, progress=False)
    import anvm_stats.montecarlo as mc
    monkeypatch.setattr(mc, "affine_layers", lambda program, spec: None)
    slow = av.sweep(net, spec, (x, y), grid=grid, n_instances=12, seed=5, progress=False)
    np.testing.assert_allclose(fast.loss.values, slow.loss.values, rtol=1e-4)
    # round-off can flip an argmax only where two logits tie to ~1e-6: allow one sample per chip
    assert np.abs(fast.correct_count.values - slow.correct_count.values).max() <= 1
