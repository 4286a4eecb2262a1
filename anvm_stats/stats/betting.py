"""Confidence bounds on the mean of a bounded variable by betting (Waudby-Smith & Ramdas, JRSS-B 2024).

For values ``x_i`` in known bounds ``[lo, hi]`` (accuracy: ``[0, 1]``), rescaled to ``z_i in [0, 1]`` with mean
``mu``, and a candidate mean ``m``, the two capital processes

    K+_t(m) = prod_{i<=t} (1 + min(lam_i, c / m) (z_i - m)),
    K-_t(m) = prod_{i<=t} (1 - min(lam_i, c / (1 - m)) (z_i - m))

are non-negative martingales when ``m = mu`` and the bets ``lam_i >= 0`` depend only on ``z_1 .. z_{i-1}``
(predictable); ``c < 1`` keeps every factor >= ``1 - c > 0``.  By Ville's inequality
``P(exists t: K+_t(mu) >= 2/alpha) <= alpha/2`` (and likewise for ``K-``), so

    lower_t = inf {m : K+_t(m) < 2/alpha},   upper_t = sup {m : K-_t(m) < 2/alpha}

bound ``mu`` **simultaneously for every t** with probability >= ``1 - alpha``: a confidence sequence, valid under
optional stopping (stop whenever the interval looks narrow enough), for any distribution on ``[lo, hi]`` --
ties, skew, rare catastrophic chips included.  ``K+_t(m)`` is non-increasing and ``K-_t(m)`` non-decreasing in
``m`` (each factor is), so both bounds are found by bisection, rounded outwards.

The bets are the predictable plug-in of that paper: ``lam_i = sqrt(2 log(2/alpha) / (s2_{i-1} i log(1+i)))`` for
a confidence sequence (``horizon=None``) or ``sqrt(2 log(2/alpha) / (s2_{i-1} n))`` for a single look at a
fixed ``n`` (``horizon=n``), with ``s2`` a running variance estimate started at 1/4.  Any predictable choice is
valid; this one makes the width track the observed spread.  The price of the distribution-free guarantee: with
``n`` tightly clustered values near ``m`` the interval cannot be narrower than about ``log(2/alpha) m / (c n)`` on
the low side, because nothing in ``n`` samples rules out a fraction ~``1/n`` of chips at the lower bound.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["betting_bounds", "BET_CAP"]

BET_CAP = 0.75
"""``c``: the largest fraction of the capital bet on one instance (the worst single factor is ``1 - c``)."""

_BISECTION_STEPS = 50   # 2**-50 of the range: far below any width of interest


def _bets(z: np.ndarray, alpha: float, horizon: int | None) -> np.ndarray:
    """Predictable plug-in bets ``lam_i`` (shape of ``z``, samples last); ``lam_i`` uses ``z_1 .. z_{i-1}`` only."""
    n = z.shape[-1]
    i = np.arange(1, n + 1, dtype=float)                       # 1-based index of the bet
    csum = np.cumsum(z, axis=-1)
    mu_hat = (0.5 + csum) / (i + 1.0)                          # mu_hat_i after seeing z_1..z_i
    sq = np.cumsum((z - mu_hat) ** 2, axis=-1)
    s2_after = (0.25 + sq) / (i + 1.0)                         # s2_i after z_1..z_i
    s2_before = np.concatenate([np.full(z.shape[:-1] + (1,), 0.25), s2_after[..., :-1]], axis=-1)
    scale = i * np.log1p(i) if horizon is None else np.full(n, float(horizon))
    return np.sqrt(2.0 * math.log(2.0 / alpha) / (s2_before * scale))


def _log_capital(z: np.ndarray, lam: np.ndarray, m: np.ndarray, sign: int) -> np.ndarray:
    """``log K+(m)`` (sign +1) or ``log K-(m)`` (sign -1) for per-element candidates ``m`` (shape ``z.shape[:-1]``)."""
    mm = m[..., None]
    with np.errstate(divide="ignore"):
        cap = BET_CAP / (mm if sign > 0 else 1.0 - mm)        # m = 0 (or 1) gives an infinite cap: no truncation
    bet = np.minimum(lam, cap)
    return np.sum(np.log1p(sign * bet * (z - mm)), axis=-1)


def betting_bounds(x: np.ndarray, alpha: float, bounds: tuple[float, float],
                   horizon: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper confidence bounds on the mean of ``x`` (samples on the last axis, in sample order).

    Parameters
    ----------
    x : numpy.ndarray, shape (..., n)
        Values inside ``bounds`` (checked by the caller); the order matters (bets use earlier samples only).
    alpha : float
        Total miscoverage, split ``alpha/2`` per side.
    bounds : (float, float)
        ``lo < hi``, the known range of every value.
    horizon : int, optional
        ``None``: bets for a confidence sequence (the bounds hold at every ``t`` at once, so any prefix may be
        the stopping point).  An int ``n``: bets tuned for one look after ``n`` samples (narrower there).

    Returns
    -------
    lower, upper : numpy.ndarray, shape (...)
    """
    lo_b, hi_b = float(bounds[0]), float(bounds[1])
    span = hi_b - lo_b
    z = np.clip((np.asarray(x, dtype=float) - lo_b) / span, 0.0, 1.0)
    lam = _bets(z, alpha, horizon)
    thresh = math.log(2.0 / alpha)
    shape = z.shape[:-1]
    out = []
    for sign in (+1, -1):
        a = np.zeros(shape)                                    # K+(0) >= 1 side / not rejected side
        b = np.ones(shape)
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (a + b)
            rejected = _log_capital(z, lam, mid, sign) >= thresh
            if sign > 0:                                       # rejected set of K+ is [0, lower)
                a = np.where(rejected, mid, a)
                b = np.where(rejected, b, mid)
            else:                                              # rejected set of K- is (upper, 1]
                b = np.where(rejected, mid, b)
                a = np.where(rejected, a, mid)
        out.append(a if sign > 0 else b)                       # rounded outwards
    lower, upper = out
    return lo_b + span * lower, lo_b + span * upper
