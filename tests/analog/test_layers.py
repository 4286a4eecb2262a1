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
