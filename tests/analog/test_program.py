"""anvm_stats.analog.program (prepare, AnalogProgram): ideal hardware is the identity, K-instance evaluation
equals a plain per-instance float network built from the same draws, converters behave, the user's model is never
mutated."""

import copy

import pytest
import torch
from torch import nn

import anvm_stats as av
from anvm_stats.errors import ConfigError
from tests.helpers import logits, make_data, make_mlp, make_resnet, reference_net


IDEAL_SPECS = [
    av.devices.ideal(),
    av.devices.paper1(0.0),
    av.HardwareSpec(mapping=av.OffsetMapping(granularity="column"), g_min=0.1),
    av.HardwareSpec(mapping=av.DifferentialMapping(granularity="column"), bias="digital", g_min=0.05),
    av.HardwareSpec(mapping=av.BitSlicedMapping(n_slices=6, bits_per_slice=4)),
]


@pytest.mark.parametrize("spec", IDEAL_SPECS, ids=lambda s: s.name + s.mapping.kind)
@pytest.mark.parametrize("maker,shape", [(make_mlp, (8,)), (make_resnet, (1, 6, 6))])
def test_ideal_hardware_is_identity(spec, maker, shape):
    net = maker()
    x, _ = make_data(n=10, shape=shape)
    prog = av.prepare(net, spec)
    out = logits(prog, prog.g0.expand(3, -1), x)
    ref = net(x)
    tol = 2e-3 if spec.mapping.kind == "bit_sliced" else 1e-5
    assert torch.allclose(out, ref.expand_as(out), atol=tol, rtol=tol)


@pytest.mark.parametrize("spec", [av.devices.paper1(0.1, 0.02), av.devices.xiao_state_independent(0.1, adc_bits=None),
                                  av.devices.rram_charan(),
                                  av.HardwareSpec(mapping=av.OffsetMapping(), effects=(
                                      av.ProgrammingNoise(sigma=0.05, relative_to="state"),
                                      av.Drift(nu_mean=0.05, nu_std=0.02, t_inference=1e3)))],
                         ids=lambda s: s.name)
@pytest.mark.parametrize("maker,shape", [(make_mlp, (8,)), (make_resnet, (1, 6, 6))])
def test_vectorised_equals_per_instance_float_networks(spec, maker, shape):
    net = maker()
    x, _ = make_data(n=7, shape=shape)
    prog = av.prepare(net, spec)
    g = av.ChipSampler(prog, seed=5).chips(range(4))
    out = logits(prog, g, x)
    for k in range(4):
        ref = reference_net(net, prog, g[k])(x)
        assert torch.allclose(out[k], ref, atol=1e-4, rtol=1e-4), k
    assert not torch.allclose(out[0], out[1])


def test_paper1_perturbation_is_exact():
    net = make_mlp(bn=False)
    sigma, mu = 0.07, 0.01
    prog = av.prepare(net, av.devices.paper1(sigma, mu))
    sampler = av.ChipSampler(prog, seed=1)
    draws = sampler.draw([0, 1])
    g = sampler.program_chips(draws, K=2)
    got = prog.weights(g)
    z = draws[0]["z"]
    for plan in prog.plans:
        mod = net.get_submodule(plan.name)
        w_aug = torch.cat([mod.weight, (mod.bias / plan.bias_scale)[:, None]], 1).detach()
        rng = (w_aug.max() - w_aug.min()) / 2
        zw = z[:, plan.w_slice].view(2, plan.out_features, plan.in_features)
        zb = z[:, plan.b_slice].view(2, plan.out_features, 1)
        expected = w_aug + rng * (sigma * torch.cat([zw, zb], -1) + mu)
        assert torch.allclose(got[plan.name], expected, atol=1e-5)
        # the bias column's range matches the weights' range
        assert float(w_aug[:, -1].max() - w_aug[:, -1].min()) == pytest.approx(
            float(mod.weight.detach().max() - mod.weight.detach().min()), rel=1e-5)


def test_adc_quantises_each_layer_output():
    net = make_mlp(bn=False, sizes=(8, 6, 3))
    x, _ = make_data(n=50)
    spec = av.HardwareSpec(periphery=av.Periphery(adc=av.Quantizer(levels=3, percentile=100.0)))
    prog = av.prepare(net, spec, calibration_data=x)
    mod = prog.analog_modules()[0]
    lo, hi = float(mod.signal_lo[0]), float(mod.signal_hi[0])
    # reference: layer 1 by hand, signal = W~ x~ / gain quantised to 3 levels over the calibrated range
    plan = mod.plan
    prog.load(prog.g0[None], B=50, adc_levels=3)
    seen = {}
    h = mod.register_forward_hook(lambda m, i, o: seen.update(out=o))
    with torch.no_grad():
        prog.module(x)
    h.remove()
    prog.unload()
    lin = net[0]
    gain = plan.encoding.gain[0]
    signal = lin(x) / gain
    step = (hi - lo) / 2
    q = torch.round((signal.clamp(lo, hi) - lo) / step) * step + lo
    assert torch.allclose(seen["out"], q * gain, atol=1e-5)
    assert len(torch.unique(torch.round(seen["out"] / gain / step, decimals=3))) <= 3 * 6


def test_high_resolution_converters_are_nearly_ideal():
    net = make_resnet()
    x, _ = make_data(n=16, shape=(1, 6, 6))
    spec = av.HardwareSpec(periphery=av.Periphery(dac=av.Quantizer(bits=16, percentile=100.0),
                                                  adc=av.Quantizer(bits=16, percentile=100.0)))
    prog = av.prepare(net, spec, calibration_data=x)
    prog.load(prog.g0.expand(2, -1), B=16, dac_levels=2 ** 16, adc_levels=2 ** 16)
    with torch.no_grad():
        out = prog.module(x).view(2, 16, -1)
    prog.unload()
    assert torch.allclose(out, net(x).expand_as(out), atol=2e-3)


def test_converters_need_calibration_data():
    with pytest.raises(ConfigError, match="calibration"):
        av.prepare(make_mlp(), av.devices.xiao_state_independent(0.1, adc_bits=6))


@pytest.mark.parametrize("counter", [False, True])
def test_read_noise_is_fresh_per_forward_programming_noise_is_not(counter):
    net = make_mlp()
    spec = av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.05), av.ReadNoise(sigma=0.02)))
    prog = av.prepare(net, spec)
    s = av.ChipSampler(prog, seed=3, counter=counter)
    g = s.chips([0, 1])
    assert torch.equal(g, s.chips([0, 1]))
    gens = s.read_generators([0, 1])
    assert isinstance(gens, list) != counter
    r1, r2 = s.read(g, spec, gens), s.read(g, spec, gens)
    assert not torch.equal(r1, r2)
    assert torch.equal(r1, s.read(g, spec, s.read_generators([0, 1])))
    # instance 1's reads do not depend on which other instances share its chunk
    alone = s.read_generators([1])
    assert torch.equal(s.read(g[1:], spec, alone), r1[1:]) and torch.equal(s.read(g[1:], spec, alone), r2[1:])


def test_user_model_is_never_mutated():
    net = make_resnet()
    net.train()
    before = copy.deepcopy(net.state_dict())
    x, y = make_data(n=8, shape=(1, 6, 6), n_classes=5)
    av.evaluate(net, av.devices.paper1(0.1), (x, y), n_instances=3, seed=0, progress=False)
    assert net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert isinstance(net.bn1, nn.BatchNorm2d) and isinstance(net.conv1, nn.Conv2d)
