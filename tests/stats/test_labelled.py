"""Tests of the xarray wrappers in anvm_stats.stats (labelled): layout, coordinates, attrs, values, errors."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from anvm_stats import dims as D
from anvm_stats import stats
from anvm_stats.errors import ConfigError
from anvm_stats.stats import arrays as A

NOISE = [0.01, 0.02, 0.05]
ADC = [4, 6, 8, 10]


def make_accuracy(n=60, seed=0, transpose=False, name="accuracy"):
    """instance x noise_level x adc_bits accuracies with a chip component shared across grid points."""
    rng = np.random.default_rng(seed)
    chip = rng.normal(0, 0.02, size=(n, 1, 1))
    base = 0.95 - 2 * np.asarray(NOISE)[None, :, None] - 0.2 * 2.0 ** -np.asarray(ADC)[None, None, :]
    vals = np.clip(base + chip + rng.normal(0, 0.005, size=(n, len(NOISE), len(ADC))), 0, 1)
    da = xr.DataArray(
        vals, dims=(D.INSTANCE, D.NOISE_LEVEL, D.ADC_BITS),
        coords={D.INSTANCE: np.arange(n), D.NOISE_LEVEL: NOISE, D.ADC_BITS: ADC,
                "sigma_label": (D.NOISE_LEVEL, ["low", "mid", "high"]),
                "chip_seed": (D.INSTANCE, np.arange(n) * 7)},
        name=name, attrs={"units": "fraction"},
    )
    return da.transpose(D.ADC_BITS, D.INSTANCE, D.NOISE_LEVEL) if transpose else da


def check_layout(ds, expected_dims, *, statistic, method, ci=0.95):
    assert set(ds.data_vars) == {"estimate", "interval", "n"}
    assert set(ds.estimate.dims) == set(expected_dims)
    assert set(ds.interval.dims) == set(expected_dims) | {D.CI_BOUND}
    assert ds.interval.dims[-1] == D.CI_BOUND
    assert list(ds[D.CI_BOUND].values) == ["lower", "upper"]
    assert D.INSTANCE not in ds.dims and "chip_seed" not in ds.coords
    np.testing.assert_allclose(ds[D.NOISE_LEVEL].values, NOISE)
    np.testing.assert_array_equal(ds[D.ADC_BITS].values, ADC)
    assert list(ds["sigma_label"].values) == ["low", "mid", "high"]
    assert ds.attrs["confidence"] == ci
    assert ds.attrs["method"] == method
    assert ds.attrs["statistic"] == statistic
    assert ds.attrs["sample_dim"] == D.INSTANCE
    lo = ds.interval.sel(ci_bound="lower")
    hi = ds.interval.sel(ci_bound="upper")
    assert bool((lo <= ds.estimate).all()) and bool((ds.estimate <= hi).all())


@pytest.mark.parametrize("transpose", [False, True])
def test_mean_layout_and_values(transpose):
    da = make_accuracy(transpose=transpose)
    ds = stats.mean(da, dim="instance", ci=0.9)
    check_layout(ds, [D.NOISE_LEVEL, D.ADC_BITS], statistic="mean", method="student-t", ci=0.9)
    assert ds.attrs["variable"] == "accuracy"
    assert int(ds.n.sel(noise_level=0.02, adc_bits=6)) == 60
    # each grid point equals the array-level estimate on that slice
    for nl in NOISE:
        for b in ADC:
            ref = A.mean_ci(da.sel(noise_level=nl, adc_bits=b).values, ci=0.9)
            pt = ds.sel(noise_level=nl, adc_bits=b)
            assert float(pt.estimate) == pytest.approx(float(ref.estimate), rel=1e-12)
            assert float(pt.interval.sel(ci_bound="lower")) == pytest.approx(float(ref.lower), rel=1e-12)
            assert float(pt.interval.sel(ci_bound="upper")) == pytest.approx(float(ref.upper), rel=1e-12)


def test_mean_default_dim_is_instance_and_1d_input_gives_scalars():
    da = make_accuracy().isel(noise_level=0, adc_bits=0)
    ds = stats.mean(da)
    assert ds.estimate.dims == ()
    assert ds.interval.dims == (D.CI_BOUND,)
    assert float(ds.estimate) == pytest.approx(float(da.mean()))


def test_quantiles_adds_quantile_dim():
    da = make_accuracy(n=200)
    ds = stats.quantiles(da, [0.05, 0.5, 0.95], dim="instance")
    check_layout(ds, [D.QUANTILE, D.NOISE_LEVEL, D.ADC_BITS], statistic="quantile", method="order-statistic")
    np.testing.assert_allclose(ds[D.QUANTILE].values, [0.05, 0.5, 0.95])
    ref = A.quantile_ci(da.sel(noise_level=0.05, adc_bits=8).values, 0.05)
    pt = ds.sel(quantile=0.05, noise_level=0.05, adc_bits=8)
    assert float(pt.estimate) == float(ref.estimate)
    assert float(pt.interval.sel(ci_bound="lower")) == float(ref.lower)
    single = stats.quantiles(da, 0.5)
    assert single.sizes[D.QUANTILE] == 1
    # too few instances for a finite bound: -inf / +inf, not an error
    small = stats.quantiles(da.isel(instance=slice(0, 10)), 0.01)
    assert np.all(np.isneginf(small.interval.sel(ci_bound="lower").values))


def test_yield_layout_values_and_threshold_attr():
    da = make_accuracy()
    thr = 0.9
    ds = stats.yield_(da, threshold=thr, dim="instance", ci=0.95)
    check_layout(ds, [D.NOISE_LEVEL, D.ADC_BITS], statistic="yield", method="clopper-pearson")
    assert ds.attrs["threshold"] == thr
    k = (da >= thr).sum("instance")
    np.testing.assert_allclose(ds.estimate.transpose(*k.dims).values, k.values / 60)
    w = stats.yield_(da, threshold=thr, method="wilson")
    assert w.attrs["method"] == "wilson"


def test_yield_threshold_per_grid_point():
    da = make_accuracy()
    thr = xr.DataArray([0.9, 0.88, 0.8], dims=D.NOISE_LEVEL, coords={D.NOISE_LEVEL: NOISE})
    ds = stats.yield_(da, threshold=thr)
    for i, nl in enumerate(NOISE):
        exp = (da.sel(noise_level=nl) >= thr.values[i]).mean("instance")
        np.testing.assert_allclose(ds.estimate.sel(noise_level=nl).values, exp.values)
    assert "threshold" not in ds.attrs
    bad = xr.DataArray([0.9, 0.9, 0.9], dims=D.NOISE_LEVEL, coords={D.NOISE_LEVEL: [0.1, 0.2, 0.3]})
    with pytest.raises(ConfigError) as e:
        stats.yield_(da, threshold=bad)
    assert e.value.field == "threshold"


def test_paired_difference_between_grid_points_is_narrower_than_unpaired():
    da = make_accuracy(n=80)
    a = da.sel(adc_bits=10)
    b = da.sel(adc_bits=4)
    p = stats.paired_difference(a, b, dim="instance")
    u = stats.unpaired_difference(a, b, dim="instance")
    assert set(p.estimate.dims) == {D.NOISE_LEVEL}
    assert p.attrs["statistic"] == "paired_difference" and p.attrs["method"] == "paired-t"
    assert u.attrs["statistic"] == "unpaired_difference" and u.attrs["method"] == "welch-t"
    np.testing.assert_allclose(p.estimate.values, u.estimate.values, atol=1e-12)
    pw = p.interval.diff(D.CI_BOUND).squeeze(D.CI_BOUND, drop=True)
    uw = u.interval.diff(D.CI_BOUND).squeeze(D.CI_BOUND, drop=True)
    assert bool((pw < uw).all())
    assert int(p.n.isel(noise_level=0)) == 80 and int(u.n.isel(noise_level=0)) == 160
    # b broadcast over a's extra dim (difference of every grid point to a reference one)
    ref = da.sel(noise_level=0.01, adc_bits=10)
    full = stats.paired_difference(da, ref)
    assert set(full.estimate.dims) == {D.NOISE_LEVEL, D.ADC_BITS}
    assert float(full.estimate.sel(noise_level=0.01, adc_bits=10)) == 0.0


def test_unpaired_allows_different_instance_counts_paired_does_not():
    da = make_accuracy(n=60)
    a = da.isel(instance=slice(0, 40), adc_bits=0)
    b = da.isel(instance=slice(40, 60), adc_bits=1)
    u = stats.unpaired_difference(a, b)
    assert int(u.n.isel(noise_level=0)) == 60
    with pytest.raises(ConfigError) as e:
        stats.paired_difference(a, b)
    assert e.value.field == "b"
    with pytest.raises(ConfigError):
        stats.paired_difference(a, a.assign_coords(instance=a.instance + 1000))


def test_dask_backed_input():
    pytest.importorskip("dask")
    da = make_accuracy()
    ds = stats.mean(da.chunk({D.NOISE_LEVEL: 1}))
    xr.testing.assert_allclose(ds, stats.mean(da))


def test_custom_sample_dim():
    da = make_accuracy().rename({D.INSTANCE: "chip"})
    ds = stats.mean(da, dim="chip")
    assert ds.attrs["sample_dim"] == "chip"
    with pytest.raises(ConfigError) as e:
        stats.mean(da)                       # default dim "instance" is absent
    assert e.value.field == "dim" and "instance" in str(e.value)


# --------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("fn", [
    lambda da, **kw: stats.mean(da, **kw),
    lambda da, **kw: stats.quantiles(da, 0.5, **kw),
    lambda da, **kw: stats.yield_(da, threshold=0.9, **kw),
    lambda da, **kw: stats.paired_difference(da, da, **kw),
    lambda da, **kw: stats.unpaired_difference(da, da, **kw),
])
def test_bad_inputs_raise_config_error_naming_the_field(fn):
    da = make_accuracy()
    for ci in (0.0, 1.0, 1.2, -0.5):
        with pytest.raises(ConfigError) as e:
            fn(da, ci=ci)
        assert e.value.field == "ci" and "ci=" in str(e.value)
    nan = da.copy()
    nan[3, 1, 2] = np.nan
    with pytest.raises(ConfigError) as e:
        fn(nan)
    assert e.value.field in ("da", "a") and "NaN" in str(e.value)
    with pytest.raises(ConfigError) as e:
        fn(da, dim="chip")
    assert e.value.field == "dim"
    with pytest.raises(ConfigError) as e:
        fn(da.to_dataset())
    assert e.value.field in ("da", "a")


def test_yield_requires_threshold_and_valid_method():
    da = make_accuracy()
    with pytest.raises(ConfigError) as e:
        stats.yield_(da, dim="instance")
    assert e.value.field == "threshold" and "threshold" in str(e.value)
    with pytest.raises(ConfigError) as e:
        stats.yield_(da, threshold=None)
    assert e.value.field == "threshold"
    with pytest.raises(ConfigError) as e:
        stats.yield_(da, threshold=0.9, method="wald")
    assert e.value.field == "method"
    with pytest.raises(ConfigError) as e:
        stats.quantiles(da, 1.5)
    assert e.value.field == "q"


def test_package_exports():
    for name in ("mean", "quantiles", "yield_", "paired_difference", "unpaired_difference", "sequential_estimate",
                 "arrays"):
        assert hasattr(stats, name)
    assert stats.yield_ is not A.yield_


def test_mean_and_paired_difference_pass_method_and_bounds_through():
    rng = np.random.default_rng(5)
    a = xr.DataArray(rng.beta(20, 2, size=(3, 40)), dims=("noise_level", "instance"),
                     coords={"noise_level": [0.01, 0.02, 0.03]}, name="accuracy")
    b = a - 0.01 * xr.ones_like(a)
    m = stats.mean(a, method="betting", bounds=(0, 1))
    ref = A.mean_ci(a.values, method="betting", bounds=(0, 1))
    np.testing.assert_array_equal(m.interval.sel(ci_bound="lower").values, ref.lower)
    assert m.attrs["method"] == "betting"
    d = stats.paired_difference(a, b, method="betting", bounds=(0, 1))
    ref = A.paired_difference(a.values, b.values, method="betting", bounds=(0, 1))
    np.testing.assert_array_equal(d.interval.sel(ci_bound="upper").values, ref.upper)
    assert d.attrs["method"] == "betting"
