"""Confidence intervals on plain numpy arrays.

Every function reduces one axis (``axis=-1`` by default) holding the Monte Carlo samples (one value per
simulated chip) and returns an :class:`Estimate` whose fields are numpy arrays shaped like the input with
that axis removed.  Confidence levels are two-sided and given as a fraction, ``ci=0.95``.

Functions
---------
mean_ci
    Student-t interval on the mean (approximate), or a betting interval for bounded metrics (guaranteed).
quantile_ci
    Sample quantile with a distribution-free order-statistic interval.
proportion_ci
    Clopper-Pearson (exact) or Wilson interval on a binomial proportion ``k / n``.
yield_
    ``P(value >= threshold)`` with a binomial proportion interval.
paired_difference, unpaired_difference
    Mean difference of two metrics with a paired-t (or, for bounded metrics, betting) or a Welch interval.

Which interval to use (the rule README's "Statistics" section states)
--------------------------------------------------------------------
Quantiles (order statistics) and yield (Clopper-Pearson) intervals hold their level for every distribution and
every ``n``.  The Student-t mean interval is only approximate: it assumes the mean of ``n`` chips is nearly
normal, which fails for skewed or mixture chip distributions, above all when a few percent of chips are
catastrophic (accuracy near chance) and a small sample holds none of them.  For a metric with known bounds
(accuracy and yield-type metrics lie in ``[0, 1]``) pass ``method="betting", bounds=(0, 1)``: that interval
(:mod:`anvm_stats.stats.betting`) covers the mean with probability >= ``ci`` for **every** distribution on the
bounds, at the price of width when the chips are tightly clustered.  Student-t stays the default so that
existing reports keep their numbers.

All validation errors are :class:`anvm_stats.errors.ConfigError` naming the offending argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special
from scipy import stats as sps

from ..errors import ConfigError, check_number
from .betting import betting_bounds

__all__ = [
    "Estimate", "mean_ci", "quantile_ci", "proportion_ci", "yield_", "paired_difference",
    "unpaired_difference", "PROPORTION_METHODS", "MEAN_METHODS", "PAIRED_METHODS",
]

PROPORTION_METHODS = ("clopper-pearson", "wilson")
MEAN_METHODS = ("student-t", "betting")
PAIRED_METHODS = ("paired-t", "betting")


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a two-sided confidence interval.

    Attributes
    ----------
    estimate, lower, upper : numpy.ndarray
        Point estimate and interval bounds (``lower <= estimate <= upper``), all of one shape.  Bounds may be
        ``-inf`` / ``+inf`` where the sample is too small for the requested coverage (see
        :func:`quantile_ci`).
    ci : float
        Nominal two-sided coverage, e.g. ``0.95``.
    method : str
        Name of the interval construction, e.g. ``"student-t"`` or ``"clopper-pearson"``.
    n : numpy.ndarray
        Integer sample count behind each estimate, broadcast to the shape of ``estimate``.
    """

    estimate: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    ci: float
    method: str
    n: np.ndarray

    @property
    def width(self) -> np.ndarray:
        """``upper - lower`` (``inf`` where a bound is infinite)."""
        return self.upper - self.lower

    @property
    def shape(self) -> tuple[int, ...]:
        return np.shape(self.estimate)


# ----------------------------------------------------------------------------------------------- helpers


def check_ci(ci: Any) -> float:
    """Validate a two-sided confidence level in (0, 1) and return it as a float (ConfigError naming ``ci``)."""
    if isinstance(ci, np.generic) and not isinstance(ci, np.bool_):
        ci = ci.item()
    check_number("ci", ci, low=0.0, high=1.0, low_open=True, high_open=True)
    return float(ci)


def _samples(x: Any, axis: int, field: str, *, finite: bool = False, min_n: int = 1) -> np.ndarray:
    """Return ``x`` as a float array with the sample axis moved last, after validation."""
    try:
        arr = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(field, _short(x), "an array of real numbers") from None
    if arr.ndim == 0:
        raise ConfigError(field, _short(x), "an array with at least one dim (the sample axis)")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -arr.ndim <= axis < arr.ndim:
        raise ConfigError("axis", axis, f"an integer in [-{arr.ndim}, {arr.ndim - 1}] for an array of shape "
                                        f"{arr.shape}")
    arr = np.moveaxis(arr, int(axis), -1)
    if np.isnan(arr).any():
        raise ConfigError(field, _short(x), "values without NaN (drop or impute failed instances first)")
    if finite and np.isinf(arr).any():
        raise ConfigError(field, _short(x), "finite values (no +/-inf)")
    if arr.shape[-1] < min_n:
        raise ConfigError(field, f"array of shape {np.shape(x)}",
                          f"at least {min_n} sample(s) along axis {axis}")
    return arr


def _short(x: Any) -> str:
    """A compact description of an array-like for error messages."""
    if isinstance(x, np.ndarray) and x.size > 6:
        return f"<array shape={x.shape} dtype={x.dtype}>"
    r = repr(x)
    return r if len(r) <= 120 else r[:117] + "..."


def pack(estimate, lower, upper, ci: float, method: str, n) -> Estimate:
    """An :class:`Estimate` with ``lower``, ``upper`` and ``n`` broadcast to the shape of ``estimate``."""
    estimate = np.asarray(estimate, dtype=float)
    lower = np.broadcast_to(np.asarray(lower, dtype=float), estimate.shape).copy()
    upper = np.broadcast_to(np.asarray(upper, dtype=float), estimate.shape).copy()
    n = np.broadcast_to(np.asarray(n, dtype=np.int64), estimate.shape).copy()
    return Estimate(estimate=estimate, lower=lower, upper=upper, ci=ci, method=method, n=n)


def _t_interval(mean: np.ndarray, se: np.ndarray, df, ci: float) -> tuple[np.ndarray, np.ndarray]:
    tcrit = sps.t.ppf(0.5 + 0.5 * ci, df)
    half = tcrit * se
    # se == 0 (constant data) gives a degenerate interval rather than 0 * inf = nan
    half = np.where(se == 0, 0.0, half)
    return mean - half, mean + half


# ------------------------------------------------------------------------------------------------- mean


def check_bounds(bounds: Any) -> tuple[float, float]:
    """Validate ``bounds = (lo, hi)``, the known range of a metric (finite, ``lo < hi``)."""
    try:
        lo, hi = (float(v) for v in bounds)
    except (TypeError, ValueError):
        raise ConfigError("bounds", bounds, "a pair (lo, hi) of finite numbers with lo < hi, e.g. (0, 1) for "
                                            "accuracy") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError("bounds", bounds, "a pair (lo, hi) of finite numbers with lo < hi, e.g. (0, 1) for "
                                            "accuracy")
    return lo, hi


def _inside(arr: np.ndarray, bounds: tuple[float, float], field: str) -> None:
    lo, hi = bounds
    if np.any(arr < lo) or np.any(arr > hi):
        raise ConfigError("bounds", bounds, f"a range holding every value of {field} (found values in "
                                            f"[{np.min(arr):.6g}, {np.max(arr):.6g}])")


def _check_method(method: Any, allowed: tuple[str, ...], bounds: Any) -> tuple[float, float] | None:
    if method not in allowed:
        raise ConfigError("method", method, f"one of {allowed}")
    if method == "betting":
        if bounds is None:
            raise ConfigError("bounds", None, "the known range (lo, hi) of the metric when method='betting', "
                                              "e.g. (0, 1) for accuracy")
        return check_bounds(bounds)
    return None


def mean_ci(x: Any, axis: int = -1, ci: float = 0.95, method: str = "student-t",
            bounds: tuple[float, float] | None = None) -> Estimate:
    """Sample mean with a Student-t (default) or a betting confidence interval.

    Methods
    -------
    ``"student-t"``
        ``mean +/- t_{(1+ci)/2, n-1} * s / sqrt(n)`` with ``s`` the sample standard deviation (``ddof=1``);
        identical to ``scipy.stats.t.interval(ci, n - 1, loc=mean, scale=s / sqrt(n))``.  Exact for normal data,
        approximate (central limit theorem) otherwise.  It can badly under-cover on the data a chip study sees:
        a sample of tied values gives a zero-width interval, and with rare catastrophic chips (a few percent at
        chance accuracy) a small sample often holds none of them (measured in tests/stats/test_coverage.py:
        coverage ~0.4 at n=16 with 3 % such chips).
    ``"betting"``
        Requires ``bounds``, the known range of every value (``(0, 1)`` for accuracy).  The betting interval of
        :func:`anvm_stats.stats.betting.betting_bounds` tuned for this ``n``: coverage >= ``ci`` for every
        distribution on ``bounds`` and every ``n`` (no normality, ties and mixtures included).  It depends on
        the order of the samples (instance order, deterministic) and is wider than Student-t when the values
        cluster tightly, because nothing in ``n`` samples rules out a ~``1/n`` fraction of chips at a bound.
        The interval is widened, if ever needed, to contain the sample mean.

    Parameters
    ----------
    x : array_like
        Samples; NaN or infinite values raise.
    axis : int
        Sample axis (default last).
    ci : float
        Two-sided confidence level in (0, 1).
    method : {"student-t", "betting"}
    bounds : (float, float), optional
        Range of the metric, required for ``"betting"`` (values outside raise).

    Raises
    ------
    ConfigError
        ``x`` holds NaN/inf or fewer than 2 samples; ``ci`` outside (0, 1); bad ``axis``, ``method`` or
        ``bounds``.
    """
    ci = check_ci(ci)
    rng_bounds = _check_method(method, MEAN_METHODS, bounds)
    arr = _samples(x, axis, "x", finite=True, min_n=2)
    n = arr.shape[-1]
    mean = arr.mean(axis=-1)
    if rng_bounds is not None:
        _inside(arr, rng_bounds, "x")
        lo, hi = betting_bounds(arr, 1.0 - ci, rng_bounds, horizon=n)
        return pack(mean, np.minimum(lo, mean), np.maximum(hi, mean), ci, "betting", n)
    se = arr.std(axis=-1, ddof=1) / math.sqrt(n)
    lo, hi = _t_interval(mean, se, n - 1, ci)
    return pack(mean, lo, hi, ci, "student-t", n)


# -------------------------------------------------------------------------------------------- quantiles


def _order_statistic_ranks(n: int, q: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks ``(l, u)`` of the order statistics bounding the ``q`` quantile.

    With ``B ~ Binomial(n, q)`` the number of samples below the true quantile, ``P(X_(l) > xi_q) <= P(B <= l-1)``
    and ``P(X_(u) < xi_q) <= P(B >= u)``.  ``l`` is the largest rank with ``P(B <= l-1) <= alpha/2`` and ``u`` the
    smallest with ``P(B >= u) <= alpha/2``, so ``[X_(l), X_(u)]`` covers ``xi_q`` with probability at least
    ``ci`` whatever the (continuous) distribution.  ``l = 0`` / ``u = n + 1`` mean no rank qualifies.
    """
    half_alpha = 0.5 * (1.0 - ci)
    # a hair of slack towards the conservative side against rounding in the binomial cdf
    tol = 1e-12
    k = np.arange(n + 1)
    cdf = sps.binom.cdf(k[None, :], n, q[:, None])          # (nq, n+1), nondecreasing along k
    l = np.sum(cdf <= half_alpha * (1.0 - tol), axis=1)     # ranks 1..l have P(B <= rank-1) <= alpha/2
    ok_u = cdf >= 1.0 - half_alpha * (1.0 - tol)             # P(B >= j+1) = 1 - cdf[j] <= alpha/2
    ok_u[:, n] = True
    u = np.argmax(ok_u, axis=1) + 1                           # smallest such rank; n+1 = none
    return l, u


def quantile_ci(x: Any, q: Any, axis: int = -1, ci: float = 0.95) -> Estimate:
    """Sample quantile with a distribution-free order-statistic confidence interval.

    The point estimate is ``numpy.quantile`` (linear interpolation).  The interval is ``[X_(l), X_(u)]``, two order
    statistics chosen from the ``Binomial(n, q)`` distribution of the number of samples below the true quantile
    (``scipy.stats.binom``), each tail holding at most ``(1 - ci) / 2``; its coverage is at least ``ci`` for any
    continuous distribution (conservative because ranks are integers).

    **Small samples**: when even the most extreme order statistic cannot give the requested tail probability
    (``(1-q)**n > (1-ci)/2`` for the lower bound, ``q**n > (1-ci)/2`` for the upper), the corresponding bound is
    ``-inf`` (lower) or ``+inf`` (upper), and the interval width is infinite.  E.g. a 95 % interval on the 1 %
    quantile needs ``n >= 368`` for a finite lower bound.  The interval is widened, if ever needed, to contain
    the point estimate.

    Parameters
    ----------
    x : array_like
        Samples; NaN or infinite values raise.
    q : float or 1-d array_like
        Quantile level(s) in (0, 1).  When ``q`` is an array the result has a leading quantile axis.
    axis : int
        Sample axis (default last).
    ci : float
        Two-sided confidence level in (0, 1).
    """
    ci = check_ci(ci)
    q_arr = check_q(q)
    arr = _samples(x, axis, "x", finite=True)
    n = arr.shape[-1]
    qs = np.atleast_1d(q_arr)
    srt = np.sort(arr, axis=-1)
    est = np.quantile(srt, qs, axis=-1)                        # (nq, ...)
    l, u = _order_statistic_ranks(n, qs, ci)
    lower = np.empty_like(est)
    upper = np.empty_like(est)
    for i in range(qs.size):
        lower[i] = srt[..., l[i] - 1] if l[i] >= 1 else -np.inf
        upper[i] = srt[..., u[i] - 1] if u[i] <= n else np.inf
    lower = np.minimum(lower, est)
    upper = np.maximum(upper, est)
    if q_arr.ndim == 0:
        est, lower, upper = est[0], lower[0], upper[0]
    return pack(est, lower, upper, ci, "order-statistic", n)


def check_q(q: Any) -> np.ndarray:
    """Validate quantile level(s): a number or non-empty 1-d array in (0, 1) (ConfigError naming ``q``)."""
    try:
        q_arr = np.asarray(q, dtype=float)
    except (TypeError, ValueError):
        raise ConfigError("q", q, "a number or 1-d array of numbers in (0, 1)") from None
    if q_arr.ndim > 1 or q_arr.size == 0 or not np.all((q_arr > 0) & (q_arr < 1)):
        raise ConfigError("q", q, "a number or non-empty 1-d array of numbers in (0, 1)")
    return q_arr


# ------------------------------------------------------------------------------------------- proportions


def _integer_array(v: Any, field: str) -> np.ndarray:
    try:
        arr = np.asarray(v, dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(field, _short(v), "integer counts") from None
    if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
        raise ConfigError(field, _short(v), "finite integer counts")
    return arr


def proportion_ci(k: Any, n: Any, ci: float = 0.95, method: str = "clopper-pearson") -> Estimate:
    """Confidence interval on a binomial proportion ``k / n``, vectorised over broadcast ``k`` and ``n``.

    Methods
    -------
    ``"clopper-pearson"``
        Exact interval ``[Beta.ppf(a/2; k, n-k+1), Beta.ppf(1-a/2; k+1, n-k)]`` (``a = 1 - ci``), lower bound 0 at
        ``k = 0`` and upper bound 1 at ``k = n``.  Coverage is at least ``ci`` for every true proportion.  Matches
        ``scipy.stats.binomtest(k, n).proportion_ci(ci, method="exact")``.
    ``"wilson"``
        Score interval without continuity correction, coverage close to ``ci`` on average (it oscillates around
        it).  Matches ``binomtest(...).proportion_ci(ci, method="wilson")``.  **Not for yields near 0 or 1
        with small** ``n``: there its coverage dips far below ``ci``.  At ``n = 16``, true yield 0.99 and
        ``ci = 0.95`` one failing chip already gives the upper bound 0.9889 < 0.99, so the coverage is
        ``P(all pass) = 0.99**16 = 0.851`` (Brown, Cai & DasGupta 2001 describe these dips).
        Clopper-Pearson, the default, never does.

    Raises
    ------
    ConfigError
        Non-integer counts, ``n < 1``, ``k`` outside ``[0, n]``, ``ci`` outside (0, 1) or an unknown ``method``.
    """
    ci = check_ci(ci)
    if method not in PROPORTION_METHODS:
        raise ConfigError("method", method, f"one of {PROPORTION_METHODS}")
    k_arr = _integer_array(k, "k")
    n_arr = _integer_array(n, "n")
    if np.any(n_arr < 1):
        raise ConfigError("n", _short(n), "trial counts >= 1")
    try:
        k_arr, n_arr = np.broadcast_arrays(k_arr, n_arr)
    except ValueError:
        raise ConfigError("k", f"shape {k_arr.shape}", f"a shape broadcastable with n's {n_arr.shape}") from None
    if np.any(k_arr < 0) or np.any(k_arr > n_arr):
        raise ConfigError("k", _short(k), "success counts with 0 <= k <= n")
    phat = k_arr / n_arr
    alpha = 1.0 - ci
    if method == "clopper-pearson":
        # shape parameters are clamped away from 0 only where the bound is replaced by 0 or 1 anyway
        lo = np.where(k_arr == 0, 0.0, sps.beta.ppf(alpha / 2, np.maximum(k_arr, 1.0), n_arr - k_arr + 1))
        hi = np.where(k_arr == n_arr, 1.0, sps.beta.ppf(1 - alpha / 2, k_arr + 1, np.maximum(n_arr - k_arr, 1.0)))
    else:
        z = special.ndtri(0.5 + 0.5 * ci)
        denom = 2.0 * (n_arr + z * z)
        center = (2.0 * n_arr * phat + z * z) / denom
        delta = z / denom * np.sqrt(4.0 * n_arr * phat * (1.0 - phat) + z * z)
        lo = np.where(k_arr == 0, 0.0, center - delta)
        hi = np.where(k_arr == n_arr, 1.0, center + delta)
    lo = np.clip(lo, 0.0, 1.0)
    hi = np.clip(hi, 0.0, 1.0)
    return pack(phat, lo, hi, ci, method, n_arr)


def yield_(values: Any, threshold: Any, axis: int = -1, ci: float = 0.95,
           method: str = "clopper-pearson") -> Estimate:
    """Yield ``P(value >= threshold)``: the fraction of instances meeting a threshold, with an interval.

    Counts ``k = sum(values >= threshold)`` over ``n`` samples along ``axis`` and returns
    :func:`proportion_ci` ``(k, n, ci, method)``.  ``threshold`` is a number or an array broadcastable against
    ``values`` with ``axis`` removed.
    """
    ci = check_ci(ci)
    if method not in PROPORTION_METHODS:
        raise ConfigError("method", method, f"one of {PROPORTION_METHODS}")
    if threshold is None:
        raise ConfigError("threshold", threshold, "a number (the pass mark each instance must reach)")
    try:
        thr = np.asarray(threshold, dtype=float)
    except (TypeError, ValueError):
        raise ConfigError("threshold", threshold, "a number or array of numbers") from None
    if np.isnan(thr).any():
        raise ConfigError("threshold", threshold, "a number that is not NaN")
    arr = _samples(values, axis, "values")
    try:
        k = np.sum(arr >= thr[..., None], axis=-1)
    except ValueError:
        raise ConfigError("threshold", f"shape {thr.shape}",
                          f"a shape broadcastable with {arr.shape[:-1]} (values without the sample axis)") from None
    return proportion_ci(k, arr.shape[-1], ci=ci, method=method)


# ------------------------------------------------------------------------------------------- differences


def paired_difference(a: Any, b: Any, axis: int = -1, ci: float = 0.95, method: str = "paired-t",
                      bounds: tuple[float, float] | None = None) -> Estimate:
    """Mean of ``a - b`` with a paired Student-t (default) or betting interval.

    Use when ``a[..., i]`` and ``b[..., i]`` come from the same simulated chip (common random numbers): the
    chip-to-chip variation shared by both cancels in the differences, so the interval is usually much narrower
    than :func:`unpaired_difference` on the same data.  ``a`` and ``b`` must have the same shape.

    ``method="paired-t"`` is :func:`mean_ci`'s Student-t on ``a - b`` (approximate; with rare failures that hit
    both metrics together the differences are mostly near zero with a few large ones, and small samples
    under-cover).  ``method="betting"`` with ``bounds``, the range of ``a`` and ``b`` (e.g. ``(0, 1)``), is
    :func:`mean_ci`'s betting interval on the differences in ``[lo - hi, hi - lo]``: coverage >= ``ci`` for every
    joint distribution.
    """
    ci = check_ci(ci)
    rng_bounds = _check_method(method, PAIRED_METHODS, bounds)
    a_arr = _samples(a, axis, "a", finite=True, min_n=2)
    b_arr = _samples(b, axis, "b", finite=True, min_n=2)
    if a_arr.shape != b_arr.shape:
        raise ConfigError("b", f"array of shape {np.shape(b)}",
                          f"the shape of a, {np.shape(a)} (paired samples, one per instance)")
    if rng_bounds is None:
        est = mean_ci(a_arr - b_arr, axis=-1, ci=ci)
        return Estimate(est.estimate, est.lower, est.upper, ci, "paired-t", est.n)
    _inside(a_arr, rng_bounds, "a")
    _inside(b_arr, rng_bounds, "b")
    span = rng_bounds[1] - rng_bounds[0]
    est = mean_ci(a_arr - b_arr, axis=-1, ci=ci, method="betting", bounds=(-span, span))
    return Estimate(est.estimate, est.lower, est.upper, ci, "betting", est.n)


def unpaired_difference(a: Any, b: Any, axis: int = -1, ci: float = 0.95) -> Estimate:
    """``mean(a) - mean(b)`` with a Welch (unequal-variance t) interval, treating the samples as independent.

    ``a`` and ``b`` may hold different numbers of samples along ``axis``; the other dims must broadcast.
    ``Estimate.n`` is the total sample count ``n_a + n_b``.  Ignores any pairing, so on common-random-number
    data it is wider than :func:`paired_difference`; provided for comparison.
    """
    ci = check_ci(ci)
    a_arr = _samples(a, axis, "a", finite=True, min_n=2)
    b_arr = _samples(b, axis, "b", finite=True, min_n=2)
    na, nb = a_arr.shape[-1], b_arr.shape[-1]
    ma, mb = a_arr.mean(axis=-1), b_arr.mean(axis=-1)
    va = a_arr.var(axis=-1, ddof=1) / na
    vb = b_arr.var(axis=-1, ddof=1) / nb
    try:
        diff = ma - mb
        var = va + vb
    except ValueError:
        raise ConfigError("b", f"array of shape {np.shape(b)}",
                          f"a shape broadcastable with a's {np.shape(a)} apart from the sample axis") from None
    se = np.sqrt(var)
    # Welch-Satterthwaite df = var^2 / (va^2/(na-1) + vb^2/(nb-1)), written in shares of var so that tiny
    # variances do not underflow to 0/0
    safe = np.where(var > 0, var, 1.0)
    with np.errstate(divide="ignore", over="ignore"):   # shares underflowing to 0 give df = inf: the normal limit
        df = 1.0 / ((va / safe) ** 2 / (na - 1) + (vb / safe) ** 2 / (nb - 1))
    df = np.where(var > 0, df, float(na + nb - 2))
    lo, hi = _t_interval(diff, se, df, ci)
    return pack(diff, lo, hi, ci, "welch-t", na + nb)
