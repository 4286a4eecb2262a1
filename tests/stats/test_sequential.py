"""Tests of anvm_stats.stats.sequential_estimate: the guarantee after optional stopping (reproduction of issue 21),
the round intervals against independent constructions (scipy), cap, bookkeeping, errors.

Coverage over many replicates is in tests/stats/test_coverage.py (slow)."""

from __future__ import annotations


import numpy as np
import pytest
from scipy import stats as sps

from anvm_stats.errors import ConfigError
from anvm_stats.stats import arrays as A
from anvm_stats.stats import sequential_estimate
from anvm_stats.stats.betting import betting_bounds


class Pool:
    """A deterministic per-instance metric: instance i is always pool[i]; records every draw call."""

    def __init__(self, values):
        self.values = np.asarray(values, dtype=float)
        self.calls = []

    def __call__(self, start, n):
        self.calls.append((start, n))
        return self.values[start:start + n]


def normal_pool(seed=0, size=10000, sd=0.02):
    return Pool(np.random.default_rng(seed).normal(0.9, sd, size=size))


def tied_pool(seed=0, size=4096):
    """Accuracies k/360 as in issue 21: 347/360 with probability 0.97, 346/360 otherwise (true mean below
    347/360); the first 64 instances are all 347/360, as in the reported run."""
    rng = np.random.default_rng(seed)
    k = np.where(rng.random(size) < 0.97, 347, 346)
    k[:64] = 347
    return Pool(k / 360.0), (0.97 * 347 + 0.03 * 346) / 360.0


def test_tied_first_round_does_not_stop_on_a_zero_width_interval():
    """Issue 21's reproduction: a first round of tied values gave a zero-width t interval, the rule stopped at
    n=64 and the interval missed the mean.  Now no round's interval has zero width and the one reported covers."""
    draw, truth = tied_pool()
    res = sequential_estimate(draw, target_width=0.002, instances_per_round=64, max_n=4096)
    assert res.n > 64
    assert min(res.history_width) > 0
    assert res.estimate.lower <= truth <= res.estimate.upper
    # the first round's interval is the betting interval on 64 tied values: wide, nowhere near the target
    assert res.history_width[0] > 0.05


def test_mean_interval_is_the_running_intersection_of_betting_sequences():
    draw = normal_pool(1)
    res = sequential_estimate(draw, target_width=0.03, instances_per_round=50, max_n=3000, ci=0.9)
    assert res.stopped_by == "width" and res.estimate.method == "betting-sequence"
    lows, highs = zip(*(betting_bounds(draw.values[:n], 0.1, (0.0, 1.0)) for n in res.history_n))
    mean = draw.values[:res.n].mean()
    assert float(res.estimate.lower) == pytest.approx(min(max(lows), mean), abs=1e-12)
    assert float(res.estimate.upper) == pytest.approx(max(min(highs), mean), abs=1e-12)
    assert float(res.estimate.estimate) == pytest.approx(mean, rel=1e-14)
    np.testing.assert_array_equal(res.values, draw.values[:res.n])


def clopper_pearson(k, n, level):
    r = sps.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return r.low, r.high


def test_yield_interval_spends_alpha_over_rounds():
    """Round k uses Clopper-Pearson at level 1 - alpha / (k (k + 1)) (scipy's exact interval), intersected."""
    draw = normal_pool(1)
    res = sequential_estimate(draw, statistic="yield", threshold=0.9, target_width=0.12, instances_per_round=50,
                              max_n=3000, ci=0.9)
    assert res.stopped_by == "width" and res.estimate.method == "clopper-pearson-sequence"
    lo, hi = 0.0, 1.0
    for k, n in enumerate(res.history_n, start=1):
        passes = int(np.sum(draw.values[:n] >= 0.9))
        l_k, h_k = clopper_pearson(passes, n, 1 - 0.1 / (k * (k + 1)))
        lo, hi = max(lo, l_k), min(hi, h_k)
        assert res.history_width[k - 1] == pytest.approx(hi - lo, abs=1e-9)
    assert float(res.estimate.lower) == pytest.approx(lo, abs=1e-9)
    assert float(res.estimate.upper) == pytest.approx(hi, abs=1e-9)


def test_yield_all_pass_stops_when_the_spent_clopper_pearson_is_narrow():
    draw = Pool(np.ones(5000))
    res = sequential_estimate(draw, statistic="yield", threshold=0.5, target_width=0.01, instances_per_round=100)
    # all pass: round k's interval is [(alpha_k / 2)**(1/n), 1] with alpha_k = 0.05 / (k (k + 1)), n = 100 k
    expect = next(100 * k for k in range(1, 50) if 1 - (0.05 / (k * (k + 1)) / 2) ** (1 / (100 * k)) <= 0.01)
    assert res.n == expect and res.stopped_by == "width"
    assert expect > 400          # a one-shot Clopper-Pearson interval would have stopped at 400
    assert float(res.estimate.estimate) == 1.0


def test_quantile_bounds_start_infinite_until_the_spent_level_allows():
    draw = normal_pool(2)
    res = sequential_estimate(draw, statistic="quantile", q=0.01, target_width=0.05, instances_per_round=64,
                              max_n=4096)
    # a finite lower bound on the 1 % quantile at round k needs 0.99**n <= alpha_k / 2
    for k, (n, w) in enumerate(zip(res.history_n, res.history_width), start=1):
        assert (w == np.inf) == (0.99 ** n > 0.05 / (k * (k + 1)) / 2), (k, n, w)
    assert res.stopped_by == "width" and res.width <= 0.05


def test_mean_stops_at_target_width_and_draws_each_instance_once():
    draw = normal_pool()
    res = sequential_estimate(draw, statistic="mean", target_width=0.01, instances_per_round=32, max_n=4096)
    assert res.stopped_by == "width"
    assert res.width <= 0.01
    assert float(res.estimate.upper - res.estimate.lower) == pytest.approx(res.width)
    assert all(w > 0.01 for w in res.history_width[:-1])
    assert list(res.history_n) == list(range(32, res.n + 1, 32))
    assert draw.calls == [(s, 32) for s in range(0, res.n, 32)]
    # the guarantee costs instances: a t interval would reach 0.01 at n ~ (2 * 1.96 * 0.02 / 0.01)**2 ~ 62
    assert res.n > 2 * 62


def test_cap_binds():
    draw = normal_pool()
    res = sequential_estimate(draw, target_width=1e-5, instances_per_round=64, max_n=1000)
    assert res.stopped_by == "cap"
    assert res.n == 1000
    assert res.width > 1e-5
    # the last round is shortened to respect the cap
    assert draw.calls[-1] == (960, 40)
    assert sum(n for _, n in draw.calls) == 1000
    assert float(res.estimate.estimate) == pytest.approx(draw.values[:1000].mean(), rel=1e-14)


def test_values_outside_bounds_raise():
    with pytest.raises(ConfigError) as e:
        sequential_estimate(lambda s, n: np.full(n, 1.5), target_width=0.1)
    assert e.value.field == "bounds" and "1.5" in str(e.value)
    # a metric with another range is fine once its bounds are given
    res = sequential_estimate(lambda s, n: np.full(n, 1.5), target_width=1.0, bounds=(0.0, 2.0))
    assert res.stopped_by == "width" and float(res.estimate.estimate) == 1.5


def test_multi_metric_draw_uses_widest_interval():
    rng = np.random.default_rng(3)
    vals = np.stack([rng.normal(0.5, 0.01, 5000), rng.normal(0.5, 0.05, 5000)], axis=1)
    draw = Pool(vals)
    res = sequential_estimate(draw, target_width=0.02, instances_per_round=100)
    w = res.estimate.upper - res.estimate.lower
    assert res.estimate.estimate.shape == (2,)
    assert res.width == pytest.approx(float(np.max(w)))
    assert np.all(w <= 0.02)
    assert w[0] < w[1]


def test_progress_bar_runs():
    res = sequential_estimate(normal_pool(), target_width=0.05, instances_per_round=64, progress=True)
    assert res.stopped_by == "width"


@pytest.mark.parametrize("kwargs,field", [
    ({"target_width": 0}, "target_width"),
    ({"target_width": -1.0}, "target_width"),
    ({"target_width": float("nan")}, "target_width"),
    ({"target_width": 0.1, "instances_per_round": 1}, "instances_per_round"),
    ({"target_width": 0.1, "instances_per_round": 2.5}, "instances_per_round"),
    ({"target_width": 0.1, "instances_per_round": 64, "max_n": 32}, "max_n"),
    ({"target_width": 0.1, "bounds": (1.0, 0.0)}, "bounds"),
    ({"target_width": 0.1, "bounds": "unit"}, "bounds"),
    ({"target_width": 0.1, "statistic": "median"}, "statistic"),
    ({"target_width": 0.1, "statistic": "yield"}, "threshold"),
    ({"target_width": 0.1, "statistic": "quantile"}, "q"),
    ({"target_width": 0.1, "statistic": "quantile", "q": 1.0}, "q"),
    ({"target_width": 0.1, "ci": 1.0}, "ci"),
    ({"target_width": 0.1, "statistic": "yield", "threshold": 0.5, "method": "wald"}, "method"),
])
def test_argument_validation(kwargs, field):
    draw = normal_pool()
    with pytest.raises(ConfigError) as e:
        sequential_estimate(draw, **kwargs)
    assert e.value.field == field and field in str(e.value)
    assert draw.calls == []          # nothing drawn before validation


def test_target_width_is_required():
    with pytest.raises(TypeError):
        sequential_estimate(normal_pool())   # type: ignore[call-arg]


def test_bad_draw_output_raises():
    with pytest.raises(ConfigError) as e:
        sequential_estimate(lambda s, n: np.zeros(n - 1), target_width=0.1)
    assert e.value.field == "draw"
    with pytest.raises(ConfigError) as e:
        sequential_estimate(lambda s, n: np.full(n, np.nan), target_width=0.1)
    assert e.value.field == "draw" and "NaN" in str(e.value)
    with pytest.raises(ConfigError) as e:
        sequential_estimate("not callable", target_width=0.1)  # type: ignore[arg-type]
    assert e.value.field == "draw"


def test_vector_q_on_several_metrics_keeps_the_shapes_of_the_one_shot_estimate():
    vals = np.random.default_rng(4).beta(20, 2, size=(3000, 2))
    draw = Pool(vals)
    res = sequential_estimate(draw, statistic="quantile", q=[0.1, 0.5], target_width=0.05, instances_per_round=50,
                              max_n=3000)
    one_shot = A.quantile_ci(vals[:res.n], [0.1, 0.5], axis=0)
    assert res.estimate.estimate.shape == res.estimate.lower.shape == one_shot.estimate.shape == (2, 2)
    np.testing.assert_array_equal(res.estimate.estimate, one_shot.estimate)
    assert np.all(res.estimate.lower <= res.estimate.estimate) and np.all(res.estimate.estimate <= res.estimate.upper)
    assert np.all(res.estimate.upper - res.estimate.lower <= 0.05)
    assert res.estimate.method == "order-statistic-sequence"
