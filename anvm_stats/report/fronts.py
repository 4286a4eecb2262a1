"""Accuracy-vs-cost fronts of a results Dataset with cost variables (``sweep(..., cost=True)``, study
``sweep.cost = true``): every design point (models x chip variants x grid points) with its energy per inference,
latency and area beside its mean accuracy, a lower quantile and the yield, each with its interval; the designs that
no other design beats on energy and that statistic are marked Pareto-optimal.

The front is drawn on the point estimates; a design off the front whose interval overlaps a front design's is not
shown to be worse (the table gives the intervals).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, NullFormatter  # noqa: E402

from .. import dims, stats  # noqa: E402
from ..cost import pareto_mask  # noqa: E402
from .summary import fmt, point_dims, settings  # noqa: E402

#: file name of the front figure in a report folder
FRONT_FILE = "front.png"
DESIGN = "design"
#: the statistics a front is drawn for: (key, axis label)
STATISTICS = ("mean", "quantile", "yield")


def applies(ds: xr.Dataset) -> bool:
    """Whether ``ds`` has cost variables beside accuracy."""
    return dims.ENERGY_PER_INFERENCE in ds and dims.ACCURACY in ds


def designs(ds: xr.Dataset, *, threshold: float | None = None, ci: float | None = None,
            quantiles=None) -> xr.Dataset:
    """One row per design point (dim ``design``): ``label``, ``energy_per_inference`` and the other cost totals,
    ``mean`` / ``quantile`` (the lowest of the report quantiles) / ``yield`` estimates with ``*_lower`` /
    ``*_upper`` bounds, and ``front_mean`` / ``front_quantile`` / ``front_yield`` (Pareto-optimal for lower energy
    and a higher statistic)."""
    thr, c, qs = settings(ds, threshold, ci, quantiles)
    acc = ds[dims.ACCURACY]
    acc = acc.dropna(dims.INSTANCE, how="any") if bool(acc.isnull().any()) else acc
    order = point_dims(acc)
    acc = acc.transpose(*order, dims.INSTANCE)
    points = list(np.ndindex(*[acc.sizes[d] for d in order])) if order else [()]
    labels = [", ".join(f"{d}={_coord(acc[d].values[i])}" for d, i in zip(order, idx)) or "chip" for idx in points]
    flat = xr.DataArray(acc.values.reshape(len(points), acc.sizes[dims.INSTANCE]), dims=(DESIGN, dims.INSTANCE))
    m = stats.mean(flat, ci=c)
    q = stats.quantiles(flat, [min(qs)], ci=c).isel({dims.QUANTILE: 0})
    y = stats.yield_(flat, thr, ci=c)
    out = {"label": ((DESIGN,), labels)}
    template = acc.isel({dims.INSTANCE: 0}, drop=True)
    for name in (dims.ENERGY_PER_INFERENCE, dims.LATENCY_PER_INFERENCE, dims.CHIP_AREA):
        if name in ds:
            out[name] = ((DESIGN,), ds[name].broadcast_like(template).transpose(*order).values.reshape(-1))
    if dims.ENERGY in ds and dims.COMPONENT in ds[dims.ENERGY].dims:
        by = ds[dims.ENERGY].broadcast_like(template).transpose(*order, dims.COMPONENT)
        out[dims.ENERGY] = ((DESIGN, dims.COMPONENT), by.values.reshape(len(points), by.sizes[dims.COMPONENT]))
    for key, r in (("mean", m), ("quantile", q), ("yield", y)):
        iv = r["interval"].transpose(DESIGN, dims.CI_BOUND).values
        out[key] = ((DESIGN,), r["estimate"].values)
        out[f"{key}_lower"], out[f"{key}_upper"] = ((DESIGN,), iv[:, 0]), ((DESIGN,), iv[:, 1])
        out[f"front_{key}"] = ((DESIGN,), pareto_mask(out[dims.ENERGY_PER_INFERENCE][1], r["estimate"].values))
    res = xr.Dataset(out, coords={dims.COMPONENT: ds[dims.COMPONENT].values} if dims.ENERGY in out else None)
    res.attrs.update(quantile=min(qs), threshold=thr, ci=c)
    return res


def _coord(v) -> str:
    v = v.item() if hasattr(v, "item") else v
    return f"{v:g}" if isinstance(v, float) else str(v)


def front_table(d: xr.Dataset) -> tuple[list[str], list[list[str]]]:
    """The design table of :func:`designs`, by increasing energy, front membership marked."""
    pct = int(round(d.attrs["ci"] * 100))
    ql = f"q{d.attrs['quantile']:g}"
    headers = ["design", "energy (nJ)", "latency (ns)", "area (mm^2)", "mean", f"mean {pct}% CI", ql,
               f"{ql} {pct}% CI", f"yield(>={d.attrs['threshold']:g})", f"yield {pct}% CI", "Pareto-optimal for"]
    rows = []
    for i in np.argsort(d[dims.ENERGY_PER_INFERENCE].values, kind="stable"):
        on = [k if k != "quantile" else ql for k in STATISTICS if bool(d[f"front_{k}"].values[i])]
        row = [str(d["label"].values[i]), f"{d[dims.ENERGY_PER_INFERENCE].values[i] * 1e9:.3g}"]
        row.append(f"{d[dims.LATENCY_PER_INFERENCE].values[i] * 1e9:.3g}" if dims.LATENCY_PER_INFERENCE in d else "")
        row.append(f"{d[dims.CHIP_AREA].values[i] * 1e6:.3g}" if dims.CHIP_AREA in d else "")
        for k in STATISTICS:
            row += [fmt(float(d[k].values[i])),
                    f"[{fmt(float(d[f'{k}_lower'].values[i]))}, {fmt(float(d[f'{k}_upper'].values[i]))}]"]
        row.append(", ".join(on) or "-")
        rows.append(row)
    return headers, rows


def component_table(d: xr.Dataset) -> tuple[list[str], list[list[str]]] | None:
    """Energy per inference by component (nJ) of the designs on the mean-accuracy front, by increasing energy;
    None without a per-component breakdown."""
    if dims.ENERGY not in d:
        return None
    comps = [str(c) for c in d[dims.COMPONENT].values]
    rows = []
    front = np.flatnonzero(d["front_mean"].values)
    for i in front[np.argsort(d[dims.ENERGY_PER_INFERENCE].values[front], kind="stable")]:
        e = d[dims.ENERGY].values[i]
        rows.append([str(d["label"].values[i])] + [f"{v * 1e9:.3g}" for v in e] + [f"{e.sum() * 1e9:.3g}"])
    return ["design"] + comps + ["total"], rows


def front_figure(d: xr.Dataset) -> Figure:
    """Three panels against energy per inference (log x): mean accuracy, the lower quantile and the yield, each
    with its interval; Pareto-optimal designs filled, joined by the front and labelled."""
    pct = int(round(d.attrs["ci"] * 100))
    titles = {"mean": f"mean accuracy ({pct}% CI)", "quantile": f"{d.attrs['quantile']:g} quantile ({pct}% CI)",
              "yield": f"yield P(acc >= {d.attrs['threshold']:g}) ({pct}% CI)"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), sharex=True)
    e = d[dims.ENERGY_PER_INFERENCE].values * 1e9
    for ax, key in zip(axes, STATISTICS):
        est = d[key].values
        lo = np.where(np.isfinite(d[f"{key}_lower"].values), d[f"{key}_lower"].values, 0.0)
        hi = np.where(np.isfinite(d[f"{key}_upper"].values), d[f"{key}_upper"].values, 1.0)
        front = d[f"front_{key}"].values.astype(bool)
        err = np.vstack([np.clip(est - lo, 0, None), np.clip(hi - est, 0, None)])
        ax.errorbar(e[~front], est[~front], yerr=err[:, ~front], fmt="o", mfc="none", color="0.55", ms=5, lw=0.8,
                    capsize=2, label="dominated")
        ax.errorbar(e[front], est[front], yerr=err[:, front], fmt="o", color="C3", ms=6, lw=1.2, capsize=2,
                    label="Pareto-optimal")
        idx = np.flatnonzero(front)
        idx = idx[np.argsort(e[idx])]
        ax.step(e[idx], est[idx], where="post", color="C3", lw=1, alpha=0.6)
        for i in idx if key == "mean" else ():   # labels once, on the mean panel
            ax.annotate(str(d["label"].values[i]).replace("hardware=", "").replace("adc_bits=", "adc "), (e[i], est[i]),
                        textcoords="offset points", xytext=(4, -10), fontsize=6.5, color="C3")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("energy per inference (nJ)")
        ax.set_title(titles[key], fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy / yield")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("Accuracy vs energy per inference over the design grid (Pareto-optimal designs in red)")
    fig.tight_layout()
    return fig


def write_front(ds: xr.Dataset, folder, *, threshold: float | None = None, ci: float | None = None,
                quantiles=None) -> str | None:
    """Save the front figure of ``ds`` as :data:`FRONT_FILE` in ``folder``; its file name, or None when ``ds`` has no
    cost variables."""
    if not applies(ds):
        return None
    from pathlib import Path

    fig = front_figure(designs(ds, threshold=threshold, ci=ci, quantiles=quantiles))
    fig.savefig(Path(folder) / FRONT_FILE, dpi=100)
    plt.close(fig)
    return FRONT_FILE


def front_blocks(ds: xr.Dataset, figure: str | None, *, threshold: float | None = None, ci: float | None = None,
                 quantiles=None) -> list[tuple]:
    """The report section (blocks of :mod:`anvm_stats.report.markdown`): text, the front figure, the table."""
    d = designs(ds, threshold=threshold, ci=ci, quantiles=quantiles)
    cell = ds.attrs.get("cost_cell", "?")
    out: list[tuple] = [("h2", "What each design costs: accuracy vs energy per inference"), (
        "p", f"Energy, latency and area per inference from the operation counts of the program each chip runs "
             f"(DAC and ADC conversions, cell and bit-line reads, digital shift-and-add, tile accumulation and "
             f"offset terms; {cell} cells) and the constants table {ds.attrs.get('cost_constants', '?')} "
             f"(anvm_stats.cost): order-of-magnitude values from published designs, to compare designs with each "
             f"other, not a sign-off estimate. A design is Pareto-optimal for a statistic when no other design has "
             f"lower (or equal) energy and a higher (or equal) estimate, one strictly; fronts are drawn on the point "
             f"estimates, and the intervals say which differences the chips drawn can resolve.")]
    assumed = ds.attrs.get("cost_assumed_converters", "")
    if assumed:
        out.append(("p", f"The chips have no {' / '.join(a.upper() for a in assumed.split(','))}: its cost uses the "
                         f"table's default resolution (default_{'_bits, default_'.join(assumed.split(','))}_bits)."))
    if figure:
        out.append(("img", figure, "Mean accuracy, lower quantile and yield vs energy per inference; Pareto-optimal "
                                   "designs filled and joined."))
    out.append(("table", front_table(d)))
    comp = component_table(d)
    if comp is not None:
        out.append(("p", "Where the energy goes: energy per inference (nJ) by component for the designs on the "
                         "mean-accuracy front (dac: input drivers; cells: device read currents; bitlines: column "
                         "sensing; adc: conversions; shift_add / accumulate / offset: digital adds)."))
        out.append(("table", comp))
    return out
