"""anvm_stats.report.figures: figures label their axes and plot the exact numbers (synthetic Datasets)."""

import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure

from anvm_stats import dims
from anvm_stats.report import (accuracy_distribution, layer_sensitivity_bars, mean_quantile_bands, paired_tables,
                               point_table, recovery_comparison, training_curves, yield_curve)
from tests.helpers import LAYERS, LEVELS, MODELS, synthetic


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


def test_recovery_table_and_figure():
    ds = synthetic(with_model=False)
    before = ds[dims.ACCURACY]
    ds["recovery_accuracy_before"] = before
    ds["recovery_accuracy_after"] = np.minimum(before + 0.05, 1.0)
    headers, rows = paired_tables(ds)["recovery"]
    assert all(r[-1] == "higher" for r in rows)
    fig = recovery_comparison(ds)
    assert len(fig.axes[0].get_lines()) == 2
