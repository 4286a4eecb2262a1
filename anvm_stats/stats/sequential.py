"""Sequential Monte Carlo sampling: draw chips in batches until a confidence interval is narrow enough.

:func:`sequential_estimate` calls ``draw(start, n)`` for instances ``start .. start+n-1`` (so instance ``i`` is
always the same chip, whatever the batching), recomputes the interval on everything drawn so far after each
batch, and stops at the first batch where the interval width is at most ``target_width`` or when ``max_n``
instances have been drawn.

Note on coverage: stopping when the interval first becomes narrow enough is a data-dependent stopping rule,
so the nominal level is only approximate (intervals that happen to be narrow are accepted early).  With the
default batch size and targets that need a few hundred instances the effect is small; for a guarantee, fix
``n`` in advance (e.g. from a pilot run's result ``n``) and evaluate once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError, check_number
from . import arrays
from .arrays import Estimate

__all__ = ["SequentialResult", "sequential_estimate", "STATISTICS"]

STATISTICS = ("mean", "yield", "quantile")


@dataclass(frozen=True)
class SequentialResult:
    """Outcome of :func:`sequential_estimate`.

    Attributes
    ----------
    estimate : Estimate
        The interval on all ``n`` drawn instances; equal to the one-shot estimate on the same ``n`` draws.
    n : int
        Instances drawn (``0 .. n-1``).
    stopped_by : str
        ``"width"`` when the interval reached ``target_width``, ``"cap"`` when ``max_n`` was reached first.
    target_width : float
        The requested width.
    history_n : tuple[int, ...]
        Cumulative instance count after each batch.
    history_width : tuple[float, ...]
        Interval width after each batch (the largest one when ``draw`` returns several metrics per instance);
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


def _statistic_fn(statistic: str, ci: float, threshold: Any, q: Any, method: str) -> Callable[[np.ndarray],
                                                                                                 Estimate]:
    if statistic == "mean":
        return lambda v: arrays.mean_ci(v, axis=0, ci=ci)
    if statistic == "yield":
        return lambda v: arrays.yield_(v, threshold, axis=0, ci=ci, method=method)
    return lambda v: arrays.quantile_ci(v, q, axis=0, ci=ci)


def sequential_estimate(draw: Callable[[int, int], Any], *, statistic: str = "mean", target_width: float,
                        batch_size: int = 64, max_n: int = 4096, ci: float = 0.95, threshold: float | None = None,
                        q: float | None = None, method: str = "clopper-pearson",
                        progress: bool = False) -> SequentialResult:
    """Draw instances in batches until the ``ci`` interval of ``statistic`` is at most ``target_width`` wide.

    Parameters
    ----------
    draw : callable ``(start, n) -> array``
        Returns the metric of instances ``start .. start+n-1``, shape ``(n,)`` or ``(n, ...)`` (instance axis
        first; with extra axes every element's interval must reach the target).  Must be deterministic in the
        instance index.
    statistic : {"mean", "yield", "quantile"}
        Student-t mean, yield ``P(value >= threshold)`` (interval ``method``), or the ``q`` quantile with the
        order-statistic interval (infinite until enough instances are drawn).
    target_width : float
        Stop once ``upper - lower <= target_width`` (> 0).
    batch_size : int
        Instances per call of ``draw`` (>= 2); the last batch is shortened so that ``n`` never exceeds ``max_n``.
    max_n : int
        Cap on the number of instances (>= batch_size).
    ci : float
        Two-sided confidence level in (0, 1).
    threshold : float
        Required for ``statistic="yield"``.
    q : float or 1-d array
        Required for ``statistic="quantile"``.
    method : {"clopper-pearson", "wilson"}
        Proportion interval for ``"yield"``.
    progress : bool
        Show a tqdm progress bar over ``max_n``.

    Raises
    ------
    ConfigError
        On any invalid argument, or when ``draw`` returns the wrong number of values or NaN.
    """
    if not callable(draw):
        raise ConfigError("draw", type(draw).__name__, "a callable draw(start, n) -> array of n values")
    if statistic not in STATISTICS:
        raise ConfigError("statistic", statistic, f"one of {STATISTICS}")
    check_number("target_width", target_width, low=0.0, low_open=True)
    check_number("batch_size", batch_size, low=2, integer=True)
    check_number("max_n", max_n, low=batch_size, integer=True)
    ci = arrays._check_ci(ci)
    if method not in arrays.PROPORTION_METHODS:
        raise ConfigError("method", method, f"one of {arrays.PROPORTION_METHODS}")
    if statistic == "yield":
        if threshold is None:
            raise ConfigError("threshold", threshold, "a number when statistic='yield'")
        check_number("threshold", float(threshold) if isinstance(threshold, np.generic) else threshold)
    if statistic == "quantile":
        if q is None:
            raise ConfigError("q", q, "a level in (0, 1) when statistic='quantile'")
        arrays._check_q(q)
    batch_size, max_n = int(batch_size), int(max_n)
    fn = _statistic_fn(statistic, ci, threshold, q, method)

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=max_n, desc=f"sequential {statistic}", unit="instance")

    chunks: list[np.ndarray] = []
    n = 0
    hist_n: list[int] = []
    hist_w: list[float] = []
    est: Estimate | None = None
    stopped_by = "cap"
    try:
        while n < max_n:
            m = min(batch_size, max_n - n)
            batch = _call_draw(draw, n, m, chunks[0].shape[1:] if chunks else None)
            chunks.append(batch)
            n += m
            if bar is not None:
                bar.update(m)
            values = np.concatenate(chunks, axis=0)
            est = fn(values)
            width = float(np.max(est.width))
            hist_n.append(n)
            hist_w.append(width)
            if bar is not None:
                bar.set_postfix(width=f"{width:.4g}")
            if width <= target_width:
                stopped_by = "width"
                break
    finally:
        if bar is not None:
            bar.close()
    assert est is not None
    return SequentialResult(estimate=est, n=n, stopped_by=stopped_by, target_width=float(target_width),
                            history_n=tuple(hist_n), history_width=tuple(hist_w),
                            values=np.concatenate(chunks, axis=0))


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
