"""Sequential Monte Carlo: keep drawing chips until a confidence interval is narrow enough.

``evaluate_until`` prepares the program once and evaluates instances ``0, 1, 2, ...`` in rounds (instance ``i``
is the same chip it would be in any other run with the same seed) until the interval of the chosen statistic of
``variable`` is at most ``target_width`` wide at every grid point, or ``max_instances`` is reached.  The intervals
are those of :func:`anvm_stats.stats.sequential_estimate`: they keep their level after this data-dependent
stop (an anytime-valid confidence sequence for the mean).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import xarray as xr
from torch import nn

from . import dims
from .analog.program import prepare
from .checks import check_model_data, flag_nonfinite
from .errors import ConfigError
from .hardware.spec import HardwareSpec
from .metrics import resolve_metrics
from .montecarlo import RunOptions, sweep
from .rng import SeedLike, root_sequence, seed_entropy
from .stats import sequential_estimate


def evaluate_until(model: nn.Module, spec: HardwareSpec, data, *, target_width: float, statistic: str = "mean",
                   variable: str = dims.ACCURACY, threshold: float | None = None, q: float | None = None,
                   grid: Mapping[str, Sequence] | None = None, instances_per_round: int = 64,
                   max_instances: int = 4096, ci: float = 0.95, bounds: tuple[float, float] = (0.0, 1.0),
                   seed: SeedLike = 0, calibration_data=None, layers=None, device=None,
                   options: RunOptions | None = None, progress: bool = True,
                   metrics=None) -> tuple[xr.Dataset, object]:
    """Evaluate chips in rounds until the ``ci`` interval of ``statistic`` is at most ``target_width`` wide.

    Parameters
    ----------
    statistic : {"mean", "yield", "quantile"}
        Of ``variable`` over instances; ``threshold`` for yield (P(variable >= threshold)), ``q`` for quantile.
    grid : dict, optional
        Sweep grid; every grid point must reach the target.  Each grid point's interval keeps level ``ci`` on its
        own (not jointly over the grid).
    instances_per_round : int
        Chips evaluated between two looks at the interval (>= 2).
    bounds : (float, float)
        Range of ``variable`` for ``statistic="mean"`` (default ``(0, 1)``, right for accuracy); the mean's
        guarantee holds for any distribution inside it.
    seed : int, SeedSequence or None
        As in :func:`anvm_stats.montecarlo.sweep`: instance ``i`` depends only on ``(seed, i)``; default 0 (as
        every entry point); ``None`` draws fresh entropy, recorded in attrs.
    calibration_data : (x, y) tensors, Data, or batches, optional
        Data the DAC/ADC ranges are calibrated on (default: the evaluation ``data``), as in
        :func:`anvm_stats.montecarlo.sweep`.
    layers, device, options, metrics
        As in :func:`anvm_stats.montecarlo.sweep`; ``variable`` may name any metric of ``metrics`` (give its
        ``bounds`` for ``statistic="mean"``, e.g. ``Metric.bounds`` when finite).

    Returns
    -------
    (xr.Dataset, SequentialResult)
        The Dataset of every instance drawn (dims ``instance`` + grid), and the stopping record
        (``n``, ``stopped_by`` = "width" or "cap", final estimate with its sequential interval, width history).
        The Dataset's ``nonfinite_cells`` attr counts NaN/inf cells over all rounds (each round warns of its own).

    Raises
    ------
    ConfigError
        Before any work, for ``data`` the model cannot score (see :func:`anvm_stats.checks.check_model_data`), and
        for a ``variable`` that is not a per-instance variable of the run.
    """
    metrics = resolve_metrics(metrics)
    allowed = list(dims.METRICS) if metrics is None else [m.name for m in metrics] + (
        [dims.CORRECT_COUNT] if dims.ACCURACY in [m.name for m in metrics] else [])
    if variable not in allowed:
        raise ConfigError("variable", variable, f"a variable of the run: one of {allowed}")
    check_model_data(model, data, labels=metrics is None or any(m.class_labels for m in metrics))
    root = root_sequence(seed)
    program = prepare(model, spec, calibration_data=calibration_data if calibration_data is not None else data,
                      layers=layers, device=device, fuse_relu=True)
    parts: list[xr.Dataset] = []

    def draw(start: int, n: int) -> np.ndarray:
        ds = sweep(model, spec, data, grid=grid, instances=range(start, start + n), seed=root, program=program,
                   options=options, progress=False, metrics=metrics)
        parts.append(ds)
        da = ds[variable].transpose(dims.INSTANCE, ...)
        return da.values

    result = sequential_estimate(draw, statistic=statistic, target_width=target_width,
                                 instances_per_round=instances_per_round, max_n=max_instances, ci=ci,
                                 threshold=threshold, q=q, bounds=bounds, progress=progress)
    ds = xr.concat(parts, dim=dims.INSTANCE)
    ds.attrs.update(parts[0].attrs)
    ds.attrs.update(seed_entropy=seed_entropy(root), stopped_by=result.stopped_by, target_width=target_width,
                    sequential_statistic=statistic, confidence=ci)
    flag_nonfinite(ds, warn=False)   # the total over the rounds (the first round's count was copied above)
    return ds, result
