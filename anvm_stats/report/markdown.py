"""``report.md`` and ``report.html`` of a results Dataset, built from one list of blocks so both say the same.

Blocks: ``("h1"|"h2"|"p", text)``, ``("table", (headers, rows))``, ``("img", file name, caption)``,
``("pre", text)``. The HTML embeds the PNGs as base64 (default) or links them relatively.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import xarray as xr

from .. import dims
from .fronts import applies as applies_front, front_blocks
from .summary import (HARDWARE_DIM, MODEL_DIM, fmt, paired_tables, point_table, seed_note, seed_table, seed_view,
                      settings)

#: the study file a report was made from, written beside the report
STUDY_FILE = "study.toml"

_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px;"
        "text-align:right}th{background:#f3f3f3}img{max-width:100%}pre{background:#f6f6f6;padding:1em;"
        "overflow-x:auto;font-size:12px}figcaption{color:#555;font-size:13px}")


def _setup_text(ds: xr.Dataset) -> str:
    a = ds.attrs
    n = ds.sizes.get(dims.INSTANCE, 0)
    parts = [f"Model: {a.get('model', '?')}", f"evaluation data: {a.get('dataset', '?')}",
             (f"{n} simulated chips per sweep point (instances 0..{n - 1}, seed {a.get('study_seed', '?')}, "
             f"the same chips at every point: differences are paired)")]
    if dims.TRAIN_SEED in ds.dims:
        seeds = [_v(v) for v in ds[dims.TRAIN_SEED].values]
        parts[-1] = (f"{n} simulated chips per sweep point and training seed (seed s's chips are instances 0..{n - 1}"
                     f" drawn from seed s: the same chips at every point and for every model of that seed, so "
                     f"differences are paired within a seed; other seeds draw other chips)")
        parts.append(f"{len(seeds)} training seeds {seeds} (every model trained once per seed: initial weights, "
                     f"data order and training noise from the seed)")
    grid = [d for d in ds[dims.ACCURACY].dims if d not in (dims.INSTANCE, MODEL_DIM, HARDWARE_DIM, dims.TRAIN_SEED)]
    if grid:
        parts.append("sweep: " + ", ".join(f"{d} in {[_v(v) for v in ds[d].values]}" for d in grid))
    if MODEL_DIM in ds.dims:
        parts.append(f"models: {[str(v) for v in ds[MODEL_DIM].values]}")
    if HARDWARE_DIM in ds.dims:
        parts.append(f"chip variants: {[str(v) for v in ds[HARDWARE_DIM].values]}")
    if "sequential_stopped_by" in a:
        parts.append(f"instances chosen sequentially (target CI width {a.get('sequential_target_width')}, "
                     f"stopped by {a['sequential_stopped_by']}, final width {fmt(float(a['sequential_width']), 4)})")
    return "; ".join(parts) + "."


def _v(v):
    v = v.item() if hasattr(v, "item") else v
    return round(v, 6) if isinstance(v, float) else v


def _float_text(ds: xr.Dataset) -> str | None:
    if "float_accuracy" not in ds:
        return None
    fa = ds["float_accuracy"]
    if dims.TRAIN_SEED in fa.dims:
        per = fa.transpose(..., dims.TRAIN_SEED)
        rows = [(None, per.values)] if per.ndim == 1 else list(zip(per[MODEL_DIM].values, per.values))
        return (f"Digital (float) accuracy, mean over the {fa.sizes[dims.TRAIN_SEED]} training seeds (min..max): "
                + ", ".join(f"{'' if m is None else f'{m}: '}{fmt(float(v.mean()))} ({fmt(float(v.min()))}.."
                            f"{fmt(float(v.max()))})" for m, v in rows) + ".")
    if fa.ndim == 0:
        return f"Digital (float) accuracy of the trained network: {fmt(float(fa))}."
    return "Digital (float) accuracy: " + ", ".join(f"{m}: {fmt(float(v))}" for m, v in
                                                    zip(fa[MODEL_DIM].values, fa.values)) + "."


def blocks(ds: xr.Dataset, figures: dict[str, str], *, threshold: float | None = None, ci: float | None = None,
           quantiles=None) -> list[tuple]:
    """The report's content. ``figures`` maps figure name -> PNG file name (relative to the report)."""
    thr, c, qs = settings(ds, threshold, ci, quantiles)
    out: list[tuple] = [("h1", f"Study: {ds.attrs.get('study', 'results')}")]
    if ds.attrs.get("study_description"):
        out.append(("p", str(ds.attrs["study_description"])))
    out.append(("p", _setup_text(ds)))
    ft = _float_text(ds)
    if ft:
        out.append(("p", ft))
    out += _chip_sections(ds, thr, c, qs)
    out += _paired_sections(ds, c)
    note, one = seed_note(ds), seed_view(ds)
    if f"recovery_{dims.ACCURACY}_after" in ds:
        out.append(("h2", "Accuracy after recovery" + note))
        out.append(("table", point_table(one, f"recovery_{dims.ACCURACY}_after", threshold=thr, ci=c,
                                         quantiles=qs)))
    elif "recovery" in ds.attrs and str(ds.attrs["recovery"]).startswith("skipped"):
        out.append(("p", f"Recovery: {ds.attrs['recovery']}."))
    if "sensitivity_trace" in ds and dims.LAYER in ds.dims:
        out.append(("h2", "Per-layer Hessian sensitivity" + note))
        out.append(("p", ("Hutchinson estimate of each layer's Hessian trace of the float network's loss, +- one "
                         "standard error; with several models, the trace of each relative to the first (a trained-"
                         "with-noise net should show a flatter loss: a ratio below 1).")))
        out.append(("table", sensitivity_table(one)))
    if applies_front(ds):
        out += front_blocks(ds, figures.get("front"), threshold=thr, ci=c, quantiles=qs)
    out += _figure_section(figures, note, thr, c, qs)
    out += _provenance_sections(ds)
    return out


def _chip_sections(ds: xr.Dataset, thr: float, c: float, qs) -> list[tuple]:
    """Accuracy over chips at each point (the first training seed's networks), accuracy across training seeds,
    and one table per extra metric."""
    pct, note, one = int(round(c * 100)), seed_note(ds), seed_view(ds)
    out: list[tuple] = [("h2", "Accuracy over chips at each sweep point" + note)]
    out.append(("p", f"Mean with a {pct}% Student-t interval; quantiles with distribution-free {pct}% "
                     f"order-statistic intervals; yield = fraction of chips with accuracy >= {thr:g}, with a "
                     f"{pct}% Clopper-Pearson interval."
                     + (" These intervals cover which chips were drawn, for these trained networks only: not "
                        "which networks training produced (see the next section)." if note else "")))
    out.append(("table", point_table(one, threshold=thr, ci=c, quantiles=qs)))
    if note:
        out.append(("h2", "Accuracy across training seeds"))
        out.append(("p", (f"Mean over the {ds.sizes[dims.TRAIN_SEED]} training seeds and their chips with a {pct}% "
                         f"two-level interval (Student-t over the per-seed means, seeds - 1 degrees of freedom): it "
                         f"covers which networks training produced and which chips each was tested on (the per-seed "
                         f"means carry their own chip sampling error). Between-seed sd: the spread of the exact "
                         f"per-seed means (method of moments); within-seed se: the chips-only standard error of "
                         f"one seed's mean.")))
        out.append(("table", seed_table(ds, ci=c)))
    for var in [v for v in str(ds.attrs.get("metrics", "")).split(",") if v and v != dims.ACCURACY and v in ds]:
        long_name = ds[var].attrs.get("long_name", var)
        out.append(("h2", f"{long_name[:1].upper()}{long_name[1:]} over chips at each sweep point" + note))
        out.append(("p", f"Variable {var!r} ({'higher' if ds[var].attrs.get('higher_is_better', 1) else 'lower'} "
                         f"is better): mean with a {pct}% Student-t interval; quantiles with distribution-free "
                         f"{pct}% order-statistic intervals."))
        out.append(("table", point_table(one, var, threshold=thr, ci=c, quantiles=qs, with_yield=False)))
    return out


#: section titles of the paired-difference tables (:func:`~anvm_stats.report.summary.paired_tables` keys)
PAIRED_TITLES = {"model": "Paired differences between trained models (same chips)",
                 "hardware": "Paired differences between chip variants (same base draws)",
                 "recovery": "Per-chip recovery: accuracy after minus before (same chips)"}


def _paired_sections(ds: xr.Dataset, c: float) -> list[tuple]:
    """One section per paired comparison, saying which uncertainty its interval covers."""
    pct, out = int(round(c * 100)), []
    for key, table in paired_tables(ds, ci=c).items():
        out.append(("h2", PAIRED_TITLES[key]))
        if seed_note(ds):
            out.append(("p", (f"Mean over the training seeds of the paired difference of accuracy (chips paired "
                             f"within each seed) with a {pct}% two-level interval across seeds (Student-t over the "
                             f"per-seed mean differences): it covers which networks training produced and which "
                             f"chips were drawn; 'higher' / 'lower' when it excludes zero. The last column is the "
                             f"paired-t interval of the first seed alone: it covers that seed's chips only, for "
                             f"one trained pair.")))
        else:
            out.append(("p", f"Mean paired difference of accuracy with a {pct}% paired-t interval; 'higher' / "
                             f"'lower' when the interval excludes zero."
                             + (" The interval covers which chips were drawn, for these trained networks: not "
                                "which networks training produced (one training seed; set [training] seeds to "
                                "compare across seeds)." if key == "model" else "")))
        out.append(("table", table))
    return out


def _figure_section(figures: dict[str, str], note: str, thr: float, c: float, qs) -> list[tuple]:
    """The figures with their captions (the front figure has its own section)."""
    pct = int(round(c * 100))
    captions = {"distribution": "Accuracy distribution over chips (violins; line = median).",
                "mean_quantiles": f"Mean accuracy with its {pct}% CI and the {min(qs):g}-{max(qs):g} quantile band.",
                "yield": f"Yield P(accuracy >= {thr:g}) with {pct}% Clopper-Pearson bands.",
                "sensitivity": "Per-layer Hessian trace (Hutchinson estimate, +-2 standard errors).",
                "training": "Training curves.",
                "recovery": "Mean accuracy before and after per-chip recovery."}
    shown = {k: f for k, f in figures.items() if k != "front"}
    if not shown:
        return []
    return [("h2", "Figures" + note)] + [("img", f, captions.get(k, k)) for k, f in shown.items()]


def _provenance_sections(ds: xr.Dataset) -> list[tuple]:
    """Provenance attrs, the hardware spec field by field, and the study file."""
    prov = {k: ds.attrs[k] for k in ("created_at", "anvm_stats_version", "torch_version", "device",
                                     "seed_entropy", "dataset", "train_s", "sweep_s") if k in ds.attrs}
    out: list[tuple] = [("h2", "Provenance"),
                        ("table", (["attribute", "value"], [[k, str(v)] for k, v in prov.items()]))]
    if ds.attrs.get("hardware_spec"):
        out.append(("p", "Hardware spec (each field of the spec's JSON, by its path):"))
        try:
            spec = json.loads(ds.attrs["hardware_spec"])
        except (TypeError, ValueError):
            out.append(("pre", str(ds.attrs["hardware_spec"])))
        else:
            out.append(("table", (["field", "value"], [[k, v] for k, v in flat_fields(spec)])))
    if ds.attrs.get("study_toml"):
        out.append(("p", "Study file:"))
        out.append(("file", STUDY_FILE, str(ds.attrs["study_toml"])))
    return out


def flat_fields(obj, prefix: str = "") -> list[tuple[str, str]]:
    """``(path, value)`` rows of a JSON object: nested keys joined with ``.``, list items as ``[i]``, leaves as
    JSON (``[]``/``{}`` for empty containers)."""
    if isinstance(obj, dict) and obj:
        return [row for k in sorted(obj) for row in flat_fields(obj[k], f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(obj, list) and obj:
        return [row for i, v in enumerate(obj) for row in flat_fields(v, f"{prefix}[{i}]")]
    return [(prefix, json.dumps(obj, default=str))]


def sensitivity_table(ds: xr.Dataset) -> tuple[list[str], list[list[str]]]:
    """Rows: layer; columns: trace +- se per model, and each model's trace / the first model's."""
    tr, se = ds["sensitivity_trace"], ds.get("sensitivity_trace_se")
    models = [str(m) for m in tr[MODEL_DIM].values] if MODEL_DIM in tr.dims else [None]
    headers = ["layer"] + [f"trace ({m})" if m else "trace" for m in models]
    headers += [f"{m} / {models[0]}" for m in models[1:]]
    rows = []
    for layer in tr[dims.LAYER].values:
        vals, row = [], [str(layer)]
        for m in models:
            sel = {dims.LAYER: layer, **({MODEL_DIM: m} if m else {})}
            v = float(tr.sel(sel))
            e = float(se.sel(sel)) if se is not None else float("nan")
            vals.append(v)
            row.append(f"{v:.4g} +- {e:.2g}")
        row += [f"{v / vals[0]:.3f}" if vals[0] else "nan" for v in vals[1:]]
        rows.append(row)
    return headers, rows


def _md_table(table) -> str:
    headers, rows = table
    esc = [[str(x).replace("|", "\\|") for x in r] for r in [headers, *rows]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return "\n".join(lines)


def to_markdown(bl: list[tuple]) -> str:
    parts = []
    for b in bl:
        kind = b[0]
        if kind == "h1":
            parts.append(f"# {b[1]}")
        elif kind == "h2":
            parts.append(f"## {b[1]}")
        elif kind == "p":
            parts.append(b[1])
        elif kind == "table":
            parts.append(_md_table(b[1]))
        elif kind == "img":
            parts.append(f"![{b[2]}]({b[1]})\n\n*{b[2]}*")
        elif kind == "pre":
            parts.append(f"```\n{b[1].rstrip()}\n```")
        elif kind == "file":
            parts.append(f"`{b[1]}` (beside this report):\n\n```toml\n{b[2].rstrip()}\n```")
    return "\n\n".join(parts) + "\n"


def to_html(bl: list[tuple], folder: Path, *, embed: str = "base64", title: str = "report") -> str:
    e = html.escape
    parts = [(f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{_CSS}</style></head><body>")]
    for b in bl:
        kind = b[0]
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{e(b[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{e(b[1])}</p>")
        elif kind == "table":
            headers, rows = b[1]
            head = "".join(f"<th>{e(h)}</th>" for h in headers)
            body = "".join("<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in r) + "</tr>" for r in rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            if embed == "base64":
                data = base64.b64encode((folder / b[1]).read_bytes()).decode("ascii")
                src = f"data:image/png;base64,{data}"
            else:
                src = e(b[1])
            parts.append(f"<figure><img src='{src}' alt='{e(b[2])}'><figcaption>{e(b[2])}</figcaption></figure>")
        elif kind == "pre":
            parts.append(f"<pre>{e(b[1])}</pre>")
        elif kind == "file":
            parts.append(f"<p><a href='{e(b[1])}'>{e(b[1])}</a> (beside this report)</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
