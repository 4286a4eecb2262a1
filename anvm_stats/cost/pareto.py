"""Pareto fronts of designs: which points no other point beats on both cost and accuracy."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError


def pareto_mask(cost, value) -> np.ndarray:
    """Whether each design is Pareto-optimal for a lower ``cost`` and a higher ``value``.

    Design ``i`` is dominated when some ``j`` has ``cost[j] <= cost[i]`` and ``value[j] >= value[i]`` with at least
    one strict; designs with NaN cost or value are never optimal and never dominate. Equal designs are all optimal.

    Parameters
    ----------
    cost, value : array_like [n]

    Returns
    -------
    ndarray of bool [n]
    """
    c = np.asarray(cost, dtype=float).reshape(-1)
    v = np.asarray(value, dtype=float).reshape(-1)
    if c.shape != v.shape:
        raise ConfigError("value", v.shape, f"one value per design (cost has shape {c.shape})")
    ok = np.isfinite(c) & np.isfinite(v)
    out = np.zeros(c.shape, dtype=bool)
    best = -np.inf
    # by increasing cost, higher value first among equal costs: a design is optimal iff it beats every cheaper one
    order = np.lexsort((-v, c))
    i = 0
    idx = [j for j in order if ok[j]]
    while i < len(idx):
        j0 = idx[i]
        same = [j for j in idx[i:] if c[j] == c[j0]]
        top = v[same[0]]
        if top > best:
            for j in same:
                out[j] = v[j] == top
            best = top
        i += len(same)
    return out
