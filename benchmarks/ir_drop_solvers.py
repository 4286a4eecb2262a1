"""Speed of the IR-drop solvers: exact effective conductance by sparse LU (scipy, CPU) and by batched
preconditioned CG (torch, any device), and the first-order mode against the ideal product.

``python -m benchmarks.ir_drop_solvers [cpu|cuda] [OUT.json]`` prints one JSON object (and writes it to
``OUT.json`` atomically when given).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from anvm_stats.hardware import nodal
from anvm_stats.hardware.parasitics import Parasitics, effective_conductance
from anvm_stats.io import replace_atomically, temporary_sibling

from .common import best_time


def _count_iterations() -> list[int]:
    """Record the CG iterations of every ``nodal`` solve from now on (wraps the module's CG loop)."""
    counts: list[int] = []
    pcg = nodal._pcg

    def counting(apply_a, apply_m_inv, rhs, rtol, max_iter):
        calls = [0]

        def counted(x):
            calls[0] += 1
            return apply_a(x)

        out = pcg(counted, apply_m_inv, rhs, rtol, max_iter)
        counts.append(calls[0])
        return out

    nodal._pcg = counting
    return counts


def exact_solvers(device: str, cases=((32, 32), (8, 64), (4, 128), (2, 256)), r_wires=(1e-5, 1e-4)) -> list[dict]:
    """Exact ``G_eff`` of K n x n tiles (conductances uniform on [0, 1]): torch CG on ``device`` vs scipy's
    sparse LU (on the first tile only beyond 64x64, time scaled by K), and their largest difference."""
    counts = _count_iterations()
    rows = []
    for k, n in cases:
        g = np.random.default_rng([1, n]).uniform(0.0, 1.0, (k, n, n))
        eye = np.eye(n)
        gt, et = torch.tensor(g, device=device), torch.tensor(eye, device=device)
        for r in r_wires:
            nodal.solve_torch(gt[:1], et, r, r, 0.0)                       # warm-up
            counts.clear()
            t_torch = best_time(lambda gt=gt, et=et, r=r: nodal.solve_torch(gt, et, r, r, 0.0), torch.device(device), 1)
            k_scipy = k if n <= 64 else 1
            t0 = time.perf_counter()
            ref = nodal.solve_scipy(g[:k_scipy], eye, r, r, 0.0)
            t_scipy = (time.perf_counter() - t0) * k / k_scipy
            diff = float(np.abs(nodal.solve_torch(gt[:k_scipy], et, r, r, 0.0).cpu().numpy() - ref).max())
            rows.append({"K": k, "n": n, "r_wire": r, "torch_s": t_torch, "scipy_s": t_scipy,
                         "cg_iterations": counts[0], "max_abs_diff": diff})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def first_order_cost(device: str, k: int, n: int, batch: int) -> dict:
    """One product ``v @ G`` of K chips vs the same with the first-order ``G_eff`` computed first."""
    gen = torch.Generator(device=device).manual_seed(0)
    g = torch.rand(k, n, n, generator=gen, device=device)
    v = torch.rand(k, batch, n, generator=gen, device=device)
    p = Parasitics(r_wire=1e-5)
    ideal = best_time(lambda: v @ g, torch.device(device), 7)
    first = best_time(lambda: v @ effective_conductance(g, p), torch.device(device), 7)
    return {"K": k, "n": n, "batch": batch, "ideal_s": ideal, "first_order_s": first, "ratio": first / ideal}


def main(device: str = "cpu", out: str | None = None) -> dict:
    if device == "cpu":
        torch.set_num_threads(1)
    result = {"device": device, "torch": torch.__version__,
              "exact": exact_solvers(device) if device == "cuda" else
              exact_solvers(device, cases=((32, 16), (32, 32), (8, 64), (1, 128))),
              "first_order": [first_order_cost(device, *c) for c in
                              ((1024, 256, 256), (4096, 64, 64)) if device == "cuda"] or
                             [first_order_cost(device, 64, 256, 256), first_order_cost(device, 64, 64, 360)]}
    text = json.dumps(result, indent=1)
    print(text)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_sibling(path)
        tmp.write_text(text + "\n")
        replace_atomically(tmp, path)
    return result


if __name__ == "__main__":
    main(*sys.argv[1:])
