"""Hessian sensitivity of a network's layers: exact HVPs, Hutchinson traces, top eigenvalues, and the
second-order prediction of the loss increase under analog weight noise (paper 1 of REFERENCES.md).

Everything is a pure function of a model (never modified), a data source and a grouping of parameter names
into layers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.stats
import torch.nn.functional as F
import xarray as xr
from torch import nn

from ..dims import LAYER
from .eigen import top_eigenvalue, top_eigenvalues
from .hvp import DEFAULT_LAYER_TYPES, HessianOperator, default_layers, resolve_layers
from .predict import LayerNoiseMoments, predict_loss_increase
from .trace import TraceEstimate, exact_diagonal, hutchinson_trace

__all__ = ["HessianOperator", "hutchinson_trace", "top_eigenvalue", "top_eigenvalues", "LayerNoiseMoments",
           "predict_loss_increase", "layer_sensitivity", "TraceEstimate", "exact_diagonal", "default_layers",
           "resolve_layers", "DEFAULT_LAYER_TYPES"]


def layer_sensitivity(model: nn.Module, data, layers=None, *, seed: int = 0, rel_tol: float = 0.05,
                      max_probes: int = 200, min_probes: int = 10, eigen: bool = True,
                      loss_fn: Callable = F.cross_entropy, batch_size: int | None = None) -> xr.Dataset:
    """Which layers are fragile: per-layer Hessian trace (Hutchinson), top eigenvalue, and a ranking.

    Parameters
    ----------
    model : nn.Module
        Not modified.
    data : (x, y) tensors, Data, or iterable of (x, y) batches
    layers : None, sequence of module names, or mapping layer -> parameter names
        Default: every ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` (its weight and bias).
    seed : int, default 0
        Root seed; the trace probes and the Lanczos start vectors use independent children of it.
    rel_tol, max_probes, min_probes
        Hutchinson stopping rule (see :func:`hutchinson_trace`).
    eigen : bool
        Also compute each layer's top eigenvalue and the whole model's (``top_eigenvalue_model``).

    Returns
    -------
    xr.Dataset
        Dim ``layer``: ``trace``, ``trace_se``, ``n_probes``, ``n_params``, ``trace_per_param``, ``rank``
        (1 = largest trace per parameter: the most fragile), [``top_eigenvalue``]; scalars ``loss`` and
        [``top_eigenvalue_model``].
    """
    op = HessianOperator(model, data, loss_fn, param_names=resolve_layers(model, layers), batch_size=batch_size)
    trace_seed, eigen_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2, dtype=np.uint32))
    est = hutchinson_trace(op, seed=trace_seed, rel_tol=rel_tol, min_probes=min_probes, max_probes=max_probes)
    ds = est.to_dataset()
    ds["trace_per_param"] = ds["trace"] / ds["n_params"]
    ranks = scipy.stats.rankdata(-ds["trace_per_param"].values, method="min").astype(int)
    ds["rank"] = (LAYER, ranks)
    ds["loss"] = ((), op.loss())
    if eigen:
        tops = top_eigenvalues(op, seed=eigen_seed, whole_model=True)
        ds["top_eigenvalue"] = (LAYER, [tops[k] for k in op.layers])
        ds["top_eigenvalue_model"] = ((), tops[None])
    ds.attrs.update(seed=int(seed), rel_tol=float(rel_tol), max_probes=int(max_probes),
                    description="per-layer Hessian sensitivity of the mean loss; rank 1 = most fragile by "
                                "trace per parameter")
    return ds
