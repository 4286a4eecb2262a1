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
from anvm_stats.training import (draw_perturbations, step_generators)
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
