"""anvm_stats.training.perturb: perturbation statistics follow the hardware model (paper 1), the perturbation is
the Monte Carlo chip, weight-domain draws equal the conductance-domain path."""

import copy

import pytest
import torch
from scipy import stats as sps

from anvm_stats import devices
from anvm_stats.analog.fold import fold_batchnorm
from anvm_stats.analog.program import prepare
from anvm_stats.hardware.spec import HardwareSpec
from anvm_stats.sampler import ChipSampler
from anvm_stats.training import draw_perturbations, perturb_targets, step_generators
from tests.helpers import make_mlp


FAMILY_FALSE_FAILURE = 1e-6   # per statistical assertion (two-sided)


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
    """Perturbed weights equal the engine's chips on the same base draws; with BatchNorm the deltas are those of
    the folded layer (``dW'``, ``db'``) the chip holds."""
    net = make_mlp(bn=bn)
    L = 3
    targets = perturb_targets(net, perturb_batchnorm=bn)
    pert = draw_perturbations(net, spec, samples=L, seed=0, step=4, targets=targets)
    paired = {t.name: t.bn for t in targets if t.bn is not None}
    assert bool(paired) == bn
    program = prepare(net, spec)
    sampler = ChipSampler(program, 0)
    draws = sampler.draw_from(spec.program_effects, step_generators(0, 4, L))
    chips = program.weights(sampler.program_chips(draws, spec, K=L))
    for l in range(L):
        copy_ = copy.deepcopy(net)
        folded_keys = {f"{n}.weight" for n in paired} | {f"{b}.bias" for b in paired.values()}
        with torch.no_grad():
            for k, p in copy_.named_parameters():
                if k in pert.deltas and k not in folded_keys:
                    p.add_(pert.deltas[k][l])
        fold_batchnorm(copy_)
        with torch.no_grad():
            for n, b in paired.items():
                copy_.get_submodule(n).weight.add_(pert.deltas[f"{n}.weight"][l])
                copy_.get_submodule(n).bias.add_(pert.deltas[f"{b}.bias"][l])
        for plan in program.plans:
            m = copy_.get_submodule(plan.name)
            w = torch.cat([m.weight.reshape(m.weight.shape[0], -1), m.bias[:, None] / plan.bias_scale], 1)
            torch.testing.assert_close(w, chips[plan.name][l], rtol=1e-4, atol=1e-5)


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


def _conv_bn(seed=0):
    """conv(2 -> 4, 3x3, no bias) -> BatchNorm with running statistics far from (0, 1), so the BN scale k differs
    per channel (0.4 .. 1.9)."""
    from torch import nn
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                            nn.Linear(4 * 5 * 5, 3))
        bn = net[1]
        bn.running_var.copy_(torch.tensor([0.3, 1.0, 2.0, 4.0]))
        bn.running_mean.normal_(0, 0.5)
        bn.weight.data.copy_(torch.tensor([0.8, 1.2, 0.6, 0.8]))
        bn.bias.data.normal_(0, 0.3)
    return net


def test_batchnorm_training_noise_matches_the_engines_folded_layer_moments():
    """By default (train_hasgd's perturb_batchnorm=True) the training noise of a conv followed by BatchNorm has,
    per output channel, the variance the engine gives the folded conv's weights and its bias column
    (analog.moments.weight_perturbation_moments over sampled chips). Each channel's pooled variance is a
    chi-square estimate on both sides (zero-mean Gaussian noise): their ratio must lie inside the F(df_train,
    df_engine) interval of probability 1 - 1e-5 / (2 x 8 checks). The old default (unfolded layer, no bias noise)
    is off by 1/k^2 per channel (0.28 .. 6.25) and has no bias noise."""
    from anvm_stats.analog.moments import weight_perturbation_moments
    from anvm_stats.training import HASGDConfig

    assert HASGDConfig().perturb_batchnorm is True
    net, spec = _conv_bn(), devices.paper1(0.1)
    L, n_draws = 400, 400
    pert = draw_perturbations(net, spec, samples=L, seed=0, step=0)
    program = prepare(net.eval(), spec)
    plan = next(p for p in program.plans if p.name == "0")
    mom = weight_perturbation_moments(program, n_draws=n_draws, seed=1)["0"]
    n_in = 2 * 3 * 3
    dw = pert.deltas["0.weight"].reshape(L, 4, n_in).double()
    assert "1.bias" in pert.deltas, "no bias noise on the folded BatchNorm"
    db = pert.deltas["1.bias"].double()
    alpha = 1e-5 / (2 * 8)
    for train_var, df_t, engine_var, df_e in (
            (dw.square().mean((0, 2)), L * n_in, mom.variance[:, :n_in].mean(1), (n_draws - 1) * n_in),
            (db.square().mean(0), L, mom.variance[:, n_in] * plan.bias_scale ** 2, n_draws - 1)):
        ratio = (train_var / engine_var).numpy()
        lo, hi = sps.f.ppf(alpha, df_t, df_e), sps.f.isf(alpha, df_t, df_e)
        assert ((ratio >= lo) & (ratio <= hi)).all(), (ratio, lo, hi)


def test_batchnorm_noise_is_added_after_the_batchnorm_in_train_mode():
    """Split mode, two groups: the BatchNorm normalises the clean conv output with its batch statistics and the
    folded noise conv(x_g, dW'_g) + db'_g is added after it, neither rescaled nor absorbed by the batch mean."""
    import torch.nn.functional as F

    from anvm_stats.training import perturbed_forward
    net = _conv_bn().train()
    targets = perturb_targets(net)
    pert = draw_perturbations(net, devices.paper1(0.1), samples=2, seed=0, step=3, targets=targets)
    x = torch.randn(6, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    seen = {}
    net[1].register_forward_hook(lambda m, a, o: seen.update(out=o))
    with perturbed_forward(net, pert, targets, [3, 3]):
        net(x)
    clean = F.batch_norm(F.conv2d(x, net[0].weight, padding=1), None, None, net[1].weight, net[1].bias,
                         training=True, eps=net[1].eps)
    for g in range(2):
        sl = slice(3 * g, 3 * g + 3)
        noise = F.conv2d(x[sl], pert.deltas["0.weight"][g], padding=1) + pert.deltas["1.bias"][g][:, None, None]
        torch.testing.assert_close(seen["out"][sl], clean[sl] + noise, rtol=1e-5, atol=1e-5)


# --- composite layers: attention and recurrent arrays are perturbed as the engine maps them -------------------------
class _Attn(torch.nn.Module):
    def __init__(self, e=8):
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(e, 2, batch_first=True)

    def forward(self, x):
        pad = torch.zeros(x.shape[:2], dtype=torch.bool)
        pad[::2, -1] = True                             # every other sample ignores its last token
        return self.attn(x, x, x, pad, False)[0].mean(1)   # key_padding_mask, need_weights given positionally


def test_attention_arrays_are_drawn_like_the_linear_arrays_the_engine_maps():
    """The packed in_proj (with in_proj_bias) and out_proj of an attention layer get exactly the perturbations of
    two Linear layers holding the same matrices (same arrays, same device order, same draws)."""
    torch.manual_seed(0)
    net = _Attn().eval()
    a = net.attn
    twin = torch.nn.Sequential(torch.nn.Linear(8, 24), torch.nn.Linear(8, 8))
    with torch.no_grad():
        twin[0].weight.copy_(a.in_proj_weight), twin[0].bias.copy_(a.in_proj_bias)
        twin[1].weight.copy_(a.out_proj.weight), twin[1].bias.copy_(a.out_proj.bias)
    spec = devices.paper1(0.1)
    targets = perturb_targets(net)
    assert targets[0].arrays == (("in_proj_weight", "in_proj_bias"), ("out_proj.weight", "out_proj.bias"))
    got = draw_perturbations(net, spec, samples=3, seed=1, step=4, targets=targets)
    ref = draw_perturbations(twin, spec, samples=3, seed=1, step=4)
    pairs = {"attn.in_proj_weight": "0.weight", "attn.in_proj_bias": "0.bias", "attn.out_proj.weight": "1.weight",
             "attn.out_proj.bias": "1.bias"}
    assert set(got.deltas) == set(pairs)
    for k, r in pairs.items():
        torch.testing.assert_close(got.deltas[k], ref.deltas[r], rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["attention", "lstm", "gru"])
def test_grouped_forward_of_composite_layers_equals_per_group_copies(kind):
    """perturbed_forward on attention / LSTM / GRU: group g's outputs equal a copy of the layer holding the
    weights w + dw_g, and gradients reach the clean weights."""
    from anvm_stats.training.grouped import perturbed_forward
    torch.manual_seed(0)
    if kind == "attention":
        net = _Attn().train()
    else:
        rnn = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(5, 6, num_layers=2, bidirectional=True,
                                                                   batch_first=True)
        net = torch.nn.Sequential()
        net.rnn = rnn
        net.forward = lambda x: net.rnn(x)[0].mean(1)
    x = torch.randn(7, 4, 8 if kind == "attention" else 5)
    targets = perturb_targets(net)
    pert = draw_perturbations(net, devices.paper1(0.1), samples=2, seed=0, step=0, targets=targets)
    sizes = [4, 3]
    with perturbed_forward(net, pert, targets, sizes):
        out = net(x)
    out.sum().backward()
    params = dict(net.named_parameters())
    assert all(params[k].grad is not None and params[k].grad.abs().sum() > 0 for k in pert.deltas)
    for g, (lo, hi) in enumerate([(0, 4), (4, 7)]):
        copy_ = copy.deepcopy(net)
        if kind != "attention":
            copy_.forward = lambda x, c=copy_: c.rnn(x)[0].mean(1)
        with torch.no_grad():
            cp = dict(copy_.named_parameters())
            for k, d in pert.deltas.items():
                cp[k].add_(d[g])
            torch.testing.assert_close(out[lo:hi], copy_(x[lo:hi]), rtol=1e-5, atol=1e-6)
