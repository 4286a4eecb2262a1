"""Top (largest algebraic) eigenvalue of a layer's diagonal Hessian block, or of the whole Hessian.

Lanczos through ``scipy.sparse.linalg.eigsh`` on a ``LinearOperator`` whose matvec is the exact HVP restricted
to the layer, from a seeded start vector; small blocks are solved densely with ``numpy.linalg.eigvalsh``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh

from ..errors import ConfigError, check_number
from .hvp import HessianOperator

METHODS = ("auto", "lanczos", "dense")


def _start_vector(seed, n: int) -> np.ndarray:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError("seed", seed, "a non-negative int")
    return np.random.default_rng(int(seed)).standard_normal(n)


def top_eigenvalue(op: HessianOperator, layer: str | None = None, *, seed: int, method: str = "auto",
                   tol: float = 1e-8, maxiter: int | None = None, dense_below: int = 32) -> float:
    """Largest algebraic eigenvalue of ``H_ll`` (``layer`` given) or of the whole Hessian over ``op``'s variables.

    Parameters
    ----------
    op : HessianOperator
    layer : str, optional
        A layer of ``op``; ``None`` for the whole Hessian (all layers of ``op`` together).
    seed : int
        Seeds the Lanczos start vector (numpy ``default_rng``).
    method : {"auto", "lanczos", "dense"}
        ``"auto"``: dense when the block has fewer than ``dense_below`` elements, else Lanczos.
    tol, maxiter : float, int
        Passed to ``eigsh`` (relative accuracy; ``tol=0`` means machine precision).

    Returns
    -------
    float
    """
    if method not in METHODS:
        raise ConfigError("method", method, f"one of {METHODS}")
    if layer is not None and layer not in op.layers:
        raise ConfigError("layer", layer, f"None or one of {list(op.layers)}")
    check_number("tol", tol, low=0.0)
    block = op if layer is None else op.subset(layer)
    n = block.numel()
    v0 = _start_vector(seed, n)
    if method == "dense" or (method == "auto" and n < dense_below) or n < 3:
        h = block.dense().detach().cpu().double().numpy()
        return float(np.linalg.eigvalsh(0.5 * (h + h.T))[-1])

    def matvec(x: np.ndarray) -> np.ndarray:
        t = torch.as_tensor(np.ascontiguousarray(x).reshape(-1))
        return block.flatten(block.hvp(block.unflatten(t))).detach().cpu().double().numpy()

    def matmat(x: np.ndarray) -> np.ndarray:
        t = torch.as_tensor(np.ascontiguousarray(x.T))                        # (k, n)
        parts = [block.unflatten(row) for row in t]
        hv = block.hvp_batch({p: torch.stack([d[p] for d in parts]) for p in block.names})
        return torch.cat([hv[p].reshape(t.shape[0], -1) for p in block.names], 1).cpu().double().numpy().T

    lin = LinearOperator((n, n), matvec=matvec, matmat=matmat, dtype=np.float64)
    vals = eigsh(lin, k=1, which="LA", v0=v0, tol=tol, maxiter=maxiter, return_eigenvectors=False)
    return float(vals[-1])


def top_eigenvalues(op: HessianOperator, layers: Sequence[str] | None = None, *, seed: int,
                    whole_model: bool = True, **kwargs) -> dict[str | None, float]:
    """``{layer: top eigenvalue of H_ll}`` for ``layers`` (default all of ``op``'s), plus key ``None`` for the whole
    Hessian when ``whole_model``. Layer ``i`` uses start seed ``seed + i``; the whole model ``seed + len``."""
    names = list(op.layers) if layers is None else list(layers)
    out: dict[str | None, float] = {k: top_eigenvalue(op, k, seed=int(seed) + i, **kwargs)
                                    for i, k in enumerate(names)}
    if whole_model:
        out[None] = top_eigenvalue(op, None, seed=int(seed) + len(names), **kwargs)
    return out
