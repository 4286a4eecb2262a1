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
    class WithLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(4, 4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(UnsupportedLayerError, match="'rnn' \\(LSTM\\)"):
        av.prepare(WithLSTM(), av.devices.ideal())
    prog = av.prepare(WithLSTM(), av.devices.ideal(), digital=["rnn"])
    assert prog.layer_names == ["fc"]
    with pytest.raises(UnsupportedLayerError, match="ReLU"):
        av.prepare(make_mlp(), av.devices.ideal(), layers=["2"])
    with pytest.raises(ConfigError, match="layers"):
        av.prepare(make_mlp(), av.devices.ideal(), layers=["nope"])


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
