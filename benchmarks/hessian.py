"""Benchmark: seconds per Hutchinson probe against the cost of one gradient on the same data (target <= 3x)."""

from __future__ import annotations

import time

import torch

from anvm_stats.hessian import HessianOperator, hutchinson_trace

from .common import digits_mlp


def bench_hutchinson(n_probes: int = 32, repeats: int = 3, seed: int = 0) -> dict:
    """Time ``n_probes`` Hutchinson probes (batched ``probes_per_pass`` at a time, the default) and one full
    gradient of the mean loss, for the digits MLP on the 360 test samples. Returns a JSON-able dict."""
    model, x, y = digits_mlp("cpu", seed)
    data = (x, y)
    op = HessianOperator(model, data)
    op.gradient()
    t_grad = min(_timed(op.gradient) for _ in range(repeats))
    run = lambda: hutchinson_trace(op, seed=seed, rel_tol=0.0, min_probes=n_probes, max_probes=n_probes)  # noqa: E731
    run()
    t_probe = min(_timed(run) for _ in range(repeats)) / n_probes
    single = lambda: hutchinson_trace(op, seed=seed, rel_tol=0.0, min_probes=8, max_probes=8,  # noqa: E731
                                      probes_per_pass=1)
    t_single = min(_timed(single) for _ in range(repeats)) / 8
    return {"job": "digits MLP 64-256-256-10, 360 samples", "threads": torch.get_num_threads(),
            "gradient_s": t_grad, "probe_s_batched": t_probe, "probe_s_one_at_a_time": t_single,
            "probe_vs_gradient": t_probe / t_grad, "probe_one_at_a_time_vs_gradient": t_single / t_grad}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
