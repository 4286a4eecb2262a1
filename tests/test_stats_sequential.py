"""Tests of anvm_stats.stats.sequential_estimate: stopping rule, cap, equality with one-shot estimates, errors."""

from __future__ import annotations

import numpy as np
import pytest

from anvm_stats.errors import ConfigError
from anvm_stats.stats import arrays as A
from anvm_stats.stats import sequential_estimate


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


def test_mean_stops_at_target_width():
    draw = normal_pool()
    res = sequential_estimate(draw, statistic="mean", target_width=0.004, batch_size=32, max_n=4096)
    assert res.stopped_by == "width"
    assert res.width <= 0.004
    assert float(res.estimate.upper - res.estimate.lower) == pytest.approx(res.width)
    # stopped at the first batch that met the target
    assert all(w > 0.004 for w in res.history_width[:-1])
    assert res.n % 32 == 0 and res.n < 4096
    assert list(res.history_n) == list(range(32, res.n + 1, 32))
    # instances are drawn contiguously from 0, each exactly once
    assert draw.calls == [(s, 32) for s in range(0, res.n, 32)]
    # sd 0.02 -> width ~ 2 * 1.96 * 0.02 / sqrt(n) <= 0.004 needs n ~ 385
    assert 300 <= res.n <= 500


@pytest.mark.parametrize("statistic,kw", [("mean", {}), ("yield", {"threshold": 0.9}),
                                          ("quantile", {"q": 0.1}), ("quantile", {"q": [0.1, 0.5]}),
                                          ("yield", {"threshold": 0.9, "method": "wilson"})])
def test_result_equals_one_shot_estimate_on_same_draws(statistic, kw):
    draw = normal_pool(1)
    res = sequential_estimate(draw, statistic=statistic, target_width=0.05, batch_size=50, max_n=3000, ci=0.9, **kw)
    first = draw.values[:res.n]
    np.testing.assert_array_equal(res.values, first)
    if statistic == "mean":
        ref = A.mean_ci(first, ci=0.9)
    elif statistic == "yield":
        ref = A.yield_(first, kw["threshold"], ci=0.9, method=kw.get("method", "clopper-pearson"))
    else:
        ref = A.quantile_ci(first, kw["q"], ci=0.9)
    for field in ("estimate", "lower", "upper", "n"):
        np.testing.assert_array_equal(getattr(res.estimate, field), getattr(ref, field))
    assert res.estimate.method == ref.method and res.estimate.ci == 0.9
    assert res.stopped_by == "width" and np.max(ref.width) <= 0.05


def test_cap_binds():
    draw = normal_pool()
    res = sequential_estimate(draw, target_width=1e-5, batch_size=64, max_n=1000)
    assert res.stopped_by == "cap"
    assert res.n == 1000
    assert res.width > 1e-5
    # the last batch is shortened to respect the cap
    assert draw.calls[-1] == (960, 40)
    assert sum(n for _, n in draw.calls) == 1000
    np.testing.assert_array_equal(res.estimate.estimate, A.mean_ci(draw.values[:1000]).estimate)


def test_target_met_exactly_at_cap_reports_width():
    draw = normal_pool()
    full = A.mean_ci(draw.values[:256])
    res = sequential_estimate(draw, target_width=float(full.width), batch_size=64, max_n=256)
    assert res.n == 256 and res.stopped_by == "width"


def test_widths_shrink_roughly_and_quantile_starts_infinite():
    draw = normal_pool(2)
    res = sequential_estimate(draw, statistic="quantile", q=0.01, target_width=0.05, batch_size=64, max_n=4096)
    # a 95 % interval on the 1 % quantile has no finite lower bound before 368 instances
    for n, w in zip(res.history_n, res.history_width):
        assert (w == np.inf) == (n < 368)
    assert res.stopped_by == "width" and res.width <= 0.05


def test_yield_all_pass_stops_when_clopper_pearson_is_narrow():
    draw = Pool(np.ones(5000))
    res = sequential_estimate(draw, statistic="yield", threshold=0.5, target_width=0.01, batch_size=100)
    # all pass: CP interval is [(0.025)**(1/n), 1], width <= 0.01 first at n = 368 -> 400 in batches of 100
    assert res.n == 400 and res.stopped_by == "width"
    assert float(res.estimate.estimate) == 1.0


def test_multi_metric_draw_uses_widest_interval():
    rng = np.random.default_rng(3)
    vals = np.stack([rng.normal(0, 0.01, 5000), rng.normal(0, 0.05, 5000)], axis=1)
    draw = Pool(vals)
    res = sequential_estimate(draw, target_width=0.01, batch_size=100)
    assert res.estimate.estimate.shape == (2,)
    assert res.width == pytest.approx(float(np.max(res.estimate.width)))
    assert np.all(res.estimate.width <= 0.01)
    assert res.estimate.width[0] < res.estimate.width[1]


def test_progress_bar_runs():
    res = sequential_estimate(normal_pool(), target_width=0.01, batch_size=64, progress=True)
    assert res.stopped_by == "width"


@pytest.mark.parametrize("kwargs,field", [
    ({"target_width": 0}, "target_width"),
    ({"target_width": -1.0}, "target_width"),
    ({"target_width": float("nan")}, "target_width"),
    ({"target_width": 0.1, "batch_size": 1}, "batch_size"),
    ({"target_width": 0.1, "batch_size": 2.5}, "batch_size"),
    ({"target_width": 0.1, "batch_size": 64, "max_n": 32}, "max_n"),
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
