"""anvm_stats.training.estimators: HA-SGD gradients (direct, split, grouped conv) against hand computation; one
estimator per mode."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from anvm_stats import devices
from anvm_stats.errors import ConfigError
from anvm_stats.training import draw_perturbations, gradient_estimator, group_sizes, perturb_targets
from tests.helpers import make_data, make_mlp


def hand_grads(net, x, y, deltas, draw, targets=()):
    """Gradient of the mean loss of ``x`` at ``w + deltas[.][draw]`` via torch.func.functional_call; a layer paired
    with a BatchNorm runs clean and its folded noise ``x dW'^T + db'`` is added to the BatchNorm's output (hooks)."""
    paired = {t.name: t.bn for t in targets if t.bn is not None}
    skip = {f"{n}.weight" for n in paired} | {f"{b}.bias" for b in paired.values()}
    params = dict(net.named_parameters())
    pert = {k: v + deltas[k][draw] if k in deltas and k not in skip else v for k, v in params.items()}
    buffers = {k: b.clone() for k, b in net.named_buffers()}
    inputs, hooks = {}, []
    for name, bn in paired.items():
        hooks.append(net.get_submodule(name).register_forward_hook(lambda m, a, o, n=name: inputs.update({n: a[0]})))
        hooks.append(net.get_submodule(bn).register_forward_hook(
            lambda m, a, o, n=name, b=bn: o + F.linear(inputs[n], deltas[f"{n}.weight"][draw])
            + deltas.get(f"{b}.bias", torch.zeros(1, o.shape[1]))[draw]))
    try:
        loss = F.cross_entropy(torch.func.functional_call(net, (pert, buffers), (x,)), y, reduction="sum")
    finally:
        for h in hooks:
            h.remove()
    return torch.autograd.grad(loss, list(params.values()))


@pytest.mark.parametrize("perturb_bn", [False, True])
def test_direct_gradient_is_mean_of_hand_gradients(perturb_bn):
    net = make_mlp(bn=True).train()
    x, y = make_data(n=24)
    targets = perturb_targets(net, perturb_batchnorm=perturb_bn)
    pert = draw_perturbations(net, devices.paper1(0.1), samples=4, seed=3, step=7, targets=targets)
    assert ("1.bias" in pert.deltas) == perturb_bn          # the folded BN's beta carries the bias noise
    net.zero_grad()
    gradient_estimator("direct", pert.samples).accumulate(net, x, y, pert, targets)
    hand = [torch.stack(g).mean(0) / len(x)
            for g in zip(*(hand_grads(net, x, y, pert.deltas, l, targets) for l in range(4)))]
    for (name, p), h in zip(net.named_parameters(), hand):
        torch.testing.assert_close(p.grad, h, rtol=1e-5, atol=1e-6, msg=name)


def test_split_gradient_uses_one_draw_per_group():
    net = make_mlp(bn=False).train()
    x, y = make_data(n=22)                   # 22 = 6 + 6 + 5 + 5: unequal groups too
    targets = perturb_targets(net)
    pert = draw_perturbations(net, devices.paper1(0.1), samples=4, seed=1, step=0, targets=targets)
    sizes = group_sizes(22, 4)
    assert sizes == [6, 6, 5, 5]

    def grouped(draw_of_group):
        parts = zip(torch.split(x, sizes), torch.split(y, sizes))
        gs = [hand_grads(net, xg, yg, pert.deltas, draw_of_group(g)) for g, (xg, yg) in enumerate(parts)]
        return [sum(t) / len(x) for t in zip(*gs)]

    net.zero_grad()
    gradient_estimator("split", pert.samples).accumulate(net, x, y, pert, targets)
    got = [p.grad.clone() for p in net.parameters()]
    for g, h in zip(got, grouped(lambda g: g)):
        torch.testing.assert_close(g, h, rtol=1e-5, atol=1e-6)
    same = grouped(lambda g: 0)               # every group on draw 0 would give another gradient
    assert max(float((g - h).abs().max()) for g, h in zip(got, same)) > 1e-4
    for l in range(1, 4):                     # the draws differ
        assert not torch.equal(pert.deltas["0.weight"][0], pert.deltas["0.weight"][l])


def test_split_conv_grouped_equals_hand():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, stride=2, groups=1),
                            nn.Flatten(), nn.Linear(36, 5)).train()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(12, 1, 8, 8, generator=g), torch.randint(0, 5, (12,), generator=g)
    targets = perturb_targets(net)
    pert = draw_perturbations(net, devices.paper1(0.1), samples=3, seed=0, step=1, targets=targets)
    net.zero_grad()
    gradient_estimator("split", pert.samples).accumulate(net, x, y, pert, targets)
    parts = zip(torch.split(x, 4), torch.split(y, 4))
    hand = [sum(t) / 12 for t in zip(*[hand_grads(net, xg, yg, pert.deltas, i) for i, (xg, yg) in enumerate(parts)])]
    for p, h in zip(net.parameters(), hand):
        torch.testing.assert_close(p.grad, h, rtol=1e-4, atol=1e-5)


def test_each_mode_is_one_estimator_and_reports_what_it_counts():
    """Direct counts L predictions per sample, split one; a noise-free draw is the plain gradient in every mode;
    the local estimator refuses a weight-domain perturbation; an unknown mode is refused naming the field."""
    from anvm_stats.training import ESTIMATORS, LocalGradient, plain_gradient

    assert set(ESTIMATORS) == {"split", "direct", "local"}
    net = make_mlp(bn=False).train()
    x, y = make_data(n=12)
    targets = perturb_targets(net)
    noisy = draw_perturbations(net, devices.paper1(0.1), samples=3, seed=0, step=0, targets=targets)
    zero = draw_perturbations(net, devices.paper1(0.0), samples=3, seed=0, step=0, targets=targets)
    assert gradient_estimator("direct", 3).accumulate(net, x, y, noisy, targets)[2] == 12 * 3
    assert gradient_estimator("split", 3).accumulate(net, x, y, noisy, targets)[2] == 12
    net.zero_grad()
    plain_gradient(net, x, y)
    ref = [p.grad.clone() for p in net.parameters()]
    for mode in ESTIMATORS:
        net.zero_grad()
        gradient_estimator(mode, 3).accumulate(net, x, y, zero, targets)
        assert all(torch.equal(p.grad, r) for p, r in zip(net.parameters(), ref)), mode
    with pytest.raises(ConfigError) as err:
        LocalGradient(3).accumulate(net, x, y, noisy, targets)
    assert err.value.field == "pert"
    with pytest.raises(ConfigError) as err:
        gradient_estimator("sideways", 3)
    assert err.value.field == "mode"
