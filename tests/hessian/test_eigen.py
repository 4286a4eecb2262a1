"""anvm_stats.hessian.eigen: top eigenvalues per layer block against numpy's eigvalsh of the exact Hessian."""

import numpy as np
import pytest
import torch

from anvm_stats.errors import ConfigError
from anvm_stats.hessian import HessianOperator, top_eigenvalue, top_eigenvalues
from tests.helpers import (QUAD_LAYERS, make_quadratic, quad_loss, snapshot, assert_unchanged)
from tests.helpers import hessian_case, layer_blocks


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny problems: one thread, restored afterwards


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_top_eigenvalue_matches_eigvalsh(kind):
    model, op, h = hessian_case(kind)
    snap = snapshot(model)
    hn = h.numpy()
    for layer, (a, b) in layer_blocks(op, h).items():
        exact = np.linalg.eigvalsh(hn[a:b, a:b])[-1]
        for method in ("lanczos", "dense", "auto"):
            got = top_eigenvalue(op, layer, seed=1, method=method, tol=0)
            assert got == pytest.approx(exact, rel=1e-8, abs=1e-10), (layer, method)
    whole = np.linalg.eigvalsh(hn)[-1]
    assert top_eigenvalue(op, seed=2, method="lanczos", tol=0) == pytest.approx(whole, rel=1e-8, abs=1e-10)
    tops = top_eigenvalues(op, seed=0, tol=0)
    assert set(tops) == set(op.layers) | {None}
    assert tops[None] == pytest.approx(whole, rel=1e-8, abs=1e-10)
    assert_unchanged(model, snap)


def test_top_eigenvalue_is_largest_algebraic_not_largest_magnitude():
    model = make_quadratic(seed=1)
    with torch.no_grad():
        model.A.copy_(torch.diag(torch.tensor([-9.0, 1, 2, 3, 0.5, 0.1, -1, 0.2, 0.3, 2.5], dtype=torch.float64)))
    op = HessianOperator(model, (torch.zeros(2, 1), torch.zeros(2)), quad_loss, param_names=QUAD_LAYERS)
    assert top_eigenvalue(op, "first", seed=0, method="lanczos", tol=0) == pytest.approx(3.0, rel=1e-10)
    assert top_eigenvalue(op, seed=0, method="lanczos", tol=0) == pytest.approx(3.0, rel=1e-10)
    with pytest.raises(ConfigError, match="method"):
        top_eigenvalue(op, seed=0, method="power")
    with pytest.raises(ConfigError, match="layer"):
        top_eigenvalue(op, "nope", seed=0)
