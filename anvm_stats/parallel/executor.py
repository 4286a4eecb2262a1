"""The Dask executor of :func:`anvm_stats.sweep`: the same result as the in-process run, bit for bit.

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
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from ..analog.program import AnalogProgram, LayerFilter
from ..data_source import describe
from ..errors import ConfigError, check, check_number
from ..hardware.spec import HardwareSpec
from ..montecarlo import GridPlan, RunOptions, resolve_sampler
from ..rng import SeedLike, root_sequence
from .store import fingerprint, make_sink, stored_fingerprint
from .tasks import (Task, hash_data, hash_json, hash_model, pack, plan_tasks, portable_data, run_task,
                    worker_device_type)

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


def _options_hash(*, calibration_hash: str, layers, digital, program: AnalogProgram | None) -> str:
    """What else decides the chips' scores: calibration data, analog layers, prepared program (the sampler,
    device and batch size are fingerprint entries of their own, named in a refusal)."""
    if callable(layers):
        layers = f"callable {getattr(layers, '__module__', '')}.{getattr(layers, '__qualname__', repr(layers))}"
    prog = None
    if program is not None:
        prog = [hash_model(program.module), hash_data((program.g0[None], torch.zeros(1)))]
    return hash_json({"calibration": calibration_hash, "layers": None if layers is None else
                      (layers if isinstance(layers, str) else list(layers)),
                      "digital": list(digital), "program": prog})


def _devices(client, device) -> str:
    """The device type the workers evaluate on (``device``, or each worker's own: its GPU when it has one)."""
    if device is not None:
        return torch.device(device).type
    if not client.scheduler_info().get("workers"):
        client.wait_for_workers(1)
    kinds = sorted(set(client.run(worker_device_type).values()))
    return "+".join(kinds)


def _resolve_sampler(sampler: str, devices: str) -> str:
    """The sampler every task draws with: ``sampler``, or for ``"auto"`` the one of the workers' device."""
    if sampler != "auto":
        return sampler
    if "+" in devices:
        raise ConfigError("RunOptions.sampler", "auto", f"'counter' or 'generator': the workers mix devices "
                                                        f"({devices}), whose automatic samplers draw different chips")
    return resolve_sampler(sampler, devices)


@dataclass(frozen=True, eq=False)
class DaskExecutor:
    """Run :func:`anvm_stats.sweep` as grid x instance-chunk tasks on Dask distributed; the result is identical to
    the in-process run, bit for bit.

    Parameters
    ----------
    client : distributed.Client, str or None
        A client (left open), the address of a running scheduler (``"tcp://host:port"``; it unpickles what it
        receives, so it must be trusted), or ``None``: a loopback :func:`local_cluster` of ``n_workers`` process
        workers (one per GPU when CUDA is present), closed at the end.
    store : str or PathLike, optional
        A ``.zarr`` directory the results stream into, task by task; rerunning the same sweep resumes it and
        computes only the missing tasks. A store of another study (or drawn with another sampler or on another
        device) is refused with a :class:`~anvm_stats.errors.ConfigError` naming what differs.
    task_size : int
        Instances per task (also the zarr chunk). Per-task overhead is a few ms: pick tasks that take well over
        100 ms.
    n_workers, threads_per_worker : int
        Size of the default LocalCluster; torch runs one intra-op thread per task thread.
    split_grid : bool
        One task per (grid point, instance chunk) instead of per instance chunk at every point (the default
        shares each chip's base draws across the grid, as the in-process sweep does).
    retries : int
        Dask retries of a task that raised (a task whose worker died is rescheduled by Dask itself).
    on_task : callable(task, n_done, n_total), optional
        Called after each task is stored; an exception raised there stops the run (stored tasks are kept).

    Notes
    -----
    ``device=None`` in :func:`~anvm_stats.sweep` means each worker's GPU when it has one. With
    ``RunOptions.sampler="auto"`` the sampler is resolved from the workers' device before any task runs (a cluster
    mixing CPU and GPU workers must name one); the resolved sampler and the device are part of a store's
    fingerprint, so a store is never resumed with chips drawn another way.
    """

    client: Any = None
    store: str | os.PathLike | None = None
    task_size: int = 64
    n_workers: int | None = 2
    threads_per_worker: int = 1
    split_grid: bool = False
    retries: int = 3
    on_task: Callable[[Task, int, int], None] | None = None

    def __post_init__(self):
        check_number("DaskExecutor.task_size", self.task_size, low=1, integer=True)
        check_number("DaskExecutor.retries", self.retries, low=0, integer=True)
        check_number("DaskExecutor.threads_per_worker", self.threads_per_worker, low=1, integer=True)
        check(isinstance(self.split_grid, bool), "DaskExecutor.split_grid", self.split_grid, "true or false")
        if isinstance(self.client, str):
            check("://" in self.client, "DaskExecutor.client", self.client,
                  "a distributed.Client or a scheduler address such as 'tcp://10.0.0.5:8786'")

    def run(self, model: nn.Module, spec: HardwareSpec, data, *, plan: GridPlan, instances: np.ndarray,
            seed: SeedLike, calibration_data=None, layers: LayerFilter = None, digital: Sequence[str] = (),
            device: torch.device | str | None = None, options: RunOptions,
            program: AnalogProgram | None = None, progress: bool = True, metrics=None) -> xr.Dataset:
        """The executor protocol of :class:`anvm_stats.montecarlo.LocalExecutor` (``metrics`` travel in the
        scattered inputs; their names and functions' qualified names are part of the store's fingerprint)."""
        idx = instances
        root = root_sequence(seed)
        tasks = plan_tasks(plan.values, len(idx), int(self.task_size), self.split_grid)
        pdata = portable_data(data)
        pcal = portable_data(calibration_data) if calibration_data is not None else None
        data_hash = hash_data(pdata)
        opt_hash = _options_hash(calibration_hash=hash_data(pcal), layers=layers, digital=digital, program=program)
        if metrics is not None:
            opt_hash = hash_json([opt_hash, [[m.name, m.reduction, getattr(m.fn, "__module__", ""),
                                              getattr(m.fn, "__qualname__", repr(m.fn))] for m in metrics]])
        model_hash = hash_model(model)
        key = hash_json([model_hash, spec.to_json(), data_hash, opt_hash])
        attrs = {"dataset": describe(data), "calibration_data": "evaluation data" if calibration_data is None
                 else describe(calibration_data)}
        if program is not None:
            attrs["calibration_data"] = "as the given program was prepared"

        def sink_for(sampler: str, devices: str):
            fp = fingerprint(spec_json=spec.to_json(), keys=plan.keys, values=plan.values, instances=idx,
                             seed_root=root, task_size=int(self.task_size), split_grid=self.split_grid,
                             model_hash=model_hash, data_hash=data_hash, options_hash=opt_hash, sampler=sampler,
                             device=devices, samples_per_batch=options.samples_per_batch,
                             precision=options.precision)
            return make_sink(self.store, tasks, plan.keys, plan.coords(idx), attrs, fingerprint=fp,
                             task_size=int(self.task_size), split_grid=self.split_grid)

        stored = stored_fingerprint(self.store)
        if stored is not None and "sampler" in stored and "device" in stored:
            # the rest of the study must match now; a complete store needs no cluster (nothing is drawn)
            sink = sink_for(stored["sampler"], stored["device"])
            if not sink.pending():
                return sink.result()
        client, address = (None, self.client) if isinstance(self.client, str) else (self.client, None)
        with connect(client, address, self.n_workers, self.threads_per_worker) as c:
            devices = _devices(c, device)
            sampler = _resolve_sampler(options.sampler, devices)
            sink = sink_for(sampler, devices)
            pending = sink.pending()
            if pending:
                prep = {"layers": layers, "digital": tuple(digital),
                        "device": None if device is None else str(device)}
                run_opts = {"samples_per_batch": options.samples_per_batch,
                            "memory_budget": options.memory_budget, "sampler": sampler,
                            "precision": options.precision}
                _run(c, pending, sink, model=model, spec=spec, data=pdata, calibration=pcal, program=program,
                     metrics=metrics,
                     key=key, prep=prep, keys=list(plan.keys), values=list(plan.values), idx=idx, root=root,
                     options=run_opts, torch_threads=1, retries=int(self.retries), progress=progress,
                     on_task=self.on_task, n_total=len(tasks))
        return sink.result()


def _run(client, pending: list[Task], sink, *, model, spec, data, calibration, program, key, prep, keys, values,
         idx, root, options, torch_threads, retries, progress, on_task, n_total, metrics=None) -> None:
    """Scatter the inputs once per worker, submit the pending tasks, store results as they complete.

    Dask reruns a task whose worker died (and ``retries`` times one that raised). If every copy of the scattered
    inputs died with their workers, the not-yet-stored tasks are cancelled by Dask: the inputs are scattered
    again and those tasks resubmitted (at most ``retries`` rounds)."""
    from concurrent.futures import CancelledError

    from distributed import as_completed

    payload = pack(model=model, spec=spec, data=data, calibration=calibration, program=program, prep=prep,
                   metrics=metrics)
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


