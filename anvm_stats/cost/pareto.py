"""Pareto fronts of designs: which points no other point beats on both cost and accuracy."""

from __future__ import annotations

import itertools

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
    out = np.zeros(c.shape, dtype=bool)
    ok = np.flatnonzero(np.isfinite(c) & np.isfinite(v))
    # by increasing cost: the best designs of one cost are optimal iff they beat every cheaper design
    best = -np.inf
    for _, group in itertools.groupby(ok[np.argsort(c[ok], kind="stable")], key=lambda j: c[j]):
        group = np.fromiter(group, dtype=np.int64)
        top = v[group].max()
        if top > best:
            out[group[v[group] == top]] = True
            best = top
    return out
