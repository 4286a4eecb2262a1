"""anvm_stats.training.adc: ADC in the loop quantises forward and passes gradients straight through."""

import numpy as np
import torch
import torch.nn.functional as F

from anvm_stats import devices
from anvm_stats.training import (ADCInTheLoop, adc_points, perturb_targets, train_hasgd)
from tests.helpers import make_data, make_mlp


def test_adc_in_the_loop_quantises_and_passes_gradients():
    net = make_mlp(bn=True).train()
    x, y = make_data(n=64)
    names = [t.name for t in perturb_targets(net)]
    points = adc_points(net, names)
    assert points == ["1", "4", "6"]                       # BN outputs where BN follows the layer
    adc = ADCInTheLoop(net, points, levels=5, percentile=100.0)
    adc.calibrate(x)
    seen = {}
    with adc:
        hooks = [net.get_submodule(p).register_forward_hook(lambda m, a, o, p=p: seen.__setitem__(p, o.detach()))
                 for p in points]
        loss = F.cross_entropy(net(x), y)
        for h in hooks:
            h.remove()
    for p in points:
        assert 2 <= torch.unique(seen[p]).numel() <= 5, p
    loss.backward()
    for name in names:
        assert float(net.get_submodule(name).weight.grad.abs().sum()) > 0
    res = train_hasgd(make_mlp(bn=True), devices.paper1(0.05), (x, y), adc_levels=4, samples=2, epochs=2,
                      batch_size=16, seed=0, progress=False)
    assert np.isfinite(res.history.train_loss.values).all() and res.history.attrs["adc_levels"] == 4
