"""Reports of a results Dataset: PNG figures, ``report.md`` and ``report.html`` (same content and figures).

``write_report(ds, folder)`` writes everything; the figure functions live in :mod:`anvm_stats.report.figures`
and the tables in :mod:`anvm_stats.report.summary`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import xarray as xr

from ..io import write_text
from .figures import (FIGURES, accuracy_distribution, layer_sensitivity_bars, mean_quantile_bands, recovery_comparison,
                      training_curves, yield_curve)
from .fronts import write_front
from .markdown import STUDY_FILE, blocks, to_html, to_markdown
from .summary import format_text, paired_tables, point_table, seed_view

__all__ = ["write_report", "write_figures", "point_table", "paired_tables", "format_text", "accuracy_distribution",
           "mean_quantile_bands", "yield_curve", "layer_sensitivity_bars", "training_curves", "recovery_comparison"]


def write_figures(ds: xr.Dataset, folder: str | Path, plots=None) -> dict[str, str]:
    """Save every applicable figure in ``plots`` (default: the ``report_plots`` attr, else all) as PNG; results
    with a ``train_seed`` dim are drawn for the first seed (:func:`~anvm_stats.report.summary.seed_view`).

    Returns ``{figure name: file name}`` for those written. ``recovery`` is drawn whenever the data has it.
    """
    folder = Path(folder)
    ds = seed_view(ds)
    if plots is None:
        plots = [p for p in str(ds.attrs.get("report_plots", ",".join(FIGURES))).split(",") if p]
    plots = list(plots) + (["recovery"] if "recovery" not in plots else [])
    out = {}
    for name in plots:
        fn, fname, applies = FIGURES[name]
        if not applies(ds):
            continue
        fig = fn(ds)
        fig.savefig(folder / fname, dpi=100)
        out[name] = fname
    return out


def write_report(ds: xr.Dataset, folder: str | Path, *, plots=None, threshold: float | None = None,
                 ci: float | None = None, quantiles=None, html: bool | None = None, embed: str | None = None,
                 log: Callable[[str], None] = lambda s: None) -> dict[str, Path]:
    """Write the PNGs, ``report.md`` and (unless ``html=False``) ``report.html`` into ``folder``.

    Settings default to the results' ``report_*`` attrs (set from the study's ``[outputs]``).

    Returns
    -------
    dict
        ``{"markdown": path, "html": path, "figures": {name: path}}``; a study's results also get
        ``study.toml`` (the study file) beside the report.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figs = write_figures(ds, folder, plots)
    front = write_front(ds, folder, threshold=threshold, ci=ci, quantiles=quantiles)
    if front:
        figs["front"] = front
    bl = blocks(ds, figs, threshold=threshold, ci=ci, quantiles=quantiles)
    md = folder / "report.md"
    write_text(md, to_markdown(bl))
    if ds.attrs.get("study_toml"):
        write_text(folder / STUDY_FILE, str(ds.attrs["study_toml"]))
    out: dict = {"markdown": md, "figures": {k: folder / v for k, v in figs.items()}}
    if html if html is not None else bool(int(ds.attrs.get("report_html", 1))):
        page = folder / "report.html"
        write_text(page, to_html(bl, folder, embed=embed or str(ds.attrs.get("report_embed", "base64")),
                                 title=str(ds.attrs.get("study", "report"))))
        out["html"] = page
    log(f"report: {md}" + (f", {out['html']}" if "html" in out else "") + f", {len(figs)} figures")
    return out
