"""Sequential Monte Carlo sampling: draw chips in rounds until a confidence interval is narrow enough.

:func:`sequential_estimate` calls ``draw(start, n)`` for instances ``start .. start+n-1`` (so instance ``i`` is
always the same chip, whatever the rounds), recomputes the interval on everything drawn so far after each round,
and stops at the first round where the interval width is at most ``target_width`` or when ``max_n`` instances
have been drawn.

Guarantee
---------
Stopping when an interval first looks narrow enough is a data-dependent stopping rule: a fixed-``n`` interval
recomputed after every round does not keep its level (a first round of tied accuracies gives a zero-width
Student-t interval and stops at once; measured coverage 0.46-0.78 on mixture data).  The intervals used here
hold **simultaneously for every round** with probability >= ``ci``, so the interval at the (random) stopping
round covers with probability >= ``ci`` whatever rule decides to stop:

``"mean"``
    The betting confidence sequence of :func:`anvm_stats.stats.betting.betting_bounds` (anytime valid, Ville's
    inequality) for a metric with known ``bounds`` (default ``(0, 1)``, accuracy); no normality, ties and
    catastrophic-chip mixtures included.
``"yield"``, ``"quantile"``
    The fixed-``n`` interval (Clopper-Pearson, order statistics) at round ``k`` computed at level
    ``1 - (1 - ci) / (k (k + 1))``: the error probabilities sum to at most ``1 - ci`` over all rounds
    (Bonferroni alpha spending).  Exact for Clopper-Pearson; ``method="wilson"`` carries no guarantee.

The reported interval is the running intersection of the rounds' intervals (valid on the same event).  The
guarantee costs width: the sequence is wider than a one-shot interval on the same ``n``, so more instances are
drawn; for a mean of values clustered near ``m`` within ``[0, 1]`` the width cannot fall much below
``~log(2/(1-ci)) m / (0.75 n)`` (see :mod:`anvm_stats.stats.betting`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from tqdm.auto import tqdm

from ..errors import ConfigError, check_number
from . import arrays
from .arrays import Estimate
from .betting import betting_bounds

__all__ = ["SequentialResult", "sequential_estimate", "STATISTICS"]

STATISTICS = ("mean", "yield", "quantile")


@dataclass(frozen=True)
class SequentialResult:
    """Outcome of :func:`sequential_estimate`.

    Attributes
    ----------
    estimate : Estimate
        Point estimate on all ``n`` drawn instances (as the one-shot estimate) with the sequential interval (the
        running intersection described in the module docstring; ``method`` ends in ``"-sequence"``).
    n : int
        Instances drawn (``0 .. n-1``).
    stopped_by : str
        ``"width"`` when the interval reached ``target_width``, ``"cap"`` when ``max_n`` was reached first.
    target_width : float
        The requested width.
    history_n : tuple[int, ...]
        Cumulative instance count after each round.
    history_width : tuple[float, ...]
        Sequential interval width after each round (the largest one when ``draw`` returns several metrics per instance);
        ``inf`` while a bound is still infinite.
    values : numpy.ndarray
        All drawn values, instance axis first.
    """

    estimate: Estimate
    n: int
    stopped_by: str
    target_width: float
    history_n: tuple[int, ...]
    history_width: tuple[float, ...]
    values: np.ndarray

    @property
    def width(self) -> float:
        """Final interval width."""
        return self.history_width[-1]


def _round_alpha(alpha: float, k: int) -> float:
    """Miscoverage spent at round ``k`` (1-based): ``alpha / (k (k + 1))``, summing to ``alpha`` over all rounds."""
    return alpha / (k * (k + 1))


def _round_interval(statistic: str, values: np.ndarray, k: int, ci: float, threshold: Any, q: Any, method: str,
                    bounds: tuple[float, float]) -> Estimate:
    """Round ``k``'s interval on all values so far (instance axis 0); valid simultaneously over rounds."""
    if statistic == "mean":
        v = np.moveaxis(values, 0, -1)
        lo, hi = betting_bounds(v, 1.0 - ci, bounds)
        mean = v.mean(axis=-1)
        return arrays.pack(mean, np.minimum(lo, mean), np.maximum(hi, mean), ci, "betting-sequence", v.shape[-1])
    level = 1.0 - _round_alpha(1.0 - ci, k)
    if statistic == "yield":
        est = arrays.yield_(values, threshold, axis=0, ci=level, method=method)
    else:
        est = arrays.quantile_ci(values, q, axis=0, ci=level)
    return Estimate(est.estimate, est.lower, est.upper, ci, f"{est.method}-sequence", est.n)


def _check_arguments(draw, statistic, target_width, instances_per_round, max_n, ci, threshold, q, method, bounds):
    """Validate :func:`sequential_estimate`'s arguments; returns the checked ``(ci, bounds)``."""
    if not callable(draw):
        raise ConfigError("draw", type(draw).__name__, "a callable draw(start, n) -> array of n values")
    if statistic not in STATISTICS:
        raise ConfigError("statistic", statistic, f"one of {STATISTICS}")
    check_number("target_width", target_width, low=0.0, low_open=True)
    check_number("instances_per_round", instances_per_round, low=2, integer=True)
    check_number("max_n", max_n, low=instances_per_round, integer=True)
    ci = arrays.check_ci(ci)
    if method not in arrays.PROPORTION_METHODS:
        raise ConfigError("method", method, f"one of {arrays.PROPORTION_METHODS}")
    bounds = arrays.check_bounds(bounds)
    if statistic == "yield":
        if threshold is None:
            raise ConfigError("threshold", threshold, "a number when statistic='yield'")
        check_number("threshold", float(threshold) if isinstance(threshold, np.generic) else threshold)
    if statistic == "quantile":
        if q is None:
            raise ConfigError("q", q, "a level in (0, 1) when statistic='quantile'")
        arrays.check_q(q)
    return ci, bounds


def sequential_estimate(draw: Callable[[int, int], Any], *, statistic: str = "mean", target_width: float,
                        instances_per_round: int = 64, max_n: int = 4096, ci: float = 0.95,
                        threshold: float | None = None, q: float | None = None, method: str = "clopper-pearson",
                        bounds: tuple[float, float] = (0.0, 1.0), progress: bool = False) -> SequentialResult:
    """Draw instances in rounds until the ``ci`` sequential interval of ``statistic`` is at most ``target_width``.

    The interval at the stopping round covers the true value with probability >= ``ci`` (see the module
    docstring), for ``statistic="mean"`` whatever the distribution on ``bounds``.

    Parameters
    ----------
    draw : callable ``(start, n) -> array``
        Returns the metric of instances ``start .. start+n-1``, shape ``(n,)`` or ``(n, ...)`` (instance axis
        first; with extra axes every element's interval must reach the target).  Must be deterministic in the
        instance index.
    statistic : {"mean", "yield", "quantile"}
        Mean (betting confidence sequence), yield ``P(value >= threshold)`` (interval ``method`` with alpha
        spending), or the ``q`` quantile (order statistics with alpha spending; infinite until enough instances
        are drawn).
    target_width : float
        Stop once ``upper - lower <= target_width`` (> 0).
    instances_per_round : int
        Instances per call of ``draw`` (>= 2); the last round is shortened so that ``n`` never exceeds ``max_n``.
    max_n : int
        Cap on the number of instances (>= instances_per_round).
    ci : float
        Two-sided confidence level in (0, 1).
    threshold : float
        Required for ``statistic="yield"``.
    q : float or 1-d array
        Required for ``statistic="quantile"``.
    method : {"clopper-pearson", "wilson"}
        Proportion interval for ``"yield"`` (only Clopper-Pearson carries the guarantee).
    bounds : (float, float)
        Known range of every value, for ``statistic="mean"`` (default ``(0, 1)``: accuracy); a drawn value
        outside raises.
    progress : bool
        Show a tqdm progress bar over ``max_n``.

    Raises
    ------
    ConfigError
        On any invalid argument, or when ``draw`` returns the wrong number of values, NaN, or (mean) values
        outside ``bounds``.
    """
    ci, bounds = _check_arguments(draw, statistic, target_width, instances_per_round, max_n, ci, threshold, q,
                                  method, bounds)
    per_round, max_n = int(instances_per_round), int(max_n)
    chunks: list[np.ndarray] = []
    n = 0
    hist_n: list[int] = []
    hist_w: list[float] = []
    est: Estimate | None = None
    lower = upper = None
    stopped_by = "cap"
    with tqdm(total=max_n, desc=f"sequential {statistic}", unit="instance", disable=not progress) as bar:
        while n < max_n:
            m = min(per_round, max_n - n)
            batch = _call_draw(draw, n, m, chunks[0].shape[1:] if chunks else None)
            if statistic == "mean":
                _check_bounds(batch, bounds, n, m)
            chunks.append(batch)
            n += m
            bar.update(m)
            est = _round_interval(statistic, np.concatenate(chunks, axis=0), len(hist_n) + 1, ci, threshold, q,
                                  method, bounds)
            lower, upper = _intersect(lower, upper, est)
            width = float(np.max(upper - lower))
            hist_n.append(n)
            hist_w.append(width)
            bar.set_postfix(width=f"{width:.4g}")
            if width <= target_width:
                stopped_by = "width"
                break
    assert est is not None
    est = Estimate(est.estimate, lower, upper, est.ci, est.method, est.n)
    return SequentialResult(estimate=est, n=n, stopped_by=stopped_by, target_width=float(target_width),
                            history_n=tuple(hist_n), history_width=tuple(hist_w),
                            values=np.concatenate(chunks, axis=0))


def _intersect(lower, upper, est: Estimate) -> tuple:
    """The running intersection of the rounds' intervals (``None``: none yet), widened, if ever needed, to hold
    the point estimate (a superset keeps the guarantee)."""
    lower = est.lower if lower is None else np.maximum(lower, est.lower)
    upper = est.upper if upper is None else np.minimum(upper, est.upper)
    return np.minimum(lower, est.estimate), np.maximum(upper, est.estimate)


def _check_bounds(batch: np.ndarray, bounds: tuple[float, float], start: int, m: int) -> None:
    """Refuse drawn values outside the known ``bounds`` (the mean's guarantee rests on them)."""
    if np.any(batch < bounds[0]) or np.any(batch > bounds[1]):
        raise ConfigError("bounds", bounds, f"a range holding every drawn value (draw({start}, {m}) returned "
                                            f"values in [{np.min(batch):.6g}, {np.max(batch):.6g}])")


def _call_draw(draw: Callable, start: int, m: int, trailing: tuple[int, ...] | None) -> np.ndarray:
    out = draw(start, m)
    try:
        arr = np.asarray(out, dtype=float)
    except (TypeError, ValueError):
        raise ConfigError("draw", f"returned {type(out).__name__}", "an array of numbers") from None
    if arr.ndim == 0 or arr.shape[0] != m:
        raise ConfigError("draw", f"draw({start}, {m}) returned shape {arr.shape}",
                          f"an array with {m} values along its first axis")
    if trailing is not None and arr.shape[1:] != trailing:
        raise ConfigError("draw", f"draw({start}, {m}) returned shape {arr.shape}",
                          f"trailing shape {trailing} as in earlier batches")
    if np.isnan(arr).any():
        raise ConfigError("draw", f"draw({start}, {m}) returned NaN", "values without NaN")
    return arr
