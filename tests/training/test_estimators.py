"""HA-SGD: gradients against hand computation, reduction to plain SGD, the hardware model's statistics, ADC in the
loop, and an end-to-end robustness check on digits."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats as sps
from torch import nn

from anvm_stats import devices
from anvm_stats.analog.fold import fold_batchnorm
from anvm_stats.analog.program import prepare
from anvm_stats.errors import ConfigError
from anvm_stats.hardware.spec import HardwareSpec
from anvm_stats.sampler import ChipSampler
from anvm_stats.training import (ADCInTheLoop, adc_points, draw_perturbations, gradient_estimator,
                                 group_sizes, perturb_targets, step_generators, train_hasgd)
from tests.helpers import make_data, make_mlp, plain_sgd

FAMILY_FALSE_FAILURE = 1e-6   # per statistical assertion (two-sided)


def hand_grads(net, x, y, deltas, draw):
    """Gradient of the mean loss of ``x`` at ``w + deltas[.][draw]`` via torch.func.functional_call."""
    params = dict(net.named_parameters())
    pert = {k: v + deltas[k][draw] if k in deltas else v for k, v in params.items()}
    buffers = {k: b.clone() for k, b in net.named_buffers()}
    loss = F.cross_entropy(torch.func.functional_call(net, (pert, buffers), (x,)), y, reduction="sum")
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
    hand = [torch.stack(g).mean(0) / len(x) for g in zip(*(hand_grads(net, x, y, pert.deltas, l) for l in range(4)))]
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


@pytest.mark.parametrize("q,mode", [(None, "split"), (devices.paper1(0.0), "split"),
                                    (devices.paper1(0.0), "direct")])
def test_noise_free_is_plain_sgd_step_for_step(q, mode):
    net = make_mlp(bn=True)
    x, y = make_data(n=40)
    ref = plain_sgd(net, x, y, epochs=2, batch_size=8, lr=0.05, seed=5)
    res = train_hasgd(net, q, (x, y), samples=4, epochs=2, batch_size=8, lr=0.05, seed=5, mode=mode,
                      progress=False)
    assert res.step == 10
    for (n, a), b in zip(res.model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), n
    assert not torch.equal(res.model[0].weight, net[0].weight)   # it trained; the user's model is untouched
    assert torch.equal(net[0].weight, make_mlp(bn=True)[0].weight)


def test_split_with_one_draw_equals_direct_and_schedule_zero_epoch_is_plain():
    net = make_mlp(bn=True)
    x, y = make_data(n=32)
    q = devices.paper1(0.2)
    kw = dict(samples=1, epochs=2, batch_size=8, lr=0.05, seed=2, progress=False)
    a = train_hasgd(net, q, (x, y), mode="split", **kw).model.state_dict()
    b = train_hasgd(net, q, (x, y), mode="direct", **kw).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    sched = train_hasgd(net, devices.paper1(0.3), (x, y), sigma_schedule=[0.0, 0.1], epochs=1, batch_size=8,
                        lr=0.05, seed=2, samples=2, progress=False)
    plain = plain_sgd(net, x, y, epochs=1, batch_size=8, lr=0.05, seed=2)
    assert all(torch.equal(u, v) for u, v in zip(sched.model.state_dict().values(), plain.state_dict().values()))
    full = train_hasgd(net, devices.paper1(0.3), (x, y), sigma_schedule=lambda e: 0.1 * e, epochs=2,
                       batch_size=8, seed=2, samples=2, progress=False)
    np.testing.assert_allclose(full.history.sigma_train.values, [0.0, 0.1])


@pytest.mark.parametrize("sigma,mu", [(0.1, 0.0), (0.05, 0.02)])
def test_perturbation_statistics_follow_paper1(sigma, mu):
    net = make_mlp(sizes=(8, 32, 32, 4), bn=False)
    L = 64
    pert = draw_perturbations(net, devices.paper1(sigma, mu), samples=L, seed=0, step=3)
    half = lambda t: (t.max() - t.min()) / 2  # noqa: E731
    z_crit = sps.norm.ppf(1 - FAMILY_FALSE_FAILURE / 2)
    for name in ("0", "2", "4"):
        lin = net.get_submodule(name)
        s = float(half(lin.bias.detach()) / half(lin.weight.detach()))                      # paper 1: s = range(b) / range(W)
        w_aug = torch.cat([lin.weight, lin.bias[:, None] / s], 1).detach()
        rng_l = float(half(w_aug))
        d = torch.cat([pert.deltas[f"{name}.weight"], pert.deltas[f"{name}.bias"][..., None] / s], -1).double()
        n = d.numel()
        # mean: N(range*mu, (sigma*range)^2/n); variance: chi2(n-1) scaled; both two-sided at 1e-6
        assert abs(float(d.mean()) - rng_l * mu) <= z_crit * sigma * rng_l / n ** 0.5
        ratio = float(d.var()) / (sigma * rng_l) ** 2
        lo, hi = sps.chi2.ppf([FAMILY_FALSE_FAILURE / 2, 1 - FAMILY_FALSE_FAILURE / 2], n - 1) / (n - 1)
        assert lo <= ratio <= hi, (name, ratio, lo, hi)


@pytest.mark.parametrize("spec,bn", [(devices.paper1(0.1, 0.01), False), (devices.xiao_state_independent(0.1, adc_bits=None), False),
                                     (devices.paper1(0.1), True)])
def test_perturbation_is_the_monte_carlo_chip(spec, bn):
    """Perturbed weights (BN folded as the engine folds it) equal the engine's chips on the same base draws."""
    net = make_mlp(bn=bn)
    L = 3
    pert = draw_perturbations(net, spec, samples=L, seed=0, step=4, perturb_batchnorm=bn)
    program = prepare(net, spec)
    sampler = ChipSampler(program, 0)
    draws = sampler.draw_from(spec.program_effects, step_generators(0, 4, L))
    chips = program.weights(sampler.program_chips(draws, spec, K=L))
    for l in range(L):
        copy_ = copy.deepcopy(net)
        with torch.no_grad():
            for k, p in copy_.named_parameters():
                if k in pert.deltas:
                    p.add_(pert.deltas[k][l])
        fold_batchnorm(copy_)
        for plan in program.plans:
            m = copy_.get_submodule(plan.name)
            w = torch.cat([m.weight.reshape(m.weight.shape[0], -1), m.bias[:, None] / plan.bias_scale], 1)
            torch.testing.assert_close(w, chips[plan.name][l], rtol=1e-4, atol=1e-5)


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


def test_config_errors_name_the_field():
    net, data = make_mlp(), make_data()
    for kw, field in [(dict(mode="sideways"), "mode"), (dict(samples=16, batch_size=8), "batch_size"),
                      (dict(spec=None, sigma_schedule=[0.1]), "sigma_schedule"), (dict(optimizer="lbfgs"), "optimizer")]:
        with pytest.raises(ConfigError) as err:
            train_hasgd(net, data=data, **{"spec": devices.paper1(0.1), **kw}, progress=False)
        assert err.value.field == field


@pytest.mark.slow
def test_hasgd_beats_plain_training_under_noise_on_digits():
    from anvm_stats.data import digits
    from anvm_stats.models import MLP
    from anvm_stats.montecarlo import evaluate
    from anvm_stats.stats import paired_difference

    train, test = digits("train"), digits("test")
    net = MLP(hidden=(64,), generator=torch.Generator().manual_seed(0))
    kw = dict(epochs=25, lr=0.1, batch_size=64, seed=0, progress=False)
    plain = train_hasgd(net, None, train, **kw).model
    robust = train_hasgd(net, devices.paper1(0.1), train, samples=8, **kw).model
    spec = devices.paper1(0.15)
    a = evaluate(robust, spec, test, n_instances=100, seed=1, progress=False).accuracy
    b = evaluate(plain, spec, test, n_instances=100, seed=1, progress=False).accuracy
    diff = paired_difference(a, b, ci=0.99)
    print("sigma_test=0.15 robust", float(a.mean()), "plain", float(b.mean()), "diff",
          float(diff.estimate), diff.interval.values)
    assert float(diff.interval.sel(ci_bound="lower")) > 0


@pytest.mark.parametrize("bn", [False, True])
def test_weight_domain_draws_equal_conductance_domain_path(bn):
    """The fast path (dW straight from the base draws, threads over l) equals the conductance-domain path on the
    same base draws up to float round-off, for several Gaussian mappings/units; non-Gaussian q keeps the old path."""
    from anvm_stats.hardware.effects import ProgrammingNoise
    from anvm_stats.hardware.mapping import BitSlicedMapping, DifferentialMapping
    specs = [devices.paper1(0.1), devices.paper1(0.05, 0.02),
             HardwareSpec(mapping=DifferentialMapping(granularity="column"), g_min=0.1,
                          effects=(ProgrammingNoise(sigma=0.1, mu=0.01, relative_to="state", clip=False),
                                   ProgrammingNoise(sigma=0.05, clip=False))),
             HardwareSpec(mapping=BitSlicedMapping(), bias="digital",
                          effects=(ProgrammingNoise(sigma=0.0, clip=False),
                                   ProgrammingNoise(sigma=0.05, relative_to="half_range", clip=False))),
             devices.xiao_state_independent(0.1, adc_bits=None)]
    net = make_mlp(bn=bn)
    for spec in specs:
        kw = dict(samples=5, seed=1, step=2, perturb_batchnorm=bn)
        fast = draw_perturbations(net, spec, **kw)
        ref = draw_perturbations(net, spec, weight_domain=False, **kw)
        assert fast.deltas.keys() == ref.deltas.keys() and not fast.is_zero
        for k, r in ref.deltas.items():
            # round-off: 1e-5 of the largest perturbation is ~80 float32 ulps; other base draws would differ O(1)
            torch.testing.assert_close(fast.deltas[k], r, rtol=0, atol=1e-5 * float(r.abs().max()), msg=k)


def _module_imports(path, package):
    """(module, names) imported by ``path``'s module-level code (``if`` blocks included, functions excluded)."""
    import ast

    tree = ast.parse(path.read_text())
    out, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If):
            todo += node.body + node.orelse
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            out.append((f"{base}.{node.module}" if node.module else base, [a.name for a in node.names]))
    return out


@pytest.mark.parametrize("sub", ["training", "calibration", "hessian", "devices", "testing"])
def test_subpackage_modules_import_downwards_without_private_names(sub):
    """No import cycle between the modules of a subpackage (also none hidden under TYPE_CHECKING or at the bottom
    of a file), and no private ``_name`` imported from a sibling module."""
    from pathlib import Path

    import anvm_stats

    root = Path(anvm_stats.__file__).parent / sub
    package = f"anvm_stats.{sub}"
    graph = {}
    for path in root.glob("*.py"):
        mod = package if path.stem == "__init__" else f"{package}.{path.stem}"
        imports = _module_imports(path, package)
        private = [(m, n) for m, names in imports for n in names if n.startswith("_") and m.startswith(package)]
        assert not private, (mod, private)
        graph[mod] = {m for m, _ in imports if m.startswith(package + ".") and m != mod}
    state = {}

    def visit(m, stack):
        assert state.get(m) != "open", " -> ".join(stack + [m])
        if state.get(m) is None:
            state[m] = "open"
            for n in graph.get(m, ()):
                visit(n, stack + [m])
            state[m] = "done"

    for m in graph:
        visit(m, [])


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
