"""Figures of a results Dataset (matplotlib, Agg backend): each function returns a ``Figure``.

The x axis is the primary sweep dim (noise level, mean shift, ADC bits or levels, ...; see
:data:`anvm_stats.report.summary.PRIMARY_ORDER`); every other non-instance dim (``model``, ``hardware``, further
knobs) makes one series per combination of its values.
"""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .. import dims, stats  # noqa: E402
from .summary import MODEL_DIM, point_dims, settings  # noqa: E402

MAX_SERIES = 10
DPI = 100
LABELS = {dims.NOISE_LEVEL: "noise level (sigma)", "mean_shift": "mean shift (mu)", dims.ADC_BITS: "ADC bits",
          "adc_levels": "ADC levels", dims.DAC_BITS: "DAC bits", "dac_levels": "DAC levels",
          dims.STUCK_AT_RATE: "stuck-at rate", dims.T_INFERENCE: "time after programming (s)",
          MODEL_DIM: "model", "hardware": "hardware"}


def _label(dim: str | None) -> str:
    return LABELS.get(dim, dim or "")


def _layout(da: xr.DataArray) -> tuple[str | None, np.ndarray, bool, list[tuple[str, dict]]]:
    """``(primary dim, x values, numeric?, [(series label, isel dict)])``; categorical x uses positions."""
    order = point_dims(da)
    knobs = [d for d in order if np.issubdtype(da[d].dtype, np.number) and d not in (MODEL_DIM, "hardware")]
    primary = knobs[0] if knobs else (order[-1] if order else None)
    rest = [d for d in order if d != primary]
    if primary is None:
        xs, numeric = np.array([0]), True
    else:
        xs = da[primary].values
        numeric = bool(np.issubdtype(xs.dtype, np.number))
    series = []
    for idx in itertools.product(*[range(da.sizes[d]) for d in rest]):
        sel = dict(zip(rest, idx))
        label = ", ".join(f"{d}={_fmt(da[d].values[i])}" for d, i in sel.items())
        series.append((label, sel))
    return primary, xs, numeric, series[:MAX_SERIES]


def _fmt(v) -> str:
    v = v.item() if hasattr(v, "item") else v
    return f"{v:g}" if isinstance(v, float) else str(v)


def _x(xs: np.ndarray, numeric: bool) -> np.ndarray:
    return xs.astype(float) if numeric else np.arange(len(xs), dtype=float)


def _finish(fig: Figure, ax, primary, xs, numeric, series, ylabel: str, title: str) -> Figure:
    ax.set_xlabel(_label(primary) if primary else "")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if not numeric:
        ax.set_xticks(np.arange(len(xs)), [str(v) for v in xs])
    if primary is None:
        ax.set_xticks([])
    if any(lbl for lbl, _ in series):
        ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _new(width: float = 6.4, height: float = 4.0) -> tuple[Figure, plt.Axes]:
    fig = Figure(figsize=(width, height), dpi=DPI)
    return fig, fig.add_subplot(1, 1, 1)


def accuracy_distribution(ds: xr.Dataset, var: str = dims.ACCURACY) -> Figure:
    """Violin plot of ``var`` over chips at each sweep point (one colour per series)."""
    da = ds[var]
    primary, xs, numeric, series = _layout(da)
    fig, ax = _new()
    pos = np.arange(len(xs), dtype=float)
    n = len(series)
    width = 0.8 / n
    colors = plt.get_cmap("tab10")
    for s, (label, sel) in enumerate(series):
        sub = da.isel(sel)
        vals = [sub.isel({primary: i}).values if primary else sub.values for i in range(len(xs))]
        vals = [v[~np.isnan(v)] for v in vals]
        p = pos - 0.4 + width * (s + 0.5)
        parts = ax.violinplot(vals, positions=p, widths=width * 0.9, showmedians=True, showextrema=False)
        for body in parts["bodies"]:
            body.set_facecolor(colors(s % 10))
            body.set_alpha(0.6)
        parts["cmedians"].set_color(colors(s % 10))
        ax.plot([], [], color=colors(s % 10), lw=6, alpha=0.6, label=label or None)
    _finish(fig, ax, primary, xs, False, series, var.replace("_", " "),
            f"Distribution of {var.replace('_', ' ')} over {da.sizes[dims.INSTANCE]} chips per point")
    if primary is not None:
        ax.set_xticks(pos, [_fmt(v) for v in xs])
    return fig


def mean_quantile_bands(ds: xr.Dataset, var: str = dims.ACCURACY, *, ci: float | None = None,
                        quantiles=None) -> Figure:
    """Mean (line, with its CI as a dark band) and the outer quantiles (light band) of ``var`` vs the sweep."""
    _, c, qs = settings(ds, None, ci, quantiles)
    da = ds[var]
    primary, xs, numeric, series = _layout(da)
    m = stats.mean(da, ci=c)
    q = stats.quantiles(da, [min(qs), max(qs)], ci=c)
    fig, ax = _new()
    x = _x(xs, numeric)
    for s, (label, sel) in enumerate(series):
        color = f"C{s % 10}"
        mi, qi = m.isel(sel), q.isel(sel)
        est = np.atleast_1d(mi["estimate"].values)
        iv = mi["interval"].values.reshape(-1, 2)
        qv = qi["estimate"].values.reshape(2, -1)
        ax.fill_between(x, qv[0], qv[1], color=color, alpha=0.15, lw=0)
        ax.fill_between(x, iv[:, 0], iv[:, 1], color=color, alpha=0.45, lw=0)
        ax.plot(x, est, "o-", color=color, ms=3, label=label or "mean")
    _finish(fig, ax, primary, xs, numeric, series or [("mean", {})], var.replace("_", " "),
            f"Mean {var.replace('_', ' ')} ({int(c * 100)}% CI, dark) and {min(qs):g}-{max(qs):g} quantile band")
    return fig


def yield_curve(ds: xr.Dataset, var: str = dims.ACCURACY, *, threshold: float | None = None,
                ci: float | None = None) -> Figure:
    """Yield ``P(var >= threshold)`` over chips vs the sweep, with Clopper-Pearson interval bands."""
    thr, c, _ = settings(ds, threshold, ci, None)
    da = ds[var]
    primary, xs, numeric, series = _layout(da)
    y = stats.yield_(da, thr, ci=c)
    fig, ax = _new()
    x = _x(xs, numeric)
    for s, (label, sel) in enumerate(series):
        yi = y.isel(sel)
        iv = yi["interval"].values.reshape(-1, 2)
        ax.fill_between(x, iv[:, 0], iv[:, 1], color=f"C{s % 10}", alpha=0.25, lw=0)
        ax.plot(x, np.atleast_1d(yi["estimate"].values), "o-", color=f"C{s % 10}", ms=3, label=label or None)
    ax.set_ylim(-0.02, 1.02)
    return _finish(fig, ax, primary, xs, numeric, series, f"yield P({var} >= {thr:g})",
                   f"Yield with {int(c * 100)}% Clopper-Pearson intervals")


def layer_sensitivity_bars(ds: xr.Dataset, var: str = "sensitivity_trace") -> Figure:
    """Bars of the per-layer Hessian trace (error bars: +-2 standard errors), one group per model."""
    da = ds[var]
    se = ds.get(f"{var}_se")
    layers = [str(v) for v in da[dims.LAYER].values]
    models = [str(v) for v in da[MODEL_DIM].values] if MODEL_DIM in da.dims else [None]
    fig, ax = _new(max(6.4, 0.6 * len(layers) * len(models)), 4.0)
    pos = np.arange(len(layers), dtype=float)
    w = 0.8 / len(models)
    for i, mname in enumerate(models):
        sub = da.sel({MODEL_DIM: mname}) if mname is not None else da
        err = None if se is None else 2 * (se.sel({MODEL_DIM: mname}) if mname is not None else se).values
        ax.bar(pos - 0.4 + w * (i + 0.5), sub.values, w, yerr=err, capsize=2, color=f"C{i % 10}",
               label=f"model={mname}" if mname else None)
    ax.set_xticks(pos, layers, rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("layer")
    ax.set_ylabel("Hessian trace" if var == "sensitivity_trace" else var.replace("_", " "))
    ax.set_title("Per-layer sensitivity (Hutchinson trace, +-2 SE)", fontsize=10)
    if models != [None]:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def training_curves(ds: xr.Dataset) -> Figure:
    """One panel per ``history_*`` variable vs epoch, one line per model."""
    names = [v for v in ds.data_vars if str(v).startswith("history_") and dims.EPOCH in ds[v].dims
             and bool(ds[v].notnull().any())]
    main = [v for v in names if "loss" in str(v) or "accuracy" in str(v)]
    names = main or names
    fig = Figure(figsize=(4.0 * max(1, len(names)), 3.4), dpi=DPI)
    axes = [fig.add_subplot(1, max(1, len(names)), i + 1) for i in range(max(1, len(names)))]
    for ax, name in zip(axes, names):
        da = ds[name]
        ep = da[dims.EPOCH].values
        if MODEL_DIM in da.dims:
            for i, m in enumerate(da[MODEL_DIM].values):
                ax.plot(ep, da.sel({MODEL_DIM: m}).values, "-", color=f"C{i % 10}", label=str(m))
            ax.legend(fontsize=7)
        else:
            ax.plot(ep, da.values, "-")
        ax.set_xlabel("epoch")
        ax.set_ylabel(str(name)[len("history_"):].replace("_", " "))
        ax.grid(alpha=0.3)
    fig.suptitle("Training curves", fontsize=10)
    fig.tight_layout()
    return fig


def recovery_comparison(ds: xr.Dataset, *, ci: float | None = None) -> Figure:
    """Mean accuracy before and after per-chip recovery vs the sweep, with CI bands."""
    _, c, _ = settings(ds, None, ci, None)
    before, after = ds[f"recovery_{dims.ACCURACY}_before"], ds[f"recovery_{dims.ACCURACY}_after"]
    before = before.dropna(dims.INSTANCE, how="any")
    after = after.dropna(dims.INSTANCE, how="any")
    primary, xs, numeric, series = _layout(after)
    fig, ax = _new()
    x = _x(xs, numeric)
    for s, (label, sel) in enumerate(series):
        for da, style, name in ((before, "--", "before"), (after, "-", "after")):
            mi = stats.mean(da, ci=c).isel(sel)
            iv = mi["interval"].values.reshape(-1, 2)
            ax.fill_between(x, iv[:, 0], iv[:, 1], color=f"C{s % 10}", alpha=0.2, lw=0)
            ax.plot(x, np.atleast_1d(mi["estimate"].values), style, marker="o", ms=3, color=f"C{s % 10}",
                    label=f"{name} {label}".strip())
    return _finish(fig, ax, primary, xs, numeric, [("x", {})], "mean accuracy",
                   f"Per-chip recovery: before (dashed) and after (solid), {int(c * 100)}% CI")


#: name -> (function, file name, applies?)
FIGURES = {
    "distribution": (accuracy_distribution, "accuracy_distribution.png", lambda ds: dims.ACCURACY in ds),
    "mean_quantiles": (mean_quantile_bands, "accuracy_bands.png", lambda ds: dims.ACCURACY in ds),
    "yield": (yield_curve, "yield.png", lambda ds: dims.ACCURACY in ds),
    "sensitivity": (layer_sensitivity_bars, "layer_sensitivity.png",
                    lambda ds: "sensitivity_trace" in ds and dims.LAYER in ds.dims),
    "training": (training_curves, "training_curves.png",
                 lambda ds: any(str(v).startswith("history_") for v in ds.data_vars)),
    "recovery": (recovery_comparison, "recovery.png", lambda ds: f"recovery_{dims.ACCURACY}_after" in ds),
}
