"""HA-SGD mode="local" (local reparameterisation): closed-form moments against the hardware model's draws and
against hand-derived paper-1 formulas, the expected gradient against split/direct HA-SGD, exactness at sigma 0,
exact resume, and refusal of noise without a closed form."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats as sps
from torch import nn

from anvm_stats import devices
from anvm_stats.errors import ConfigError
from anvm_stats.hardware.effects import ConductanceLevels, ProgrammingNoise
from anvm_stats.hardware.mapping import BitSlicedMapping, DifferentialMapping
from anvm_stats.hardware.spec import HardwareSpec
from anvm_stats.training import draw_perturbations, gradient_estimator, perturb_targets, train_hasgd
from anvm_stats.training.local import LayerMoments, draw_local, local_forward, weight_moments
from tests.helpers import make_data, make_mlp
from tests.helpers import plain_sgd

FALSE_FAILURE = 1e-5   # per test (Bonferroni over the elements / projections it checks), two-sided

DIFF_STATE = HardwareSpec(mapping=DifferentialMapping(granularity="column"), g_min=0.1,
                          effects=(ProgrammingNoise(sigma=0.1, mu=0.02, relative_to="state", clip=False),
                                   ProgrammingNoise(sigma=0.05, relative_to="range", clip=False)))
BITSLICED = HardwareSpec(mapping=BitSlicedMapping(n_slices=2, bits_per_slice=2), bias="digital",
                         effects=(ProgrammingNoise(sigma=0.05, mu=0.01, clip=False),))


def _bounds(n_tests: int, dof: int):
    z = sps.norm.ppf(1 - FALSE_FAILURE / (4 * n_tests))
    lo, hi = sps.chi2.ppf([FALSE_FAILURE / (4 * n_tests), 1 - FALSE_FAILURE / (4 * n_tests)], dof) / dof
    return z, lo, hi


def test_linear_output_moments_match_paper1_closed_form():
    """y = x (W + dW)^T + b + db with paper 1's dW~ ~ N(range mu, (range sigma)^2) on W~ = [W, b/s]:
    mean x W^T + b + range mu (sum x + s), variance (range sigma)^2 (|x|^2 + s^2)."""
    sigma, mu, N = 0.2, 0.03, 20000
    with torch.random.fork_rng():
        torch.manual_seed(0)
        lin = nn.Linear(6, 5)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    W, b = lin.weight.detach().double(), lin.bias.detach().double()
    half = lambda t: (t.max() - t.min()) / 2  # noqa: E731
    s = half(b) / half(W)
    rng = half(torch.cat([W, b[:, None] / s], 1))
    mean = x.double() @ W.T + b + rng * mu * (x.double().sum(1, keepdim=True) + s)
    var = (rng * sigma) ** 2 * ((x.double() ** 2).sum(1, keepdim=True) + s ** 2) * torch.ones(1, 5)
    net = nn.Sequential(lin)
    lp = draw_local(net, devices.paper1(sigma, mu), samples=1, seed=0, step=0)
    with torch.no_grad(), local_forward(net, lp, [4 * N]):
        y = net(x.repeat(N, 1)).reshape(N, 4, 5).double()
    z, lo, hi = _bounds(20, N - 1)
    assert ((y.mean(0) - mean).abs() <= z * (var / N).sqrt()).all()
    ratio = y.var(0) / var
    assert ((ratio >= lo) & (ratio <= hi)).all(), ratio


@pytest.mark.parametrize("spec,bn", [(devices.paper1(0.1, 0.02), False), (DIFF_STATE, False),
                                     (devices.paper1(0.1), True), (BITSLICED, False)])
def test_weight_moments_are_those_of_the_hardware_draws(spec, bn):
    """Closed-form mean/variance per element against L draws of draw_perturbations (the Monte Carlo chips)."""
    net = make_mlp(sizes=(4, 6, 3), bn=bn)
    targets = perturb_targets(net, perturb_batchnorm=bn)
    L = 4000
    pert = draw_perturbations(net, spec, samples=L, seed=0, step=1, targets=targets)
    moments, is_zero = weight_moments(net, spec, targets)
    assert not is_zero
    pairs = []
    for t in targets:
        mom, w = moments[t.name], net.get_submodule(t.name).weight
        pairs.append((pert.deltas[f"{t.name}.weight"], mom.weight_mean, mom.weight_var.expand_as(w)))
        if mom.bias_mean is not None:
            assert mom.bias_on == (t.bn or t.name)
            pairs.append((pert.deltas[f"{mom.bias_on}.bias"], mom.bias_mean, mom.bias_var))
    n = sum(v.numel() for _, _, v in pairs)
    z, lo, hi = _bounds(n, L - 1)
    for d, m, v in pairs:
        d, v = d.double(), v.double()
        m = torch.zeros_like(v) if m is None else m.double().expand_as(v)
        assert ((d.mean(0) - m).abs() <= z * (v / L).sqrt() + 1e-6 * v.max().sqrt()).all()
        ratio = d.var(0) / v
        assert ((ratio >= lo) & (ratio <= hi)).all(), (ratio.min(), ratio.max(), lo, hi)


@pytest.mark.parametrize("conv", [False, True])
def test_row_constant_variance_shortcut_equals_full_gemm(conv):
    """|x|^2 v_o (Linear) and window sums of sum_c x^2 (conv) equal f(x^2, Var) with Var spelled out."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        m = nn.Conv2d(3, 4, 3, padding=1, stride=2) if conv else nn.Linear(7, 4)
    x = torch.randn(5, 3, 6, 6) if conv else torch.randn(5, 7)
    net = nn.Sequential(m)
    lp = draw_local(net, devices.paper1(0.1, 0.01), samples=1, seed=0, step=0, conv="local")
    mom = lp.moments["0"]
    assert mom.row_constant
    full = LayerMoments(weight_mean=mom.weight_mean.expand_as(m.weight).contiguous(),
                        weight_var=mom.weight_var.expand_as(m.weight).contiguous(), bias_mean=mom.bias_mean,
                        bias_var=mom.bias_var, bias_on=mom.bias_on)
    outs = []
    for moments in (mom, full):
        lp2 = draw_local(net, devices.paper1(0.1, 0.01), samples=1, seed=0, step=0, conv="local")
        object.__setattr__(lp2, "moments", {"0": moments})
        with local_forward(net, lp2, [5]):
            outs.append(net(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)


def _grads(net, x, y, pert_fn, mode, n):
    targets = perturb_targets(net)
    out = []
    for step in range(n):
        net.zero_grad()
        gradient_estimator(mode, 1).accumulate(net, x, y, pert_fn(step, targets), targets)
        out.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]).double())
    return torch.stack(out)


def test_expected_gradient_equals_direct_hasgd():
    """Mean local gradient over n steps vs mean direct (L=1) gradient over n independent draws: Welch z-test on
    6 fixed projections of the gradient (Bonferroni, FALSE_FAILURE). Power check: a q with a mean shift (first
    order change of the expected gradient) is told apart."""
    with torch.random.fork_rng():
        torch.manual_seed(3)
        net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).train()
    x, y = make_data(n=16, shape=(5,), n_classes=3)
    n = 600
    q, shifted = devices.paper1(0.3), devices.paper1(0.3, 0.3)
    loc = lambda spec: (lambda s, t: draw_local(net, spec, samples=1, seed=1, step=s, targets=t))  # noqa: E731
    a = _grads(net, x, y, loc(q), "local", n)
    b = _grads(net, x, y, lambda s, t: draw_perturbations(net, q, samples=1, seed=2, step=s, targets=t), "direct", n)
    c = _grads(net, x, y, loc(shifted), "local", n)
    proj = torch.randn(a.shape[1], 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z_crit = sps.norm.ppf(1 - FALSE_FAILURE / 12)

    def z(u, v):
        u, v = u @ proj, v @ proj
        return ((u.mean(0) - v.mean(0)) / (u.var(0) / n + v.var(0) / n).sqrt()).abs()
    assert (z(a, b) <= z_crit).all(), z(a, b)
    assert (z(c, b) > z_crit).any(), z(c, b)
    assert float((a.var(0).sum())) < float(b.var(0).sum())     # every sample its own draw: lower variance


def test_sigma_zero_is_plain_sgd_and_noise_trains_differently():
    net = make_mlp(bn=True)
    x, y = make_data(n=40)
    ref = plain_sgd(net, x, y, epochs=2, batch_size=8, lr=0.05, seed=5)
    kw = dict(samples=4, epochs=2, batch_size=8, lr=0.05, seed=5, mode="local", progress=False)
    res = train_hasgd(net, devices.paper1(0.0), (x, y), **kw)
    assert all(torch.equal(a, b) for a, b in zip(res.model.state_dict().values(), ref.state_dict().values()))
    noisy = train_hasgd(net, devices.paper1(0.1), (x, y), **kw)
    assert not torch.equal(noisy.model[0].weight, ref[0].weight)
    assert np.isfinite(noisy.history.train_loss.values).all() and noisy.history.attrs["mode"] == "local"


def _conv_bn_net():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                             nn.Linear(3 * 16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))


def test_resume_is_bitwise_identical_with_conv_split_and_folded_bn(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(24, 1, 4, 4, generator=g), torch.randint(0, 4, (24,), generator=g))
    q = devices.paper1(0.1, 0.01)
    kw = dict(samples=3, epochs=3, batch_size=8, lr=0.05, seed=4, mode="local",
              perturb_batchnorm=True, progress=False)
    full = train_hasgd(_conv_bn_net(), q, data, **kw)
    train_hasgd(_conv_bn_net(), q, data, checkpoint=tmp_path / "c.pt", stop_after_epoch=1, **kw)
    resumed = train_hasgd(_conv_bn_net(), q, data, checkpoint=tmp_path / "c.pt", **kw)
    assert all(torch.equal(a, b) for a, b in zip(full.model.state_dict().values(),
                                                 resumed.model.state_dict().values()))
    lp = draw_local(_conv_bn_net(), q, samples=3, seed=0, step=0,
                    targets=perturb_targets(_conv_bn_net(), perturb_batchnorm=True))
    assert [t.name for t in lp.conv_targets] == ["0"] and set(lp.moments) == {"4", "7"}
    assert lp.moments["4"].bias_on == "5" and "1.bias" in lp.conv.deltas


@pytest.mark.parametrize("spec,field", [
    (devices.xiao_state_independent(0.1, adc_bits=None), "spec.effects[0]"),                      # clipped
    (devices.rram_charan(), "spec.effects[0]"),                                 # levels, faults
    (HardwareSpec(effects=(ProgrammingNoise(sigma=0.1, clip=False, distribution="uniform"),)), "spec.effects[0]"),
    (HardwareSpec(effects=(ProgrammingNoise(sigma=0.1, clip=False),
                           ProgrammingNoise(sigma=0.1, clip=False, relative_to="state"))), "spec.effects[1]"),
    (HardwareSpec(effects=(ProgrammingNoise(sigma=0.1, clip=False), ConductanceLevels(levels=8))), "spec.effects[1]"),
])
def test_noise_without_closed_form_is_refused(spec, field):
    net, data = make_mlp(), make_data()
    with pytest.raises(ConfigError) as err:
        train_hasgd(net, spec, data, mode="local", progress=False)
    assert err.value.field == field and "split" in str(err.value)
    with pytest.raises(ConfigError):
        draw_local(net, spec, samples=2, seed=0, step=0)
    F.relu(torch.zeros(1))    # the refusal happens before any training work


def test_local_mode_adds_the_folded_noise_after_the_batchnorm():
    """Linear + BatchNorm1d in local mode: for N copies of one input, the BatchNorm's output minus the clean
    (batch-statistics) output has per channel the mean 0 and the variance sum_j x_j^2 Var dW'_cj + Var db'_c of
    the folded layer (weight_moments), within the chi-square bounds of probability 1 - 1e-5 over all checks."""
    import torch.nn.functional as F
    net = make_mlp(sizes=(4, 6, 3), bn=True).train()
    targets = perturb_targets(net)
    assert targets[0].bn == "1"
    lp = draw_local(net, devices.paper1(0.1), samples=1, seed=0, step=0, targets=targets)
    N = 4000
    x = torch.randn(1, 4, generator=torch.Generator().manual_seed(1)).expand(N, -1).contiguous()
    seen = {}
    net[1].register_forward_hook(lambda m, a, o: seen.update(out=o))
    with local_forward(net, lp, [N]):
        net(x)
    bn = net[1]
    clean = F.batch_norm(F.linear(x, net[0].weight, net[0].bias), None, None, bn.weight, bn.bias, training=True,
                         eps=bn.eps)
    noise = (seen["out"] - clean).double()
    mom = lp.moments["0"]
    var = (x[0].double() ** 2 * mom.weight_var.double().expand(6, 4)).sum(1) + mom.bias_var.double()
    z, lo, hi = _bounds(6, N - 1)
    assert (noise.mean(0).abs() <= z * (var / N).sqrt()).all()
    ratio = noise.var(0) / var
    assert ((ratio >= lo) & (ratio <= hi)).all(), ratio
