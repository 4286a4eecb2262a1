"""Per-chip recovery and time: digital calibration after programming (:func:`calibrate`), drift over time with
global drift compensation (:func:`drift_sweep`), knowledge distillation under the device statistics
(:func:`train_distilled`), and paired comparisons of these methods on the same chips (:func:`compare_recovery`)."""

from __future__ import annotations

from typing import Mapping, Sequence

import xarray as xr
from torch import nn

from .. import dims, stats
from ..errors import ConfigError
from ..hardware.spec import HardwareSpec
from ..montecarlo import evaluate
from ..rng import SeedLike
from .adapt import calibrate
from .options import CalibrationOptions
from .distill import DistillConfig, DistillResult, train_distilled, weight_perturbation
from .drift import (
    DEFAULT_TIMES, DriftEffect, GlobalCompensation, compensation_gains, drift_effects, drift_sweep, plot_drift,
    reference_read, reference_time,
)

#: dim of :func:`compare_recovery` results: one recovery method (a model, optionally followed by a calibration).
#: Not "method": that name is a keyword of ``DataArray.sel``.
METHOD = "recovery"

__all__ = ["CalibrationOptions", "calibrate", "DistillConfig", "DistillResult", "train_distilled",
           "weight_perturbation", "DEFAULT_TIMES", "DriftEffect", "GlobalCompensation", "compensation_gains",
           "drift_effects", "drift_sweep", "plot_drift", "reference_read", "reference_time", "compare_recovery",
           "METHOD"]


def compare_recovery(models: nn.Module | Mapping[str, nn.Module], spec: HardwareSpec, data, *, recovery_data,
                     params: Sequence[str | tuple[str, dict]] = ("column_affine", "sparse"),
                     n_instances: int = 32, seed: SeedLike = 0, ci: float = 0.95, baseline: str | None = None,
                     progress: bool = False, **calibrate_kw) -> xr.Dataset:
    """Compare recovery methods on the SAME chips: each model as mapped (naive) and after each calibration.

    Every model is evaluated on chip instances ``0..n_instances-1`` of ``seed`` (the same base random draws:
    common random numbers), so the differences between methods are paired per chip.

    Parameters
    ----------
    models : nn.Module or dict of name -> nn.Module
        E.g. ``{"naive": plain, "hasgd": robust, "distilled": student}``; a single module is named ``"naive"``.
    spec : HardwareSpec
    data, recovery_data
        Held-out evaluation data and the samples each chip is adapted on (see :func:`calibrate`).
    params : sequence of {"column_affine", "batchnorm", "sparse"} or of (label, dict of calibrate kwargs)
        Calibrations applied after programming; method ``"<model>+<label>"`` for each, e.g.
        ``("sparse-sens", {"params": "sparse", "sparse_select": "sensitivity"})``.
    baseline : str, optional
        Method the gains are measured against (default: the first model, uncalibrated).
    **calibrate_kw
        Passed to :func:`calibrate` (steps, lr, n_recovery, sparse_select, ...).

    Returns
    -------
    xr.Dataset
        ``accuracy`` and ``loss`` ``(recovery, instance)``; ``accuracy_mean`` ``(recovery)`` with
        ``accuracy_mean_interval`` ``(recovery, ci_bound)``; ``gain`` ``(recovery)`` = mean over chips of
        ``accuracy[m] - accuracy[baseline]`` with its paired-t interval ``gain_interval``
        ``(recovery, ci_bound)``; attrs ``baseline``, ``confidence``.
    """
    if isinstance(models, nn.Module):
        models = {"naive": models}
    if not models:
        raise ConfigError("models", models, "at least one model")
    acc, loss = {}, {}
    for name, model in models.items():
        if not params:
            ds = evaluate(model, spec, data, n_instances=n_instances, seed=seed, progress=progress)
            acc[name], loss[name] = ds[dims.ACCURACY], ds[dims.LOSS]
        for p in params:
            label, kw = (p, {"params": p}) if isinstance(p, str) else (p[0], dict(p[1]))
            ds = calibrate(model, spec, data, recovery_data=recovery_data, n_instances=n_instances, seed=seed,
                           progress=progress, **{**calibrate_kw, **kw})
            acc.setdefault(name, ds[f"{dims.ACCURACY}_before"])
            loss.setdefault(name, ds[f"{dims.LOSS}_before"])
            acc[f"{name}+{label}"], loss[f"{name}+{label}"] = ds[f"{dims.ACCURACY}_after"], ds[f"{dims.LOSS}_after"]
    names = list(acc)
    baseline = names[0] if baseline is None else baseline
    if baseline not in acc:
        raise ConfigError("baseline", baseline, f"one of the methods {names}")
    a = xr.concat([acc[n] for n in names], dim=xr.DataArray(names, dims=METHOD)).rename(dims.ACCURACY)
    lo = xr.concat([loss[n] for n in names], dim=xr.DataArray(names, dims=METHOD)).rename(dims.LOSS)
    m = stats.mean(a, dim=dims.INSTANCE, ci=ci)
    d = stats.paired_difference(a, a.sel({METHOD: baseline}, drop=True), dim=dims.INSTANCE, ci=ci)
    out = xr.Dataset({dims.ACCURACY: a, dims.LOSS: lo, "accuracy_mean": m["estimate"],
                      "accuracy_mean_interval": m["interval"], "gain": d["estimate"], "gain_interval": d["interval"]})
    out.attrs.update(baseline=baseline, confidence=ci, hardware_spec=spec.to_json(), n_instances=n_instances,
                     calibrations=",".join(p if isinstance(p, str) else p[0] for p in params))
    return out
