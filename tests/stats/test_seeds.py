"""Two-level intervals across training seeds (anvm_stats.stats.seeds): against scipy, coverage, errors."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy import stats as sps

import anvm_stats as av
from anvm_stats.errors import ConfigError
from anvm_stats.stats.arrays import paired_difference
from anvm_stats.stats.seeds import seed_mean_ci, seed_paired_difference

FAIL_RATE = 1e-5


def test_two_level_interval_is_the_t_interval_of_the_per_seed_means():
    """By hand: per-seed mean of the paired differences, then scipy's one-sample t interval over seeds."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.9, 0.03, (2, 6, 40)), rng.normal(0.88, 0.03, (2, 6, 40))
    est = seed_paired_difference(a, b, ci=0.9)
    for k in range(2):
        m = (a[k] - b[k]).mean(axis=1)
        want = sps.ttest_1samp(m, 0.0).confidence_interval(0.9)
        assert est.estimate[k] == pytest.approx(m.mean(), rel=1e-12)
        assert (est.lower[k], est.upper[k]) == pytest.approx((want.low, want.high), rel=1e-12)
        np.testing.assert_allclose(est.per_seed[k], m, rtol=1e-12)
        np.testing.assert_allclose(est.within_seed_se[k], (a[k] - b[k]).std(axis=1, ddof=1) / np.sqrt(40))
        tau2 = max(0.0, m.var(ddof=1) - np.mean(est.within_seed_se[k] ** 2))
        assert est.between_seed_sd[k] == pytest.approx(np.sqrt(tau2))
    assert est.n.tolist() == [6, 6] and est.method == "two-level-t" and est.n_chips == 40
    # axes anywhere: seeds first, chips in the middle
    moved = seed_mean_ci(np.moveaxis(a, (1, 2), (0, 1)), seed_axis=0, axis=1, ci=0.9)
    np.testing.assert_allclose(moved.upper, seed_mean_ci(a, ci=0.9).upper, rtol=1e-12)


def test_labelled_wrappers_keep_coordinates_and_match_arrays():
    rng = np.random.default_rng(2)
    a = xr.DataArray(rng.random((3, 5, 16)), dims=("noise_level", "train_seed", "instance"),
                     coords={"noise_level": [0.05, 0.1, 0.2], "train_seed": np.arange(5)}, name="accuracy")
    b = a * 0.9
    ds = av.stats.seed_difference(a, b, ci=0.95)
    est = seed_paired_difference(a.values, b.values)
    np.testing.assert_allclose(ds["interval"].sel(ci_bound="upper").values, est.upper)
    assert list(ds["noise_level"].values) == [0.05, 0.1, 0.2]
    assert ds["per_seed"].dims == ("noise_level", "train_seed")
    assert ds.attrs["covers"].startswith("training-seed variation")
    one = av.stats.across_seeds(a.transpose("instance", "train_seed", "noise_level"))
    np.testing.assert_allclose(one["estimate"].values, a.mean(("train_seed", "instance")).values)


def _nested(rng, reps, S, n, tau, sigma):
    """Per (replicate, seed, chip) values: seed effect N(0, tau^2) plus chip noise N(0, sigma^2)."""
    return rng.normal(0, tau, (reps, S, 1)) + rng.normal(0, sigma, (reps, S, n))


def test_two_level_covers_and_chip_only_interval_does_not():
    """Normal nested data: per-seed means are exactly normal, so the two-level t interval covers exactly 0.95;
    its count of covering replicates must lie within the binomial(R, 0.95) band of probability 1 - 2e-5. The
    chip-only paired-t interval of a single seed (what the reports showed before) must cover far less (count
    below binom.isf(1e-5, R, 0.6)) when the seed effect dominates, as in the issue's MLP."""
    rng = np.random.default_rng(3)
    R, S, n = 4000, 5, 32
    d = _nested(rng, R, S, n, tau=0.01, sigma=0.02)
    est = seed_mean_ci(d, ci=0.95)
    hits = int(((est.lower <= 0) & (0 <= est.upper)).sum())
    assert sps.binom.ppf(FAIL_RATE, R, 0.95) <= hits <= sps.binom.isf(FAIL_RATE, R, 0.95)
    chip = paired_difference(d[:, 0], np.zeros_like(d[:, 0]), ci=0.95)
    chip_hits = int(((chip.lower <= 0) & (0 <= chip.upper)).sum())
    assert chip_hits < sps.binom.isf(FAIL_RATE, R, 0.6)


@pytest.mark.parametrize("kwargs, field", [
    ({"x": np.ones((1, 10))}, "x"),                     # one seed: nothing to estimate between seeds
    ({"x": np.ones((3, 10)), "seed_axis": 1, "axis": -1}, "seed_axis"),
    ({"x": np.ones((3, 10)), "seed_axis": 5}, "seed_axis"),
    ({"x": np.array([[1.0, np.nan], [1.0, 2.0]])}, "x"),
])
def test_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError) as err:
        seed_mean_ci(**kwargs)
    assert err.value.field == field


def test_labelled_refuses_a_missing_seed_dim():
    da = xr.DataArray(np.ones((3, 4)), dims=("model", "instance"))
    with pytest.raises(ConfigError, match="seed_dim"):
        av.stats.across_seeds(da)
