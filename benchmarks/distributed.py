"""Benchmark of distributed sweeps: throughput of a LocalCluster against the in-process engine, and the
per-task overhead (so users can pick ``DaskExecutor.task_size``)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from anvm_stats import dims
from anvm_stats.analog.program import prepare
from anvm_stats.devices.presets import paper1
from anvm_stats.montecarlo import sweep
from anvm_stats.parallel.executor import DaskExecutor, local_cluster

from .common import best_time, digits_mlp

DEFAULT_GRID = {dims.NOISE_LEVEL: [0.02, 0.05, 0.1, 0.2]}


def _job(seed: int):
    net, x, y = digits_mlp("cpu", seed)
    return net, paper1(sigma=0.05), (x, y)


def bench_distributed(n_instances: int = 512, grid: Mapping[str, Sequence] | None = None, n_workers: int = 2,
                      task_size: int = 64, n_tiny: int = 96, seed: int = 0, repeats: int = 2) -> dict:
    """Throughput of a ``n_workers`` loopback LocalCluster against the in-process engine on the same sweep, and
    the per-task overhead of the distributed path.

    The job: an MLP 64-256-256-10 on the 360 test digits, ``paper1`` chips, ``grid`` (default 4 noise levels) x
    ``n_instances`` chips. The in-process engine uses all of torch's threads; each worker one thread.

    Per-task overhead: ``n_tiny`` tasks of one chip at one point on 8 samples, timed on the cluster
    (``T``) and evaluated one by one in process exactly as a worker does (``C``, one torch thread):
    ``(T * n_workers - C) / n_tiny`` is the worker time each task costs beyond its compute (scheduling,
    serialisation, result transfer, merging). ``store_write_ms`` is the extra client time per task of streaming
    into a zarr store.

    Returns
    -------
    dict
        JSON-able: timings (s), throughputs (instance-points/s), ``speedup`` (cluster / in-process throughput),
        ``task_overhead_ms``, ``store_write_ms``.
    """
    from distributed import Client

    grid = dict(grid or DEFAULT_GRID)
    n_pts = int(np.prod([len(v) for v in grid.values()]))
    net, spec, data = _job(seed)
    threads = torch.get_num_threads()
    kw = dict(grid=grid, n_instances=n_instances, seed=seed, progress=False)
    program = prepare(net, spec, calibration_data=data)
    local_s = best_time(lambda: sweep(net, spec, data, program=program, **kw), repeats=repeats)
    x, y = data[0][:8], data[1][:8]
    tiny_kw = dict(grid={k: list(v)[:1] for k, v in grid.items()}, seed=seed, progress=False)
    t0 = time.perf_counter()
    with local_cluster(n_workers, gpus=0) as cluster, Client(cluster) as client:
        client.wait_for_workers(n_workers)
        startup_s = time.perf_counter() - t0
        on = DaskExecutor(client, task_size=task_size)
        first_s = best_time(lambda: sweep(net, spec, data, executor=on, **kw), repeats=1)
        dist_s = best_time(lambda: sweep(net, spec, data, executor=on, **kw), repeats=repeats)
        tiny = dict(n_instances=n_tiny, executor=DaskExecutor(client, task_size=1), **tiny_kw)
        sweep(net, spec, (x, y), **{**tiny, "n_instances": 2 * n_workers})  # warm the caches
        tiny_s = best_time(lambda: sweep(net, spec, (x, y), **tiny), repeats=repeats)
        with tempfile.TemporaryDirectory() as tmp:
            runs = iter(range(repeats))
            store_s = best_time(lambda: sweep(net, spec, (x, y), **{
                **tiny, "executor": DaskExecutor(client, task_size=1, store=Path(tmp) / f"{next(runs)}.zarr")}),
                repeats=repeats)
    torch.set_num_threads(1)
    try:
        local1_s = best_time(lambda: sweep(net, spec, data, program=program, **kw), repeats=1)
        tprog = prepare(net, spec, calibration_data=(x, y))
        compute_s = best_time(lambda: [sweep(net, spec, (x, y), program=tprog, instances=[i], **tiny_kw)
                                       for i in range(n_tiny)], repeats=repeats)
    finally:
        torch.set_num_threads(threads)
    work = n_instances * n_pts
    return {
        "job": f"{n_pts} grid points x {n_instances} instances, MLP 64-256-256-10, 360 digits",
        "n_workers": n_workers, "task_size": task_size, "in_process_threads": threads,
        "in_process_s": local_s, "in_process_1_thread_s": local1_s, "distributed_s": dist_s,
        "distributed_first_call_s": first_s, "cluster_startup_s": startup_s,
        "in_process_throughput": work / local_s, "distributed_throughput": work / dist_s,
        "speedup": local_s / dist_s, "speedup_vs_1_thread": local1_s / dist_s,
        "n_tiny_tasks": n_tiny, "tiny_tasks_s": tiny_s, "tiny_compute_s": compute_s,
        "task_overhead_ms": 1e3 * max(0.0, tiny_s * n_workers - compute_s) / n_tiny,
        "client_ms_per_task": 1e3 * tiny_s / n_tiny,
        "store_write_ms": 1e3 * max(0.0, store_s - tiny_s) / n_tiny,
    }
