"""anvm_stats.analog.fold: BatchNorm folding, and ReLUs fused into the layer before them only where private."""

import torch
from torch import nn

import anvm_stats as av
from tests.helpers import logits, make_data, make_mlp, make_resnet


def test_batchnorm_is_folded():
    prog = av.prepare(make_resnet(), av.devices.ideal())
    assert ("conv1", "bn1") in prog.folded and ("conv2", "bn2") in prog.folded
    assert isinstance(prog.module.bn1, nn.Identity)
    prog2 = av.prepare(make_resnet(), av.HardwareSpec(fold_batchnorm=False))
    assert prog2.folded == () and isinstance(prog2.module.bn1, nn.BatchNorm2d)


def test_fused_relu_is_bit_identical_and_only_fuses_private_relus():
    class SharedReLU(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.c(self.act(self.b(self.act(self.a(x)))))

    x, _ = make_data(n=9)
    spec = av.devices.paper1(0.2, 0.01)
    net = make_mlp()            # Linear -> BatchNorm (folded to Identity) -> ReLU, twice
    for model, n_fused in ((net, 2), (SharedReLU(), 0)):
        plain, fused = av.prepare(model, spec), av.prepare(model, spec, fuse_relu=True)
        assert sum(m.relu_after for m in fused.analog_modules()) == n_fused
        g = av.ChipSampler(plain, seed=1).chips(range(3))
        assert torch.equal(logits(plain, g, x), logits(fused, g, x))
    ds = av.sweep(net, spec, (x, torch.zeros(9, dtype=torch.long)), n_instances=3, seed=1, progress=False,
                  program=av.prepare(net, spec))
    ds_fused = av.sweep(net, spec, (x, torch.zeros(9, dtype=torch.long)), n_instances=3, seed=1, progress=False)
    assert (ds.loss.values == ds_fused.loss.values).all()
