"""``sensitivity(model, spec, data)``: which layers are fragile under a HardwareSpec, the second-order
prediction of the loss increase, and the Monte Carlo loss increase beside it.

The Hessian is taken on a float twin of the network with BatchNorm folded exactly as the analog program folds it,
so its Linear/Conv parameters are the weights that live on the chip. The perturbation moments (mean and variance of
every weight) are sampled from the same ChipSampler the Monte Carlo engine uses, so the prediction speaks of the
same device model, clipping, faults and finite levels included.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import xarray as xr
from torch import nn

from . import dims
from .analog.fold import fold_batchnorm
from .analog.moments import weight_perturbation_moments
from .analog.program import LayerFilter, prepare
from .hardware.spec import HardwareSpec
from .hessian import HessianOperator, LayerNoiseMoments, hutchinson_trace, predict_loss_increase, top_eigenvalues
from .montecarlo import sweep
from .rng import SeedLike, root_sequence
from .stats import mean as mean_ci


def _layer_moments(program, plans, moments, twin: nn.Module):
    """Augmented-weight moments -> per-parameter LayerNoiseMoments (weight shape; bias = s * column)."""
    out = {}
    for plan in plans:
        m = moments[plan.name]
        mod = twin.get_submodule(plan.name)
        n_in = plan.in_features
        var = {f"{plan.name}.weight": m.variance[:, :n_in].reshape(mod.weight.shape).to(mod.weight.dtype)}
        mean = {f"{plan.name}.weight": m.mean[:, :n_in].reshape(mod.weight.shape).to(mod.weight.dtype)}
        if plan.bias_mode == "column":
            s = plan.bias_scale
            var[f"{plan.name}.bias"] = (m.variance[:, -1] * s * s).to(mod.bias.dtype)
            mean[f"{plan.name}.bias"] = (m.mean[:, -1] * s).to(mod.bias.dtype)
        out[plan.name] = LayerNoiseMoments(variance=var, mean=mean)
    return out


def _mc_increase(model, spec, data, grid, n_instances, seed, layers, base_loss, progress, ci):
    ds = sweep(model, spec, data, grid=grid, n_instances=n_instances, seed=seed, layers=layers,
               progress=progress)
    inc = ds[dims.LOSS] - base_loss
    return mean_ci(inc, dim=dims.INSTANCE, ci=ci)


def sensitivity(model: nn.Module, spec: HardwareSpec, data, *, noise_levels: Sequence[float] | None = None,
                seed: SeedLike = 0, n_draws: int = 512, n_instances: int = 64, monte_carlo: bool = True,
                per_layer_monte_carlo: bool = True, layers: LayerFilter = None, rel_tol: float = 0.05,
                max_probes: int = 200, eigen: bool = True, ci: float = 0.95, progress: bool = False) -> xr.Dataset:
    """Per-layer Hessian sensitivity and predicted vs Monte Carlo loss increase.

    Parameters
    ----------
    model : nn.Module
        Trained network (never modified).
    spec : HardwareSpec
        Device model; ``noise_levels`` (optional) sweeps its ``noise_level`` knob.
    data : (x, y) tensors, Data, or batches
        Data the loss (and its Hessian) is averaged over; also the Monte Carlo evaluation data.
    n_draws : int
        Chips sampled to estimate the per-weight perturbation moments.
    n_instances : int
        Chips of the Monte Carlo check (per noise level, and per layer with ``per_layer_monte_carlo``).
    ci : float
        Confidence level of the Monte Carlo intervals.

    Returns
    -------
    xr.Dataset
        Dims ``layer`` and ``noise_level``: ``trace``, ``trace_se``, ``trace_per_param``, ``rank``,
        [``top_eigenvalue``], ``predicted_increase`` (+ ``_se``), ``first_order_term``, ``second_order_term``;
        ``predicted_total`` (+ ``_se``) over ``noise_level``; with ``monte_carlo``: ``mc_total`` and
        ``mc_total_interval`` (dim ``ci_bound``), and per layer ``mc_increase`` / ``mc_interval`` (only that
        layer analog, the others exact). ``base_loss`` is the float network's loss.
    """
    root = root_sequence(seed)
    s_trace, s_eig, s_moments, s_pred = (int(v) for v in root.generate_state(4, dtype=np.uint32))
    program = prepare(model, spec, calibration_data=data, layers=layers)
    twin = copy.deepcopy(model).eval().float()
    if spec.fold_batchnorm:
        fold_batchnorm(twin)
    names = {p.name: [f"{p.name}.weight"] + ([f"{p.name}.bias"] if twin.get_submodule(p.name).bias is not None
                                              else []) for p in program.plans}
    op = HessianOperator(twin, data, param_names=names)
    base_loss = float(op.loss())
    traces = hutchinson_trace(op, seed=s_trace, rel_tol=rel_tol, max_probes=max_probes)
    eig = top_eigenvalues(op, seed=s_eig) if eigen else None
    levels = list(noise_levels) if noise_levels is not None else [None]
    per_level = []
    for level in levels:
        spec_pt = spec if level is None else spec.with_knobs(noise_level=level)
        moments = weight_perturbation_moments(program, spec_pt, n_draws=n_draws, seed=s_moments)
        pred = predict_loss_increase(op, _layer_moments(program, program.plans, moments, twin), seed=s_pred,
                                     traces=traces, top_eigenvalues=eig, rel_tol=rel_tol, max_probes=max_probes)
        per_level.append(pred)
    out = xr.concat(per_level, dim=dims.NOISE_LEVEL, data_vars="all", coords="minimal",
                    compat="override") if noise_levels is not None else per_level[0]
    if noise_levels is not None:
        out = out.assign_coords({dims.NOISE_LEVEL: np.asarray(levels, dtype=float)})
        for v in ("trace", "trace_se", "n_params", "top_eigenvalue"):
            if v in out and dims.NOISE_LEVEL in out[v].dims:
                out[v] = out[v].isel({dims.NOISE_LEVEL: 0}, drop=True)
    out["trace_per_param"] = out["trace"] / out["n_params"]
    order = np.argsort(-out["trace_per_param"].values, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    out["rank"] = (dims.LAYER, rank)
    out["base_loss"] = base_loss
    if monte_carlo:
        grid = None if noise_levels is None else {dims.NOISE_LEVEL: list(levels)}
        total = _mc_increase(model, spec, data, grid, n_instances, seed, layers, base_loss, progress, ci)
        out["mc_total"] = total["estimate"]
        out["mc_total_interval"] = total["interval"]
        if per_layer_monte_carlo:
            rows = [_mc_increase(model, spec, data, grid, n_instances, seed, [p.name], base_loss, progress, ci)
                    for p in program.plans]
            stacked = xr.concat(rows, dim=dims.LAYER).assign_coords({dims.LAYER: out[dims.LAYER].values})
            out["mc_increase"] = stacked["estimate"]
            out["mc_interval"] = stacked["interval"]
        out.attrs["confidence"] = ci
    out.attrs.update(hardware_spec=spec.to_json(), n_draws=n_draws, n_instances=n_instances,
                     seed_entropy=str(root.entropy))
    return out
