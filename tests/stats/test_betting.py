"""anvm_stats.stats.betting: the betting bounds are where the capital crosses its threshold (checked against a
plain loop)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from anvm_stats.stats.betting import betting_bounds


def _capital_by_loop(z, alpha, m, sign, horizon):
    """log K+(m) (sign +1) or log K-(m) of the betting interval, written as a plain loop from its definition
    (Waudby-Smith & Ramdas 2024, predictable plug-in bets), independent of the vectorised code."""
    n, total, s_sum, sq_sum = len(z), 0.0, 0.0, 0.0
    for i, zi in enumerate(z, start=1):
        s2_prev = (0.25 + sq_sum) / i
        scale = i * math.log(1 + i) if horizon is None else horizon
        lam = math.sqrt(2 * math.log(2 / alpha) / (s2_prev * scale))
        cap = 0.75 / m if sign > 0 else 0.75 / (1 - m)
        total += math.log1p(sign * min(lam, cap) * (zi - m))
        s_sum += zi
        sq_sum += (zi - (0.5 + s_sum) / (i + 1)) ** 2
    return total


@settings(max_examples=150, deadline=None)
@given(x=hnp.arrays(np.float64, st.integers(2, 30), elements=st.floats(0, 1)), ci=st.floats(0.5, 0.99),
       fixed=st.booleans())
def test_betting_bounds_are_where_the_capital_crosses_its_threshold(x, ci, fixed):
    """Each bound is the candidate mean at which the corresponding capital process reaches 2/alpha."""
    alpha, horizon = 1 - ci, (len(x) if fixed else None)
    lower, upper = betting_bounds(x, alpha, (0.0, 1.0), horizon=horizon)
    thresh, eps = math.log(2 / alpha), 1e-7
    assert 0.0 <= lower <= upper <= 1.0
    if lower > eps:
        assert _capital_by_loop(x, alpha, float(lower) - eps, +1, horizon) >= thresh
    if lower + eps < 1:
        assert _capital_by_loop(x, alpha, float(lower) + eps, +1, horizon) < thresh
    if upper < 1 - eps:
        assert _capital_by_loop(x, alpha, float(upper) + eps, -1, horizon) >= thresh
    if upper - eps > 0:
        assert _capital_by_loop(x, alpha, float(upper) - eps, -1, horizon) < thresh
