"""anvm_stats.hessian.trace: Hutchinson traces and exact diagonals against the exact Hessian of tiny float64 nets.

Statistical tolerance: |estimate - exact| <= Z * se with Z = 4.9 (two-sided normal false-failure rate 1e-6 per
check); 400 probes so that the sample se is reliable (t with 399 df: rate ~1.3e-6). Fixed seeds."""

import numpy as np
import pytest
import torch

from anvm_stats.errors import ConfigError
from anvm_stats.hessian import HessianOperator, exact_diagonal, hutchinson_trace
from tests.helpers import (QUAD_LAYERS, make_quadratic, quad_loss, snapshot, assert_unchanged)
from tests.helpers import hessian_case, layer_blocks


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny problems: one thread, restored afterwards


Z = 4.9


Z_PER_ELEMENT = 5.5   # Bonferroni over <= 100 diagonal elements: 100 * P(|N| > 5.5) ~ 4e-6


N = 400


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_traces_agree_with_exact_within_their_error(kind):
    model, op, h = hessian_case(kind)
    snap = snapshot(model)
    est = hutchinson_trace(op, seed=11, min_probes=N, max_probes=N, diagonal=True)
    assert est.n_probes == N
    ds = est.to_dataset()
    for layer, (a, b) in layer_blocks(op, h).items():
        exact = float(torch.trace(h[a:b, a:b]))
        se = float(ds["trace_se"].sel(layer=layer))
        assert 0 < se < np.inf
        assert abs(float(ds["trace"].sel(layer=layer)) - exact) <= Z * se, layer
        # the diagonal estimate sums to the same per-probe quadratic forms
        total = sum(float(est.diagonal[n].sum()) for n in op.layers[layer])
        assert total == pytest.approx(est.trace[layer], rel=1e-10, abs=1e-12)
    # per-element diagonal: mean of z_i (H z)_i = H_ii + sum_{j != i} H_ij z_i z_j, sd^2 = sum_{j != i} H_ij^2
    diag_est = op.flatten(est.diagonal)
    off = h - torch.diag(torch.diagonal(h))
    sd = torch.sqrt((off ** 2).sum(1) / N)
    assert bool(torch.all((diag_est - torch.diagonal(h)).abs() <= Z_PER_ELEMENT * sd + 1e-12))
    torch.testing.assert_close(op.flatten(exact_diagonal(op)), torch.diagonal(h), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(op.flatten(exact_diagonal(op, chunk=3)), torch.diagonal(h), rtol=1e-9, atol=1e-12)
    assert_unchanged(model, snap)


def test_scaled_probes_estimate_the_weighted_diagonal_sum():
    model, op, h = hessian_case("mlp")
    g = torch.Generator().manual_seed(5)
    scale = {n: torch.rand(op.shapes[n], generator=g, dtype=torch.float64) for n in op.names}
    scale[op.names[-1]] = 0.7                                      # a scalar for one tensor
    est = hutchinson_trace(op, seed=2, min_probes=N, max_probes=N, scale=scale)
    s2 = op.flatten({n: torch.as_tensor(v, dtype=torch.float64).expand(op.shapes[n]) for n, v in scale.items()}) ** 2
    for layer, (a, b) in layer_blocks(op, h).items():
        exact = float((s2[a:b] * torch.diagonal(h)[a:b]).sum())
        assert abs(est.trace[layer] - exact) <= Z * est.se[layer], layer


def test_probes_do_not_depend_on_chunking_and_seeds_repeat():
    _, op, _ = hessian_case("conv")
    runs = [hutchinson_trace(op, seed=3, min_probes=20, max_probes=20, probes_per_pass=k) for k in (1, 7, 20)]
    for r in runs[1:]:
        for n in op.names:
            np.testing.assert_allclose(r.samples[n], runs[0].samples[n], rtol=1e-10, atol=1e-13)
    other = hutchinson_trace(op, seed=4, min_probes=20, max_probes=20)
    assert not np.allclose(other.samples[op.names[0]], runs[0].samples[op.names[0]])
    gen = torch.Generator().manual_seed(3)
    same = hutchinson_trace(op, seed=gen, min_probes=20, max_probes=20)
    np.testing.assert_allclose(same.samples[op.names[0]], runs[0].samples[op.names[0]], rtol=1e-10, atol=1e-13)


def test_sequential_stopping():
    _, op, _ = hessian_case("mlp")
    assert hutchinson_trace(op, seed=0, rel_tol=0.0, min_probes=5, max_probes=13, probes_per_pass=4).n_probes == 13
    assert hutchinson_trace(op, seed=0, rel_tol=1e9, min_probes=6, max_probes=50, probes_per_pass=1).n_probes == 6
    est = hutchinson_trace(op, seed=0, rel_tol=0.1, min_probes=5, max_probes=2000, probes_per_pass=1)
    n = est.n_probes
    assert 5 < n < 2000
    rel = [est.se[k] / abs(est.trace[k]) for k in op.layers]
    assert max(rel) <= 0.1
    # one probe earlier, some layer was not yet precise enough
    prev = {k: v[:n - 1] for k, v in est.layer_samples().items()}
    assert max(np.std(v, ddof=1) / np.sqrt(n - 1) / abs(np.mean(v)) for v in prev.values()) > 0.1


def test_diagonal_hessian_is_exact_with_rademacher_probes():
    model = make_quadratic(diagonal=True)
    op = HessianOperator(model, (torch.zeros(3, 1), torch.zeros(3)), quad_loss, param_names=QUAD_LAYERS)
    est = hutchinson_trace(op, seed=0, rel_tol=0.01, min_probes=4, max_probes=100, probes_per_pass=2)
    assert est.n_probes == 4                                       # se is exactly 0: z_i^2 = 1
    d = torch.diagonal(model.A)
    assert est.trace["first"] == pytest.approx(float(d[:6].sum()), rel=1e-12)
    assert est.trace["second"] == pytest.approx(float(d[6:].sum()), rel=1e-12)
    assert est.se["first"] == 0.0


def test_trace_errors_name_the_field():
    _, op, _ = hessian_case("mlp")
    for kwargs, field in [(dict(min_probes=1), "min_probes"), (dict(min_probes=10, max_probes=5), "max_probes"),
                          (dict(rel_tol=-1.0), "rel_tol"), (dict(scale={"0.weight": -1.0}), "scale"),
                          (dict(scale={"nope": 1.0}), "scale"), (dict(probes_per_pass=0), "probes_per_pass")]:
        with pytest.raises(ConfigError, match=field):
            hutchinson_trace(op, seed=0, **kwargs)
    with pytest.raises(ConfigError, match="seed"):
        hutchinson_trace(op, seed=-1)
