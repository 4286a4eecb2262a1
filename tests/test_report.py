"""Report figures and tables on synthetic Datasets (exact numbers checked against numpy / scipy)."""

import numpy as np
import pytest
import scipy.stats
import xarray as xr
from matplotlib.figure import Figure

from anvm_stats import dims
from anvm_stats.report import (accuracy_distribution, layer_sensitivity_bars, mean_quantile_bands, paired_tables,
                               point_table, recovery_comparison, training_curves, write_report, yield_curve)
from anvm_stats.report.summary import format_text

N, LEVELS, MODELS, LAYERS = 40, [0.02, 0.1, 0.2], ["plain", "robust"], ["fc1", "fc2", "fc3"]


def synthetic(seed=0, with_model=True) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    shape = (len(MODELS), len(LEVELS), N) if with_model else (len(LEVELS), N)
    base = 0.95 - 0.8 * np.asarray(LEVELS)[:, None]
    acc = np.clip(base + 0.03 * rng.standard_normal(shape), 0, 1)
    d = (["model"] if with_model else []) + [dims.NOISE_LEVEL, dims.INSTANCE]
    ds = xr.Dataset({dims.ACCURACY: (d, acc)},
                    coords={dims.NOISE_LEVEL: LEVELS, dims.INSTANCE: np.arange(N),
                            **({"model": MODELS} if with_model else {})})
    ds["sensitivity_trace"] = (("model", dims.LAYER) if with_model else (dims.LAYER,),
                               rng.uniform(1, 5, (len(MODELS), 3) if with_model else 3))
    ds["sensitivity_trace_se"] = ds["sensitivity_trace"] * 0.1
    ds = ds.assign_coords({dims.LAYER: LAYERS})
    ep = np.arange(1, 6)
    ds["history_loss"] = (("model", dims.EPOCH) if with_model else (dims.EPOCH,),
                          np.exp(-ep / 3) * (np.ones((2, 1)) if with_model else 1))
    ds["history_accuracy"] = ds["history_loss"] * 0 + 0.9
    ds = ds.assign_coords({dims.EPOCH: ep})
    ds.attrs.update(study="synthetic", report_yield_threshold=0.8, report_ci=0.95, report_quantiles=[0.05, 0.5, 0.95])
    return ds


@pytest.mark.parametrize("with_model", [True, False])
def test_figure_functions_label_their_axes(with_model):
    ds = synthetic(with_model=with_model)
    n_series = len(MODELS) if with_model else 0
    for fn, ylabel in ((accuracy_distribution, "accuracy"), (mean_quantile_bands, "accuracy"),
                       (yield_curve, "yield P(accuracy >= 0.8)")):
        fig = fn(ds)
        assert isinstance(fig, Figure)
        ax = fig.axes[0]
        assert ax.get_xlabel() == "noise level (sigma)"
        assert ax.get_ylabel() == ylabel
        legend = ax.get_legend()
        assert (len(legend.get_texts()) if legend else 0) == n_series
    fig = layer_sensitivity_bars(ds)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == LAYERS
    assert ax.get_ylabel() == "Hessian trace" and ax.get_xlabel() == "layer"
    assert len(ax.patches) == len(LAYERS) * (len(MODELS) if with_model else 1)
    fig = training_curves(ds)
    assert len(fig.axes) == 2 and all(a.get_xlabel() == "epoch" for a in fig.axes)
    assert {a.get_ylabel() for a in fig.axes} == {"loss", "accuracy"}


def test_yield_curve_plots_the_exact_fraction():
    ds = synthetic()
    fig = yield_curve(ds, threshold=0.8)
    line = fig.axes[0].get_lines()[0]
    expected = (ds[dims.ACCURACY].sel(model="plain") >= 0.8).mean(dims.INSTANCE).values
    np.testing.assert_allclose(line.get_ydata(), expected)
    np.testing.assert_allclose(line.get_xdata(), LEVELS)


def test_categorical_and_point_free_layouts():
    rng = np.random.default_rng(1)
    ds = xr.Dataset({dims.ACCURACY: (("hardware", dims.INSTANCE), rng.uniform(0.8, 1, (3, 20)))},
                    coords={"hardware": ["differential", "offset", "bit_sliced"]})
    fig = mean_quantile_bands(ds)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["differential", "offset", "bit_sliced"]
    single = xr.Dataset({dims.ACCURACY: ((dims.INSTANCE,), rng.uniform(0.8, 1, 30))})
    for fn in (accuracy_distribution, mean_quantile_bands, yield_curve):
        assert isinstance(fn(single), Figure)
    headers, rows = point_table(single, threshold=0.9)
    assert len(rows) == 1 and headers[0] == "n"


def test_point_table_matches_scipy():
    ds = synthetic()
    headers, rows = point_table(ds, threshold=0.8, ci=0.95, quantiles=[0.5])
    assert headers[:3] == ["model", dims.NOISE_LEVEL, "n"]
    assert len(rows) == len(MODELS) * len(LEVELS)
    row = rows[len(LEVELS) + 1]                      # robust, 0.1
    x = ds[dims.ACCURACY].sel(model="robust", noise_level=0.1).values
    assert row[0] == "robust" and row[1] == "0.1" and row[2] == str(N)
    assert row[3] == f"{x.mean():.3f}"
    t = scipy.stats.t.interval(0.95, N - 1, loc=x.mean(), scale=scipy.stats.sem(x))
    assert row[4] == f"[{t[0]:.3f}, {t[1]:.3f}]"
    k = int((x >= 0.8).sum())
    cp = scipy.stats.binomtest(k, N).proportion_ci(0.95, method="exact")
    assert row[-2] == f"{k / N:.3f}"
    assert row[-1] == f"[{cp.low:.3f}, {cp.high:.3f}]"
    text = format_text((headers, rows))
    assert text.splitlines()[0].split()[0] == "model" and len(text.splitlines()) == 2 + len(rows)


def test_paired_tables_use_the_same_chips():
    ds = synthetic()
    tables = paired_tables(ds, ci=0.95)
    headers, rows = tables["model"]
    assert headers[0] == "comparison" and len(rows) == len(LEVELS)
    d = (ds[dims.ACCURACY].sel(model="robust") - ds[dims.ACCURACY].sel(model="plain")).sel(noise_level=0.2).values
    row = rows[2]
    assert row[0] == "robust - plain" and row[2] == f"{d.mean():.4f}"
    t = scipy.stats.t.interval(0.95, N - 1, loc=d.mean(), scale=scipy.stats.sem(d))
    assert row[3] == f"[{t[0]:.4f}, {t[1]:.4f}]"
    assert "hardware" not in tables and "recovery" not in tables


def test_recovery_table_and_figure():
    ds = synthetic(with_model=False)
    before = ds[dims.ACCURACY]
    ds["recovery_accuracy_before"] = before
    ds["recovery_accuracy_after"] = np.minimum(before + 0.05, 1.0)
    headers, rows = paired_tables(ds)["recovery"]
    assert all(r[-1] == "higher" for r in rows)
    fig = recovery_comparison(ds)
    assert len(fig.axes[0].get_lines()) == 2


@pytest.mark.parametrize("embed", ["base64", "link"])
def test_write_report_md_and_html_share_figures(tmp_path, embed):
    ds = synthetic()
    out = write_report(ds, tmp_path, embed=embed)
    md = out["markdown"].read_text()
    html = out["html"].read_text()
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == sorted(["accuracy_distribution.png", "accuracy_bands.png", "yield.png", "layer_sensitivity.png",
                           "training_curves.png"])
    assert all(f"]({p})" in md for p in pngs)
    assert html.count("<img ") == len(pngs)
    if embed == "base64":
        assert html.count("data:image/png;base64,") == len(pngs)
    else:
        assert all(f"src='{p}'" in html for p in pngs)
    assert "robust - plain" in md and "robust - plain" in html
    for p in tmp_path.glob("*.png"):
        assert p.stat().st_size < 200_000
