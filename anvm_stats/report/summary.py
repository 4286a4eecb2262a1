"""Headline numbers of a results Dataset as tables: per sweep point mean with CI, quantiles with distribution-free
CIs, yield with a Clopper-Pearson CI; paired differences between models, chips, and before/after recovery.

Results with a ``train_seed`` dim (several trained networks per model): the per-point table describes the chips of
the first seed's networks (:func:`seed_view`; its intervals cover the chips only), :func:`seed_table` gives the
mean over seeds with the two-level interval, and the paired differences are the mean over seeds with the two-level
interval (:mod:`anvm_stats.stats.seeds`), beside the first seed's chips-only interval.

A table is ``(headers, rows)`` with rows of strings, rendered by :mod:`anvm_stats.report.markdown` and by
``anvm-stats show``.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from .. import dims
from .. import stats

MODEL_DIM = "model"
HARDWARE_DIM = "hardware"
#: preferred x axis of plots and first columns of tables, in order
PRIMARY_ORDER = (dims.NOISE_LEVEL, "mean_shift", dims.ADC_BITS, "adc_levels", dims.DAC_BITS, "dac_levels",
                 dims.STUCK_AT_RATE, dims.T_INFERENCE)
Table = tuple[list[str], list[list[str]]]


def settings(ds: xr.Dataset, threshold: float | None = None, ci: float | None = None,
             quantiles=None) -> tuple[float, float, tuple[float, ...]]:
    """Report settings: arguments, else the ``report_*`` attrs of ``ds``, else 0.9 / 0.95 / (0.05, 0.5, 0.95)."""
    thr = threshold if threshold is not None else float(ds.attrs.get("report_yield_threshold", 0.9))
    c = ci if ci is not None else float(ds.attrs.get("report_ci", 0.95))
    q = quantiles if quantiles is not None else ds.attrs.get("report_quantiles", (0.05, 0.5, 0.95))
    return float(thr), float(c), tuple(float(v) for v in np.atleast_1d(q))


def seed_view(ds: xr.Dataset) -> xr.Dataset:
    """The results of the first training seed (``ds`` itself without a ``train_seed`` dim)."""
    return ds.isel({dims.TRAIN_SEED: 0}, drop=True) if dims.TRAIN_SEED in ds.dims else ds


def seed_note(ds: xr.Dataset) -> str:
    """``" (networks of training seed s, the first of S)"`` for results with a ``train_seed`` dim, else ``""``."""
    if dims.TRAIN_SEED not in ds.dims:
        return ""
    return (f" (networks of training seed {_coord(ds[dims.TRAIN_SEED].values[0])}, the first of "
            f"{ds.sizes[dims.TRAIN_SEED]})")


def point_dims(da: xr.DataArray) -> list[str]:
    """The non-instance, non-seed dims of ``da``: ``model`` and ``hardware`` first, then sweep knobs (primary
    first)."""
    rest = [d for d in da.dims if d not in (dims.INSTANCE, dims.TRAIN_SEED)]
    head = [d for d in (MODEL_DIM, HARDWARE_DIM) if d in rest]
    knobs = sorted([d for d in rest if d not in head],
                   key=lambda d: PRIMARY_ORDER.index(d) if d in PRIMARY_ORDER else len(PRIMARY_ORDER))
    return head + knobs


def fmt(v: float, digits: int = 3) -> str:
    """A number for a table (``-inf``/``inf`` where an interval is unbounded)."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "nan"
    if np.isinf(v):
        return "-inf" if v < 0 else "inf"
    return f"{v:.{digits}f}"


def _coord(v) -> str:
    v = v.item() if hasattr(v, "item") else v
    return f"{v:g}" if isinstance(v, float) else str(v)


def _points(da: xr.DataArray) -> list[dict]:
    order = point_dims(da)
    if not order:
        return [{}]
    sizes = [da.sizes[d] for d in order]
    return [dict(zip(order, idx)) for idx in np.ndindex(*sizes)]


def _clean(da: xr.DataArray) -> xr.DataArray:
    return da.dropna(dims.INSTANCE, how="any") if bool(da.isnull().any()) else da


def point_table(ds: xr.Dataset, var: str = dims.ACCURACY, *, threshold: float | None = None,
                ci: float | None = None, quantiles=None, with_yield: bool = True) -> Table:
    """One row per sweep point: coordinates, n, mean [CI], each quantile [CI], yield P(var >= threshold) [CI]
    (unless ``with_yield`` is false: for metrics without a pass mark, e.g. perplexity); of the first training
    seed's networks when ``ds`` has a ``train_seed`` dim (:func:`seed_view`)."""
    thr, c, qs = settings(ds, threshold, ci, quantiles)
    ds = seed_view(ds)
    da = _clean(ds[var])
    m = stats.mean(da, ci=c)
    qd = stats.quantiles(da, list(qs), ci=c)
    y = stats.yield_(da, thr, ci=c)
    order = point_dims(da)
    pct = int(round(c * 100))
    headers = order + ["n", "mean", f"mean {pct}% CI"]
    for q in qs:
        headers += [f"q{q:g}", f"q{q:g} {pct}% CI"]
    if with_yield:
        headers += [f"yield(>={thr:g})", f"yield {pct}% CI"]
    rows = []
    for pt in _points(da):
        mi = m.isel(pt)
        row = [_coord(da[d].values[i]) for d, i in pt.items()]
        row += [str(int(mi["n"])), fmt(float(mi["estimate"])),
                f"[{fmt(float(mi['interval'][0]))}, {fmt(float(mi['interval'][1]))}]"]
        for j in range(len(qs)):
            qi = qd.isel(pt).isel({dims.QUANTILE: j})
            row += [fmt(float(qi["estimate"])),
                    f"[{fmt(float(qi['interval'][0]))}, {fmt(float(qi['interval'][1]))}]"]
        if with_yield:
            yi = y.isel(pt)
            row += [fmt(float(yi["estimate"])),
                    f"[{fmt(float(yi['interval'][0]))}, {fmt(float(yi['interval'][1]))}]"]
        rows.append(row)
    return headers, rows


def seed_table(ds: xr.Dataset, var: str = dims.ACCURACY, *, ci: float | None = None) -> Table:
    """One row per model / sweep point of results with a ``train_seed`` dim: the mean over seeds and chips with
    the two-level interval (:func:`anvm_stats.stats.across_seeds`), the per-seed means, the between-seed standard
    deviation and the root-mean-square within-seed (chips-only) standard error."""
    _, c, _ = settings(ds, None, ci, None)
    da = _clean(ds[var])
    est = stats.across_seeds(da, ci=c)
    pct = int(round(c * 100))
    order = point_dims(da)
    headers = order + ["seeds", "mean", f"{pct}% CI across seeds", "per-seed means", "between-seed sd",
                       "within-seed se"]
    rows = []
    for pt in _points(da):
        e = est.isel(pt)
        rows.append([_coord(da[d].values[i]) for d, i in pt.items()]
                    + [str(int(e["n"])), fmt(float(e["estimate"])),
                       f"[{fmt(float(e['interval'][0]))}, {fmt(float(e['interval'][1]))}]",
                       ", ".join(fmt(float(v)) for v in e["per_seed"].values), fmt(float(e["between_seed_sd"]), 4),
                       fmt(float(np.sqrt(np.mean(e["within_seed_se"].values ** 2))), 4)])
    return headers, rows


def _seed_diff_rows(a: xr.DataArray, b: xr.DataArray, label: str, c: float) -> list[list[str]]:
    d = stats.seed_difference(a, b, ci=c)
    first = stats.paired_difference(a.isel({dims.TRAIN_SEED: 0}, drop=True), b.isel({dims.TRAIN_SEED: 0}, drop=True),
                                    ci=c)
    rows = []
    for pt in _points(a):
        di, fi = d.isel(pt), first.isel(pt)
        lo, hi = float(di["interval"][0]), float(di["interval"][1])
        verdict = "higher" if lo > 0 else ("lower" if hi < 0 else "no difference shown")
        rows.append([label] + [_coord(a[k].values[i]) for k, i in pt.items()]
                    + [fmt(float(di["estimate"]), 4), f"[{fmt(lo, 4)}, {fmt(hi, 4)}]", verdict,
                       ", ".join(fmt(float(v), 4) for v in di["per_seed"].values),
                       f"[{fmt(float(fi['interval'][0]), 4)}, {fmt(float(fi['interval'][1]), 4)}]"])
    return rows


def _diff_rows(a: xr.DataArray, b: xr.DataArray, label: str, c: float) -> list[list[str]]:
    if dims.TRAIN_SEED in a.dims:
        return _seed_diff_rows(a, b, label, c)
    d = stats.paired_difference(a, b, ci=c)
    rows = []
    for pt in _points(a):
        di = d.isel(pt)
        lo, hi = float(di["interval"][0]), float(di["interval"][1])
        verdict = "higher" if lo > 0 else ("lower" if hi < 0 else "no difference shown")
        rows.append([label] + [_coord(a[k].values[i]) for k, i in pt.items()]
                    + [fmt(float(di["estimate"]), 4), f"[{fmt(lo, 4)}, {fmt(hi, 4)}]", verdict])
    return rows


def _diff_headers(ds: xr.Dataset, order: list[str], pct: int) -> list[str]:
    if dims.TRAIN_SEED not in ds.dims:
        return ["comparison"] + order + ["mean difference", f"{pct}% CI", "verdict"]
    s0 = _coord(ds[dims.TRAIN_SEED].values[0])
    return (["comparison"] + order + ["mean difference (over seeds)", f"{pct}% CI across seeds", "verdict",
                                      "per-seed differences", f"seed {s0} chips-only {pct}% CI"])


def paired_tables(ds: xr.Dataset, var: str = dims.ACCURACY, *, ci: float | None = None) -> dict[str, Table]:
    """Paired differences (same chips) of ``var``: each model vs the first, each chip variant vs the first, and
    after vs before recovery. Keys: ``"model"``, ``"hardware"``, ``"recovery"`` (only those that apply).

    With a ``train_seed`` dim: the mean over seeds of the within-seed paired difference, its two-level interval
    across seeds (the verdict's), the per-seed differences and the first seed's chips-only paired-t interval."""
    _, c, _ = settings(ds, None, ci, None)
    pct = int(round(c * 100))
    out = {}
    for dim in (MODEL_DIM, HARDWARE_DIM):
        if var in ds and dim in ds[var].dims and ds.sizes[dim] > 1:
            da = ds[var]
            base = da.isel({dim: 0}, drop=True)
            rows = []
            for i in range(1, ds.sizes[dim]):
                other = da.isel({dim: i}, drop=True)
                rows += _diff_rows(other, base, f"{_coord(da[dim].values[i])} - {_coord(da[dim].values[0])}", c)
            out[dim] = (_diff_headers(ds, point_dims(base), pct), rows)
    b, a = f"recovery_{dims.ACCURACY}_before", f"recovery_{dims.ACCURACY}_after"
    if a in ds and b in ds:
        after, before = _clean(ds[a]), _clean(ds[b])
        rows = []
        if MODEL_DIM in after.dims:
            for i in range(after.sizes[MODEL_DIM]):
                rows += _diff_rows(after.isel({MODEL_DIM: i}, drop=True), before.isel({MODEL_DIM: i}, drop=True),
                                   f"after - before ({_coord(after[MODEL_DIM].values[i])})", c)
            order = point_dims(after.isel({MODEL_DIM: 0}, drop=True))
        else:
            rows = _diff_rows(after, before, "after - before", c)
            order = point_dims(after)
        out["recovery"] = (_diff_headers(ds, order, pct), rows)
    return out


def format_text(table: Table) -> str:
    """A table as aligned plain text for the terminal."""
    headers, rows = table
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(str(x).rjust(w) for x, w in zip(r, widths)) for r in rows]
    return "\n".join([line, sep, *body])
