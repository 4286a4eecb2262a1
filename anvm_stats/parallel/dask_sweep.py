"""Monte Carlo sweeps on Dask distributed: the same result as :func:`anvm_stats.montecarlo.sweep`, bit for bit.

The grid x instance-chunk tasks (:mod:`.tasks`) are submitted to a ``dask.distributed`` cluster: a LocalCluster
on loopback by default (one worker per GPU when CUDA is present), or an existing scheduler. The model, spec and
data go to every worker once (``client.scatter(..., broadcast=True)``); each worker prepares (and calibrates) the
analog program once and caches it by content hash. Results stream into memory or an incremental zarr store
(:mod:`.store`) as tasks finish; a task whose worker dies is rerun by Dask, and region writes are idempotent, so
every instance is stored exactly once.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from .. import dims
from ..analog.program import AnalogProgram, LayerFilter
from ..data_source import describe
from ..errors import ConfigError, check, check_number
from ..hardware.spec import HardwareSpec
from ..montecarlo import RunOptions, _grid_points
from ..rng import SeedLike, root_sequence
from ..sampler import instance_indices
from .store import fingerprint, make_sink
from .tasks import Task, hash_data, hash_json, hash_model, pack, plan_tasks, portable_data, run_task

LOOPBACK = "127.0.0.1"
#: the scheduler's HTTP routes (health, metrics; no dashboard) on a free loopback port, never on 0.0.0.0:8787
_HTTP = {"dashboard": False, "dashboard_address": f"{LOOPBACK}:0"}
log = logging.getLogger(__name__)


def local_cluster(n_workers: int | None = 2, *, threads_per_worker: int = 1, gpus: int | None = None,
                  silence_logs: int = logging.ERROR):
    """A process-based cluster bound to loopback only (127.0.0.1, no dashboard).

    Parameters
    ----------
    n_workers : int, optional
        CPU workers (ignored when GPUs are used).
    threads_per_worker : int
        Task threads per worker.
    gpus : int, optional
        Number of GPU workers; default ``torch.cuda.device_count()``. With GPUs, worker ``i`` sees only GPU ``i``
        (``CUDA_VISIBLE_DEVICES``); with none, ``n_workers`` CPU workers.
    """
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    n_gpu = torch.cuda.device_count() if gpus is None else int(gpus)
    if n_gpu <= 0:
        check_number("n_workers", n_workers, low=1, integer=True)
        return LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                            host=LOOPBACK, dashboard_address=None, silence_logs=silence_logs,
                            scheduler_kwargs=_HTTP)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(n_gpu)]
    workers = {f"gpu-{i}": {"cls": Nanny, "options": {
        "nthreads": threads_per_worker, "host": LOOPBACK, "silence_logs": silence_logs,
        "env": {"CUDA_VISIBLE_DEVICES": ids[i]}}} for i in range(min(n_gpu, len(ids)))}
    scheduler = {"cls": Scheduler, "options": {"host": LOOPBACK, **_HTTP}}
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=silence_logs, name="anvm-gpu")


@contextlib.contextmanager
def connect(client=None, scheduler: str | None = None, n_workers: int | None = 2,
            threads_per_worker: int = 1) -> Iterator:
    """Yield a ``distributed.Client``: ``client`` as is, a new one on ``scheduler`` ("tcp://host:port"), or a
    new loopback :func:`local_cluster`. Only what was created here is closed on exit."""
    from distributed import Client

    if client is not None:
        yield client
        return
    if scheduler is not None:
        check(isinstance(scheduler, str) and "://" in scheduler, "scheduler", scheduler,
              "a scheduler address such as 'tcp://10.0.0.5:8786'")
        with Client(scheduler) as c:
            yield c
        return
    with local_cluster(n_workers, threads_per_worker=threads_per_worker) as cluster, Client(cluster) as c:
        c.wait_for_workers(len(cluster.worker_spec))
        yield c


def _options_hash(*, calibration_hash: str, layers, digital, device, batch_size, program: AnalogProgram | None,
                  sampler: str = "auto"):
    if callable(layers):
        layers = f"callable {getattr(layers, '__module__', '')}.{getattr(layers, '__qualname__', repr(layers))}"
    prog = None
    if program is not None:
        prog = [hash_model(program.module), hash_data((program.g0[None], torch.zeros(1)))]
    return hash_json({"calibration": calibration_hash, "layers": None if layers is None else
                      (layers if isinstance(layers, str) else list(layers)),
                      "digital": list(digital), "device": None if device is None else str(device),
                      "batch_size": batch_size, "program": prog,
                      # only when set, so stores written before the option existed still resume
                      **({"sampler": sampler} if sampler != "auto" else {})})


def sweep_distributed(model: nn.Module, spec: HardwareSpec, data, *, grid: Mapping[str, Sequence] | None = None,
                      n_instances: int | None = 256, seed: SeedLike = None, instances: Sequence[int] | None = None,
                      chunk_size: int = 64, client=None, scheduler: str | None = None, n_workers: int | None = 2,
                      threads_per_worker: int = 1, store=None, progress: bool = True, split_grid: bool = False,
                      retries: int = 3, on_task: Callable[[Task, int, int], None] | None = None,
                      calibration=None, layers: LayerFilter = None, digital: Sequence[str] = (),
                      device: torch.device | str | None = None, batch_size: int | None = None,
                      memory_budget: int | None = None, program: AnalogProgram | None = None,
                      sampler: str = "auto") -> xr.Dataset:
    """:func:`anvm_stats.montecarlo.sweep` on a Dask cluster; the result is identical to the in-process run.

    Parameters
    ----------
    model, spec, data, grid, n_instances, seed, instances, calibration, layers, digital, device, batch_size, \
memory_budget, program, sampler
        As for :func:`anvm_stats.montecarlo.sweep`. ``device=None`` means each worker's GPU when it has one.
    chunk_size : int
        Instances per task (also the zarr chunk). Per-task overhead is a few ms (see :mod:`.bench`): pick chunks
        that take well over 100 ms.
    client : distributed.Client, optional
        Use this client (left open).
    scheduler : str, optional
        Address of a running scheduler ("tcp://host:port"); default: a loopback LocalCluster of ``n_workers``
        process workers (one per GPU when CUDA is present), closed at the end.
    n_workers, threads_per_worker : int
        Size of the default LocalCluster; torch runs one intra-op thread per task thread.
    store : str or PathLike, optional
        A ``.zarr`` directory the results stream into, task by task; rerunning the same call resumes it and
        computes only the missing tasks. A store of another study is refused (ConfigError naming what differs).
    progress : bool
        Progress bar over instance-points.
    split_grid : bool
        One task per (grid point, instance chunk) instead of per instance chunk at every point (the default
        shares each chip's base draws across the grid, as the in-process sweep does).
    retries : int
        Dask retries of a task that raised (a task whose worker died is rescheduled by Dask itself).
    on_task : callable(task, n_done, n_total), optional
        Called after each task is stored; an exception raised there stops the run (stored tasks are kept).

    Returns
    -------
    xr.Dataset
        Dims ``(*grid, instance)``, the variables and attrs of :func:`anvm_stats.montecarlo.sweep`.
    """
    check_number("chunk_size", chunk_size, low=1, integer=True)
    check_number("retries", retries, low=0, integer=True)
    check_number("threads_per_worker", threads_per_worker, low=1, integer=True)
    RunOptions(batch_size=batch_size, memory_budget=memory_budget, sampler=sampler)  # validates
    if not isinstance(spec, HardwareSpec):
        raise ConfigError("spec", type(spec).__name__, "a HardwareSpec")
    keys, values, _ = _grid_points(grid)
    idx = instance_indices(n_instances, instances)
    root = root_sequence(seed)
    tasks = plan_tasks(values, len(idx), int(chunk_size), split_grid)
    coords = {k: v for k, v in zip(keys, values)}
    coords[dims.INSTANCE] = idx
    pdata = portable_data(data)
    pcal = portable_data(calibration) if calibration is not None else None
    data_hash = hash_data(pdata)
    opt_hash = _options_hash(calibration_hash=hash_data(pcal), layers=layers, digital=digital, device=device,
                             batch_size=batch_size, program=program, sampler=sampler)
    model_hash = hash_model(model)
    key = hash_json([model_hash, spec.to_json(), data_hash, opt_hash])
    fp = fingerprint(spec_json=spec.to_json(), keys=keys, values=values, instances=idx, seed_root=root,
                     chunk_size=int(chunk_size), split_grid=bool(split_grid), model_hash=model_hash,
                     data_hash=data_hash, options_hash=opt_hash)
    sink = make_sink(store, tasks, keys, coords, {"dataset": describe(data)}, fingerprint=fp,
                     chunk_size=int(chunk_size), split_grid=bool(split_grid))
    pending = sink.pending()
    if pending:
        prep = {"layers": layers, "digital": tuple(digital), "device": None if device is None else str(device)}
        options = {"batch_size": batch_size, "memory_budget": memory_budget, "sampler": sampler}
        with connect(client, scheduler, n_workers, threads_per_worker) as c:
            _run(c, pending, sink, model=model, spec=spec, data=pdata, calibration=pcal, program=program,
                 key=key, prep=prep, keys=keys, values=values, idx=idx, root=root, options=options,
                 torch_threads=1, retries=int(retries), progress=progress, on_task=on_task,
                 n_total=len(tasks))
    return sink.result()


def _run(client, pending: list[Task], sink, *, model, spec, data, calibration, program, key, prep, keys, values,
         idx, root, options, torch_threads, retries, progress, on_task, n_total) -> None:
    """Scatter the inputs once per worker, submit the pending tasks, store results as they complete.

    Dask reruns a task whose worker died (and ``retries`` times one that raised). If every copy of the scattered
    inputs died with their workers, the not-yet-stored tasks are cancelled by Dask: the inputs are scattered
    again and those tasks resubmitted (at most ``retries`` rounds)."""
    from concurrent.futures import CancelledError

    from distributed import as_completed

    payload = pack(model=model, spec=spec, data=data, calibration=calibration, program=program, prep=prep)
    n_pts = int(np.prod([len(v) for v in values])) if values else 1
    size = {t.index: (t.stop - t.start) * (1 if t.point is not None else n_pts) for t in pending}
    bar = tqdm(total=sum(size.values()), unit="chip-point", disable=not progress, desc="Monte Carlo (dask)",
               leave=False)
    try:
        for attempt in range(retries + 1):
            remote = client.scatter(payload, broadcast=True, hash=False)
            futures = {client.submit(run_task, remote, cache_key=key, grid=t.grid(keys, values),
                                     instances=idx[t.start:t.stop], seed=root, options=options,
                                     torch_threads=torch_threads, retries=retries, pure=False): t
                       for t in pending}
            lost = None
            try:
                for fut in as_completed(list(futures)):
                    task = futures.pop(fut)
                    try:
                        res = fut.result()
                    except CancelledError as err:   # inputs lost with their last worker
                        lost = err
                        break
                    sink.write(task, res)
                    fut.release()
                    bar.update(size[task.index])
                    if on_task is not None:
                        on_task(task, len(sink.done), n_total)
            finally:
                client.cancel(list(futures) + [remote])
            if lost is None:
                return
            pending = sink.pending()
            log.warning("scattered inputs lost (%s): resubmitting %d tasks", lost, len(pending))
        raise RuntimeError(f"tasks still cancelled after {retries} resubmissions") from lost
    finally:
        bar.close()


def dask_sweep(model: nn.Module, spec: HardwareSpec, data, *, grid: Mapping[str, Sequence] | None = None,
               n_instances: int | None = 256, seed: SeedLike = None, instances: Sequence[int] | None = None,
               calibration=None, layers: LayerFilter = None, digital: Sequence[str] = (),
               device: torch.device | str | None = None, options: RunOptions | None = None,
               program: AnalogProgram | None = None, client=None, scheduler: str | None = None,
               n_workers: int | None = 2, store=None, **kw) -> xr.Dataset:
    """The ``executor="dask"`` back end of :func:`anvm_stats.sweep`: its signature, plus the Dask options of
    :func:`sweep_distributed` (``client``, ``scheduler``, ``n_workers``, ``store``, ``split_grid``, ``retries``,
    ``on_task``, ``threads_per_worker``). ``chunk_size`` (default 64) is the instances per task.

    Returns
    -------
    xr.Dataset
        Identical to ``anvm_stats.sweep(...)`` with the same arguments (dims ``(*grid, instance)``).
    """
    run_kw = {k: kw.pop(k) for k in ("chunk_size", "batch_size", "memory_budget", "progress", "sampler") if k in kw}
    opts = options or RunOptions(**run_kw)
    return sweep_distributed(model, spec, data, grid=grid, n_instances=n_instances, seed=seed, instances=instances,
                             calibration=calibration, layers=layers, digital=digital, device=device,
                             program=program, client=client, scheduler=scheduler, n_workers=n_workers, store=store,
                             chunk_size=opts.chunk_size or 64, batch_size=opts.batch_size,
                             memory_budget=opts.memory_budget, progress=opts.progress, sampler=opts.sampler, **kw)
