"""sensitivity(): the second-order prediction agrees with the Monte Carlo loss increase at small sigma, for the
spec's own device model; the float twin's Hessian is taken on the folded weights the chip holds."""

import numpy as np
import pytest
import torch

import anvm_stats as av
from anvm_stats.fragility import sensitivity
from tests.helpers import fit_full_batch, make_mlp

CI = 1 - 1e-5      # Monte Carlo interval level: false-failure rate 1e-5 per comparison
Z_PRED = 4.4       # prediction standard errors allowed (two-sided 1e-5)


@pytest.fixture(scope="module")
def trained():
    """A smooth (tanh) net: for ReLU nets the kinks add an O(sigma^2) term the Hessian cannot see."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g)
    y = (x[:, :4].argmax(1))
    net = make_mlp(bn=True, sizes=(8, 16, 16, 4))
    for i, m in enumerate(net):
        if isinstance(m, torch.nn.ReLU):
            net[i] = torch.nn.Tanh()
    return fit_full_batch(net, x, y), (x, y)


@pytest.mark.slow
def test_prediction_matches_monte_carlo_at_small_sigma(trained):
    net, data = trained
    ds = sensitivity(net, av.devices.paper1(0.02), data, noise_levels=[0.003, 0.01], n_instances=200,
                     seed=0, ci=CI, rel_tol=0.02, max_probes=400, per_layer_monte_carlo=False)
    for level in (0.003, 0.01):
        pred = float(ds.predicted_total.sel(noise_level=level))
        se = float(ds.predicted_total_se.sel(noise_level=level))
        lo, hi = ds.mc_total_interval.sel(noise_level=level).values
        assert lo - Z_PRED * se <= pred <= hi + Z_PRED * se, (level, pred, lo, hi)
    # quadratic scaling of the variance term for zero-mean noise
    p = ds.predicted_total.values
    assert p[1] / p[0] == pytest.approx((0.01 / 0.003) ** 2, rel=0.15)


def test_ranks_layers_and_keeps_model_untouched(trained):
    net, data = trained
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ds = sensitivity(net, av.devices.paper1(0.05), data, n_instances=8, seed=1, eigen=True,
                     per_layer_monte_carlo=True, max_probes=40)
    assert list(ds.layer.values) == ["0", "3", "6"]   # BatchNorm folded into 0 and 3
    assert sorted(ds["rank"].values.tolist()) == [1, 2, 3]
    assert set(ds.mc_interval.dims) == {"layer", "ci_bound"}
    assert np.all(ds.top_eigenvalue.values > 0)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])


def test_mean_shift_enters_first_order(trained):
    net, data = trained
    shifted = sensitivity(net, av.devices.paper1(0.0, mu=0.01), data, n_instances=4, seed=0,
                          per_layer_monte_carlo=False, eigen=False, max_probes=20)
    assert float(abs(shifted.first_order_term).sum()) > 0
    assert float(shifted.predicted_total) == pytest.approx(float(shifted.mc_total), rel=0.2, abs=1e-4)


def test_can_be_called_twice_and_after_importing_the_hessian_subpackage(trained):
    """Regression: ``av.sensitivity`` was shadowed by the subpackage of the same name after its first call."""
    import anvm_stats.hessian  # noqa: F401

    net, data = trained
    kw = dict(n_instances=2, seed=0, monte_carlo=False, eigen=False, max_probes=10)
    first = av.sensitivity(net, av.devices.paper1(0.05), data, **kw)
    second = av.sensitivity(net, av.devices.paper1(0.05), data, **kw)
    assert callable(av.sensitivity)
    np.testing.assert_array_equal(first["predicted_total"].values, second["predicted_total"].values)
