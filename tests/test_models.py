"""anvm_stats.models: shapes, parameter counts, fx-traceability, BatchNorm foldability and seeding."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

from anvm_stats.errors import ConfigError
from anvm_stats.models import (
    MLP, LeNet5, ResNet, WideResNet, build_model, model_summary, resnet20, resnet32, wide_resnet,
)


def _x(n, c, s, seed=0):
    return torch.randn(n, c, s, s, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape,in_features", [((3, 64), 64), ((3, 1, 8, 8), 64), ((2, 1, 28, 28), 784),
                                               ((2, 3, 32, 32), 3072)])
@pytest.mark.parametrize("n_classes", [2, 10, 100])
def test_mlp_shapes(shape, in_features, n_classes):
    m = MLP(in_features, (32, 16), n_classes)
    assert m(torch.randn(*shape)).shape == (shape[0], n_classes)
    assert MLP(in_features, (), n_classes)(torch.randn(*shape)).shape == (shape[0], n_classes)


def test_mlp_default_layers():
    m = MLP()
    linears = [l for l in m.modules() if isinstance(l, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(64, 256), (256, 256), (256, 10)]
    assert model_summary(m)["n_parameters"] == 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10


@pytest.mark.parametrize("in_channels,size,n_classes", [(1, 8, 10), (1, 28, 10), (3, 32, 10), (3, 32, 100),
                                                        (1, 9, 3), (3, 64, 7)])
def test_lenet5_shapes(in_channels, size, n_classes):
    m = LeNet5(in_channels, n_classes, input_size=size).eval()
    assert m(_x(2, in_channels, size)).shape == (2, n_classes)
    # a model built for one size still runs on another (adaptive pooling)
    assert LeNet5(in_channels, n_classes)(_x(2, in_channels, size)).shape == (2, n_classes)


@pytest.mark.parametrize("factory", [resnet20, resnet32])
@pytest.mark.parametrize("in_channels,size,n_classes", [(1, 8, 10), (1, 28, 10), (3, 32, 10), (3, 32, 100),
                                                        (3, 17, 5)])
def test_resnet_shapes(factory, in_channels, size, n_classes):
    m = factory(n_classes=n_classes, in_channels=in_channels).eval()
    assert m(_x(2, in_channels, size)).shape == (2, n_classes)


def test_wrn_small_forward_shapes():
    m = wide_resnet(depth=16, widen=1, n_classes=10, in_channels=3).eval()
    for size in (8, 32):
        assert m(_x(2, 3, size)).shape == (2, 10)
    d = wide_resnet(depth=10, widen=2, n_classes=4, in_channels=1, dropout=0.3)
    d.train()
    assert d(_x(3, 1, 8)).shape == (3, 4)
    assert any(isinstance(x, nn.Dropout) for x in d.modules())


def test_parameter_counts():
    r20 = model_summary(resnet20())
    assert r20["name"] == "resnet20"
    assert 0.26e6 < r20["n_parameters"] < 0.28e6                   # option-B shortcuts: 272,474
    assert r20["n_parameters"] == 272_474
    assert 0.46e6 < model_summary(resnet32())["n_parameters"] < 0.48e6
    wrn = model_summary(wide_resnet(28, 10, n_classes=100))        # constructed only, never run here
    assert wrn["name"] == "wrn-28-10"
    assert wrn["n_parameters"] == 36_536_884                        # Zagoruyko & Komodakis: 36.5 M
    assert wrn["n_trainable"] == wrn["n_parameters"]
    assert wrn["n_analog_layers"] == 1 + 3 * 4 * 2 + 3 + 1            # stem, 2 convs/block, 3 shortcuts, fc


def test_resnet_structure():
    m = resnet20()
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert len(convs) == 1 + 18 + 2                                # stem, 9 blocks x 2, two 1x1 shortcuts
    assert sum(c.kernel_size == (1, 1) for c in convs) == 2
    assert [c.out_channels for c in convs if c.kernel_size == (1, 1)] == [32, 64]
    assert isinstance(m.fc, nn.Linear) and m.fc.in_features == 64
    w = ResNet(20, width=8)
    assert w.fc.in_features == 32
    with pytest.raises(ConfigError):
        ResNet(21)
    with pytest.raises(ConfigError):
        WideResNet(depth=27)


@pytest.mark.parametrize("make,shape", [(lambda: MLP(), (4, 64)),
                                        (lambda: LeNet5(1, 10, 8), (4, 1, 8, 8)),
                                        (lambda: LeNet5(3, 10, 32), (4, 3, 32, 32)),
                                        (lambda: resnet20(in_channels=1), (4, 1, 8, 8)),
                                        (lambda: wide_resnet(16, 1, 10, in_channels=1), (4, 1, 8, 8))])
def test_fx_trace_matches_eager(make, shape):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = make().eval()
        x = torch.randn(*shape)
    gm = torch.fx.symbolic_trace(m)
    torch.testing.assert_close(gm(x), m(x))


def test_every_conv_batchnorm_is_foldable():
    fold = pytest.importorskip("anvm_stats.analog.fold")
    for m, expected in ((LeNet5(), 2), (resnet20(), 21), (resnet32(), 33)):
        bns = [n for n, x in m.named_modules() if isinstance(x, nn.BatchNorm2d)]
        pairs = fold.find_foldable_pairs(m)
        assert len(bns) == expected and sorted(b for _, b in pairs) == sorted(bns)
    # pre-activation WRN: only bn2 of each block follows a conv directly
    wrn = wide_resnet(16, 1, 10)
    pairs = fold.find_foldable_pairs(wrn)
    assert len(pairs) == 6 and all(b.endswith("bn2") and c.endswith("conv1") for c, b in pairs)


@pytest.mark.parametrize("name,kw", [("mlp", {}), ("lenet5", {}), ("resnet20", {"in_channels": 1}),
                                     ("wrn", {"depth": 10, "widen": 1, "n_classes": 10})])
def test_seeded_construction_uses_own_generator(name, kw):
    state = torch.random.get_rng_state()
    a = build_model(name, seed=3, **kw)
    assert torch.equal(state, torch.random.get_rng_state())      # global RNG untouched by a seeded build
    b = build_model(name, seed=3, **kw)
    c = build_model(name, seed=4, **kw)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    g = torch.Generator().manual_seed(3)
    d = build_model(name, generator=g, **kw)
    assert all(torch.equal(sa[k], d.state_dict()[k]) for k in sa)


def test_unseeded_construction_deterministic_under_fork_rng():
    def make():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(11)
            return [resnet20(in_channels=1), LeNet5(), MLP(), wide_resnet(10, 1, 10)]

    for a, b in zip(make(), make()):
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(va, vb), k


def test_init_is_sane():
    m = resnet20(generator=torch.Generator().manual_seed(0))
    conv = m.layer2[0].conv1
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert float(conv.weight.detach().std()) == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.1)
    assert torch.equal(m.bn1.weight, torch.ones(16)) and torch.equal(m.bn1.bias, torch.zeros(16))
    lin = MLP(generator=torch.Generator().manual_seed(0)).layers[0]
    assert float(lin.weight.detach().abs().max()) <= 1 / 64 ** 0.5 + 1e-6   # PyTorch default bound 1/sqrt(fan_in)


def test_build_model_names_and_errors():
    assert isinstance(build_model("mlp"), MLP)
    assert isinstance(build_model("LeNet5", in_channels=3, input_size=32), LeNet5)
    assert model_summary(build_model("resnet32"))["name"] == "resnet32"
    assert model_summary(build_model("resnet", depth=44))["name"] == "resnet44"
    w = build_model("wrn", depth=16, widen=2, n_classes=10)
    assert isinstance(w, WideResNet) and model_summary(w)["name"] == "wrn-16-2"
    with pytest.raises(ConfigError) as err:
        build_model("vgg16")
    for known in ("mlp", "lenet5", "resnet20", "resnet32", "wrn"):
        assert known in str(err.value)
    with pytest.raises(ConfigError, match="widen"):
        build_model("resnet20", widen=2)
    with pytest.raises(ConfigError):
        build_model("mlp", seed=-1)
    with pytest.raises(ConfigError):
        MLP(hidden=(0,))
    with pytest.raises(ConfigError):
        LeNet5(n_classes=0)


def test_model_summary_of_any_module():
    s = model_summary(nn.Sequential(nn.Linear(3, 2), nn.ReLU()))
    assert s == {"name": "Sequential", "n_parameters": 8, "n_trainable": 8, "n_analog_layers": 1,
                 "n_analog_weights": 6}


def test_train_step_decreases_loss_on_digits():
    data = pytest.importorskip("anvm_stats.data")
    d = data.digits("train", image=True).subset(256, seed=0)
    m = build_model("lenet5", seed=0, input_size=8)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(m(d.x), d.y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_load_weights_file_round_trip_and_refusals(tmp_path):
    from anvm_stats.models import load_weights_file

    net = build_model("lenet5", seed=3)
    torch.save(net.state_dict(), tmp_path / "a.pt")
    torch.save({"state_dict": net.state_dict(), "history": {}}, tmp_path / "b.pt")
    for name in ("a.pt", "b.pt"):
        fresh = load_weights_file(build_model("lenet5", seed=4), tmp_path / name)
        for (k, v), w in zip(net.state_dict().items(), fresh.state_dict().values()):
            assert torch.equal(v, w), k
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ConfigError, match="weights=.*list.pt.*a state dict.*list"):
        load_weights_file(build_model("lenet5"), tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_weights_file(build_model("lenet5"), tmp_path / "nope.pt")
