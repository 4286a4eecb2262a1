"""anvm_stats.analog.layers: both convolution strategies of AnalogModule agree with the float networks."""


import pytest
import torch

import anvm_stats as av
from tests.helpers import logits, make_data, make_resnet, reference_net


@pytest.mark.parametrize("threshold", [0, 1 << 40], ids=["loop-over-instances", "grouped"])
def test_both_convolution_strategies_agree_with_float_networks(threshold):
    from anvm_stats.analog.kernels import OneDNNKernel

    net = make_resnet()
    x, _ = make_data(n=5, shape=(1, 6, 6))
    prog = av.prepare(net, av.devices.paper1(0.1), kernel=OneDNNKernel(conv_loop_elements=threshold))
    g = av.ChipSampler(prog, seed=2).chips(range(3))
    out = logits(prog, g, x)
    for k in range(3):
        assert torch.allclose(out[k], reference_net(net, prog, g[k])(x), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- token-wise and N-d analog layers
class Tokens(torch.nn.Module):
    """Linear layers applied to [B, *lead, d] inputs (every token through the same crossbar)."""

    def __init__(self, d=6, hidden=8, classes=3):
        super().__init__()
        torch.manual_seed(4)
        self.fc1 = torch.nn.Linear(d, hidden)
        self.fc2 = torch.nn.Linear(hidden, classes)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.fc2(h).flatten(1, -2).mean(1)


def _conv(dim):
    torch.manual_seed(6)
    conv = {1: torch.nn.Conv1d, 3: torch.nn.Conv3d}[dim]
    return torch.nn.Sequential(conv(2, 4, 3, padding=1, stride=(2 if dim == 1 else (1, 2, 1))), torch.nn.ReLU(),
                               conv(4, 3, 2, groups=1, dilation=2 if dim == 1 else 1), torch.nn.Flatten(),
                               torch.nn.LazyLinear(3))


@pytest.mark.parametrize("lead", [(5,), (2, 3)])
def test_linear_maps_every_token_through_each_chips_weights(lead):
    net = Tokens().eval()
    x = torch.randn(4, *lead, 6)
    prog = av.prepare(net, av.devices.paper1(0.1))
    g = av.ChipSampler(prog, seed=1).chips(range(3))
    out = logits(prog, g, x)
    for k in range(3):
        assert torch.allclose(out[k], reference_net(net, prog, g[k])(x), atol=1e-5)


@pytest.mark.parametrize("dim,shape", [(1, (2, 9)), (3, (2, 5, 6, 4))])
def test_conv1d_and_conv3d_equal_each_chips_float_network(dim, shape):
    net = _conv(dim)
    x = torch.randn(3, *shape)
    net(x)                                     # materialise the lazy layer
    net.eval()
    prog = av.prepare(net, av.devices.paper1(0.1))
    assert [p.op for p in prog.plans] == [f"conv{dim}d", f"conv{dim}d", "linear"]
    g = av.ChipSampler(prog, seed=2).chips(range(3))
    out = logits(prog, g, x)
    for k in range(3):
        assert torch.allclose(out[k], reference_net(net, prog, g[k])(x), atol=1e-5)
    tiled = av.prepare(net, av.HardwareSpec(tile=av.Tile(rows=7, cols=3)))
    y = logits(tiled, tiled.g0[None].repeat(2, 1), x)
    with torch.no_grad():
        assert torch.allclose(y, net(x).expand_as(y), atol=1e-5)


@pytest.mark.parametrize("spec", [av.HardwareSpec(effects=(av.ReadNoise(sigma=0.1),)),
                                  av.HardwareSpec(effects=(av.ReadNoise(sigma=0.1),), tile=av.Tile(rows=4, cols=4)),
                                  av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.1),)),
                                  av.devices.paper1(0.1)],
                         ids=["read-per-mvm", "read-per-mvm-tiled", "programming", "affine-shared-input"])
def test_token_results_are_the_same_whatever_the_batch_size_and_fold(spec):
    from anvm_stats.analog.kernels import GenericKernel

    net = Tokens().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 5, 6, generator=g)
    with torch.no_grad():
        y = net(x).argmax(1)
    runs = [av.evaluate(net, spec, (x, y), n_instances=6, seed=3, progress=False,
                        options=av.RunOptions(samples_per_batch=spb)) for spb in (None, 1, 7)]
    # the generic kernel against the default CPU kernel
    prog = av.prepare(net, spec, kernel=GenericKernel())
    runs.append(av.evaluate(net, spec, (x, y), n_instances=6, seed=3, progress=False, program=prog))
    counts = runs[0].correct_count.values
    assert (counts < len(y)).any()
    for other in runs[1:]:
        assert (other.correct_count.values == counts).all()
        assert other.loss.values == pytest.approx(runs[0].loss.values, rel=1e-4)
    if spec.mapping == av.devices.paper1().mapping:          # chips affine in their draws: the first layer reads
        assert prog.analog_modules()[0].input_shared         # the shared input (the shortcut of sweeps)


def test_each_token_draws_its_own_read_noise():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    spec = av.HardwareSpec(effects=(av.ReadNoise(sigma=0.2),))
    prog = av.prepare(net, spec)
    from anvm_stats.sample_rng import SampleNoise
    sampler = av.ChipSampler(prog, 0)
    x = torch.ones(2, 5, 4)                     # five identical tokens per sample
    g = sampler.program_chips(sampler.draw([0, 1], spec), spec, K=2)
    prog.load(g, B=2, mvm_noise=SampleNoise(sampler.root, [0, 1]), mvm_effects=spec.read_effects)
    prog.set_batch(2, 0, 0)
    with torch.no_grad():
        out = prog.module(x).view(2, 2, 5, 3)
    prog.unload()
    nominal = net(x[0, 0]).detach()
    assert not torch.allclose(out[0, 0, 0], nominal, atol=1e-4)         # noisy
    tokens = out[0, 0]
    assert all(not torch.allclose(tokens[i], tokens[j], atol=1e-5) for i in range(5) for j in range(i))


def test_token_layers_fold_sample_major_as_instance_major():
    net = Tokens().eval()
    x = torch.randn(4, 5, 6)
    prog = av.prepare(net, av.devices.paper1(0.1))
    g = av.ChipSampler(prog, seed=1).chips(range(3))
    outs = []
    for sample_major in (False, True):
        prog.load(g, B=4, sample_major=sample_major)
        with torch.no_grad():
            outs.append(prog.instances(prog.module(x), 3, 4, sample_major).contiguous())
        prog.unload()
    assert torch.allclose(outs[0], outs[1], atol=1e-6)
    prog.largest_activation(x)                 # a forward on tokens: the engine then folds instance-major
    assert not prog.sample_major_ok


def test_a_noise_sweep_of_a_token_model_reuses_shared_input_products_exactly():
    net = Tokens().eval()
    x = torch.randn(20, 5, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = net(x).argmax(1)
    ds = av.sweep(net, av.devices.paper1(0.1), (x, y), grid={"noise_level": [0.1, 0.2]}, n_instances=6, seed=1,
                  progress=False)
    for i, sigma in enumerate((0.1, 0.2)):
        one = av.evaluate(net, av.devices.paper1(sigma), (x, y), n_instances=6, seed=1, progress=False)
        assert (ds.correct_count.values[i] == one.correct_count.values).all()
        assert ds.loss.values[i] == pytest.approx(one.loss.values, rel=1e-5)
