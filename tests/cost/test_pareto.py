"""Pareto fronts: a hand example, ties and NaN, and agreement with the definition on random designs."""

import numpy as np
import pytest

from anvm_stats.cost import pareto_mask
from anvm_stats.errors import ConfigError


def test_hand_example():
    cost = [1.0, 2.0, 3.0, 4.0, 2.0, 5.0, 0.5]
    value = [0.5, 0.7, 0.6, 0.9, 0.7, 0.9, np.nan]
    # 0: cheapest; 1 and 4: equal designs, both optimal; 2: beaten by 1; 3: best value; 5: as good as 3 but dearer;
    # 6: no value, never optimal
    assert pareto_mask(cost, value).tolist() == [True, True, False, True, True, False, False]


def test_equal_cost_keeps_only_the_best_value():
    assert pareto_mask([1, 1, 2], [0.3, 0.4, 0.35]).tolist() == [False, True, False]


def test_matches_the_definition_on_random_designs():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 30))
        c = rng.integers(0, 8, n).astype(float)          # ties on purpose
        v = rng.integers(0, 8, n).astype(float)
        want = [not any((c[j] <= c[i]) and (v[j] >= v[i]) and ((c[j] < c[i]) or (v[j] > v[i])) for j in range(n))
                for i in range(n)]
        assert pareto_mask(c, v).tolist() == want


def test_shapes_must_agree():
    with pytest.raises(ConfigError, match="value"):
        pareto_mask([1, 2], [1, 2, 3])
