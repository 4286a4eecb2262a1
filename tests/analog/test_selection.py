"""anvm_stats.analog.selection: device resolution, non-finite weights and unsupported layers refused with a clear
error, the layer filter keeps other layers digital."""


import pytest
import torch
from torch import nn

import anvm_stats as av
from anvm_stats.errors import ConfigError, InvalidWeightsError, UnsupportedLayerError
from tests.helpers import logits, make_data, make_mlp, reference_net


def test_nan_weights_are_refused():
    net = make_mlp()
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    with pytest.raises(InvalidWeightsError, match=r"'0.weight'.*NaN"):
        av.prepare(net, av.devices.ideal())


def test_unsupported_layers_are_refused():
    class WithBilinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = nn.Bilinear(4, 4, 4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.pair(x, x))

    with pytest.raises(UnsupportedLayerError, match="'pair' \\(Bilinear\\)"):
        av.prepare(WithBilinear(), av.devices.ideal())
    prog = av.prepare(WithBilinear(), av.devices.ideal(), digital=["pair"])
    assert prog.layer_names == ["fc"]
    with pytest.raises(UnsupportedLayerError, match="ReLU"):
        av.prepare(make_mlp(), av.devices.ideal(), layers=["2"])
    with pytest.raises(ConfigError, match="layers"):
        av.prepare(make_mlp(), av.devices.ideal(), layers=["nope"])


def test_the_error_lists_every_unsupported_module_with_its_type_and_the_digital_hint():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos = nn.Parameter(torch.zeros(4))
            self.blocks = nn.ModuleList([nn.Bilinear(4, 4, 4), nn.Sequential(nn.Linear(4, 4), nn.Bilinear(4, 4, 4))])
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x + self.pos)

    with pytest.raises(UnsupportedLayerError) as err:
        av.prepare(Odd(), av.devices.ideal())
    msg = str(err.value)
    assert "3 module(s)" in msg
    for path in ("'blocks.0' (Bilinear)", "'blocks.1.1' (Bilinear)", "'' (the model itself, Odd)"):
        assert path in msg
    assert "digital=['', 'blocks.0', 'blocks.1.1']" in msg
    prog = av.prepare(Odd(), av.devices.ideal(), digital=["", "blocks.0", "blocks.1.1"])
    assert prog.layer_names == ["blocks.1.0", "fc"]


def test_layer_filter_keeps_other_layers_digital():
    net = make_mlp(bn=False)
    x, _ = make_data(n=5)
    prog = av.prepare(net, av.devices.paper1(0.2), layers=lambda name, m: name == "2")
    assert prog.layer_names == ["2"]
    g = av.ChipSampler(prog, 0).chips([0])
    out = logits(prog, g, x)[0]
    ref = reference_net(net, prog, g[0])(x)
    assert torch.allclose(out, ref, atol=1e-5)


def test_cuda_request_falls_back_to_cpu_when_absent():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: nothing to fall back from")
    net = make_mlp()
    x, y = make_data(n=6)
    with pytest.warns(RuntimeWarning, match="CUDA is not available"):
        ds = av.evaluate(net, av.devices.paper1(0.1), (x, y), n_instances=2, seed=0, device="cuda",
                         progress=False)
    ref = av.evaluate(net, av.devices.paper1(0.1), (x, y), n_instances=2, seed=0, progress=False)
    assert ds.attrs["device"] == "cpu"
    assert (ds.accuracy.values == ref.accuracy.values).all()
    with pytest.raises(ConfigError, match="device"):
        av.prepare(net, av.devices.ideal(), device="gpu0")
