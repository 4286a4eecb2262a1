"""First-order vs exact IR drop over wire resistance x tile size: how large the effect is and where the
first-order mode stops tracking it.

``python -m benchmarks.ir_drop_accuracy reports/ir_drop_accuracy`` writes ``table.json``, ``table.md`` and
``accuracy.png`` there (atomically, each file complete or absent).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from anvm_stats.hardware.parasitics import Parasitics, effective_conductance
from anvm_stats.io import replace_atomically, temporary_sibling

SIZES = (16, 32, 64, 128, 256)
R_WIRES = (1e-6, 1e-5, 1e-4, 1e-3)


def tabulate(sizes=SIZES, r_wires=R_WIRES, *, seed: int = 0, batch: int = 64) -> list[dict]:
    """One row per (size, r_wire) on an ``n x n`` tile with conductances uniform on [0, 1] and inputs uniform
    on [0, 1] (``batch`` vectors); norms are Frobenius norms over the batch's column currents.

    Returns
    -------
    list of dict
        ``size``, ``r_wire``, ``r_n2`` (``r_wire * size**2``), ``effect`` (``|I_exact - I_ideal| / |I_ideal|``),
        ``first_order_error`` (``|I_first - I_exact| / |I_ideal|``), ``relative_to_effect``
        (``|I_first - I_exact| / |I_exact - I_ideal|``), ``exact_s`` (seconds for the exact ``G_eff``).
    """
    rows = []
    for n in sizes:
        rng = np.random.default_rng([seed, n])
        g = torch.tensor(rng.uniform(0.0, 1.0, (n, n)))
        v = torch.tensor(rng.uniform(0.0, 1.0, (batch, n)))
        ideal = v @ g
        for r in r_wires:
            t0 = time.perf_counter()
            exact = v @ effective_conductance(g, Parasitics(r_wire=r, mode="exact"))
            seconds = time.perf_counter() - t0
            first = v @ effective_conductance(g, Parasitics(r_wire=r, mode="first_order"))
            effect = float((exact - ideal).norm())
            err = float((first - exact).norm())
            rows.append({"size": n, "r_wire": r, "r_n2": r * n * n, "effect": effect / float(ideal.norm()),
                         "first_order_error": err / float(ideal.norm()), "relative_to_effect": err / effect,
                         "exact_s": seconds})
    return rows


def _write(path: Path, write) -> None:
    """``write(tmp)`` to a temporary sibling, then move it onto ``path`` (complete or absent)."""
    tmp = temporary_sibling(path)
    try:
        write(tmp)
        replace_atomically(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def to_markdown(rows: list[dict]) -> str:
    head = ("| size | r_wire | r_wire n^2 | IR-drop effect | first-order error | error / effect | exact solve (s) |\n"
            "|---:|---:|---:|---:|---:|---:|---:|\n")
    return head + "".join(
        f"| {r['size']} | {r['r_wire']:.0e} | {r['r_n2']:.3g} | {r['effect']:.3g} | {r['first_order_error']:.3g} "
        f"| {r['relative_to_effect']:.3g} | {r['exact_s']:.2f} |\n" for r in rows)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 3.4), dpi=100)
    for n in sorted({r["size"] for r in rows}):
        sel = [r for r in rows if r["size"] == n]
        ax.loglog([r["r_n2"] for r in sel], [r["relative_to_effect"] for r in sel], "o-", label=f"{n}x{n}")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("r_wire * n^2 (units of R_on)")
    ax.set_ylabel("|first order - exact| / |exact - ideal|")
    ax.set_title("First-order IR drop vs nodal analysis", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def main(out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    rows = tabulate()
    _write(out_dir / "table.json", lambda tmp: tmp.write_text(json.dumps(rows, indent=1) + "\n"))
    _write(out_dir / "table.md", lambda tmp: tmp.write_text(to_markdown(rows)))
    plot(rows, out_dir / "accuracy.png")
    print(to_markdown(rows))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "reports/ir_drop_accuracy")
