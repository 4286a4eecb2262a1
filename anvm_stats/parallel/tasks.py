"""Tasks of a distributed sweep: the plan (grid points x instance chunks), content hashes, and the function a
worker runs.

A task is a rectangle of the result: one instance chunk at one grid point (``split_grid=True``) or at every grid
point at once (the default, which keeps the sweep's common-random-number saving: each chip's base draws are paid
once for all points). A worker builds the task's chips from ``(seed, instance indices)`` alone by calling the core
:func:`anvm_stats.montecarlo.sweep` in process, so the merged result equals the single-process run bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import nn

from .. import dims
from ..analog.program import prepare
from ..data_source import as_tensors, iter_batches
from ..montecarlo import RunOptions, sweep

#: programs kept per worker thread (keyed by content hash); older ones are dropped
CACHE_SIZE = 2
#: programs prepared by this process so far (diagnostics: prepare runs once per worker thread and run)
PREPARED = 0


@dataclass(frozen=True, kw_only=True)
class Task:
    """One rectangle of the result.

    Parameters
    ----------
    index : int
        Position in the plan (and in the store's completion mask).
    point : tuple of int or None
        Index along each grid dim (``None``: every grid point).
    start, stop : int
        Positions ``[start, stop)`` along the ``instance`` dim.
    """

    index: int
    point: tuple[int, ...] | None
    start: int
    stop: int

    def region(self, keys: Sequence[str]) -> dict[str, slice]:
        """The task's slice of every result dim (grid dims, then ``instance``)."""
        reg = {k: slice(None) if self.point is None else slice(i, i + 1)
               for k, i in zip(keys, self.point or [0] * len(keys))}
        reg[dims.INSTANCE] = slice(self.start, self.stop)
        return reg

    def grid(self, keys: Sequence[str], values: Sequence[np.ndarray]) -> dict[str, np.ndarray] | None:
        """The grid the worker sweeps: one value per dim (dtype kept) or the whole grid."""
        if not keys:
            return None
        if self.point is None:
            return dict(zip(keys, values))
        return {k: v[i:i + 1] for k, v, i in zip(keys, values, self.point)}


def plan_tasks(values: Sequence[np.ndarray], n_instances: int, task_size: int, split_grid: bool) -> list[Task]:
    """All tasks, instance chunk outermost, then grid points in C order."""
    points: list[tuple[int, ...] | None] = [None]
    if split_grid and values:
        points = [tuple(p) for p in np.ndindex(*[len(v) for v in values])]
    return [Task(index=i, point=p, start=s, stop=min(s + task_size, n_instances))
            for i, (s, p) in enumerate((s, p) for s in range(0, n_instances, task_size) for p in points)]


# --- content hashes ---------------------------------------------------------------------------------------
def _update_tensor(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def hash_model(model: nn.Module) -> str:
    """SHA-256 of the architecture (``repr``, class) and every parameter and buffer."""
    h = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}\n{model!r}".encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        _update_tensor(h, t)
    return h.hexdigest()


def hash_data(data) -> str:
    """SHA-256 of every ``(x, y)`` batch of ``data`` (tensors, a Data, or an iterable of batches)."""
    h = hashlib.sha256()
    if data is None:
        return "none"
    for x, y in iter_batches(data):
        _update_tensor(h, torch.as_tensor(x))
        _update_tensor(h, torch.as_tensor(y))
    return h.hexdigest()


def hash_json(obj: Any) -> str:
    """SHA-256 of the canonical JSON of ``obj`` (numpy values as Python values)."""
    text = json.dumps(obj, sort_keys=True, default=lambda v: v.tolist() if hasattr(v, "tolist") else repr(v))
    return hashlib.sha256(text.encode()).hexdigest()


def portable_data(data):
    """``data`` as something cheap to pickle: tensors and Data as they are, other iterables as a list of
    ``(x, y)`` batches (batch boundaries kept, they decide read-noise draws)."""
    if as_tensors(data) is not None:
        return data
    return [(x, y) for x, y in iter_batches(data)]


# --- worker side ------------------------------------------------------------------------------------------
_local = threading.local()


def _programs() -> "OrderedDict[str, Any]":
    cache = getattr(_local, "programs", None)
    if cache is None:
        cache = _local.programs = OrderedDict()
    return cache


def worker_device(device) -> torch.device | str | None:
    """``device`` on this worker: ``None`` means the worker's GPU when it has one (one GPU per worker)."""
    if device is None and torch.cuda.is_available():
        return "cuda"
    return device


def worker_device_type() -> str:
    """The device type this worker evaluates on by default (``"cuda"`` with a GPU, else ``"cpu"``)."""
    return torch.device(worker_device(None) or "cpu").type


def pack(**inputs) -> bytes:
    """The inputs of a run as one pickle (model, spec, data, calibration, program, prepare options).

    Sent once per worker (``client.scatter(..., broadcast=True)``); plain pickling keeps modules intact (Dask's
    own torch serialiser rebuilds modules without their hook dicts)."""
    import cloudpickle

    return cloudpickle.dumps(inputs)


def cached_inputs(cache_key: str, payload: bytes) -> dict[str, Any]:
    """The unpacked inputs of ``cache_key`` on this worker thread, with their AnalogProgram under ``"program"``,
    prepared (and calibrated) on first use only."""
    import pickle


    cache = _programs()
    if cache_key in cache:
        cache.move_to_end(cache_key)
        return cache[cache_key]
    global PREPARED
    inp = pickle.loads(payload)
    PREPARED += 1
    if inp.get("program") is None:
        prep = inp.get("prep", {})
        cal = inp.get("calibration")
        inp["program"] = prepare(inp["model"], inp["spec"], calibration_data=cal if cal is not None else inp["data"],
                                 layers=prep.get("layers"), digital=prep.get("digital", ()),
                                 device=worker_device(prep.get("device")))
    cache[cache_key] = inp
    while len(cache) > CACHE_SIZE:
        cache.popitem(last=False)
    return inp


def prepare_count() -> int:
    """Programs this process has prepared (or unpacked) so far (for tests and diagnostics)."""
    return PREPARED


def run_task(payload: bytes, *, cache_key: str, grid, instances: np.ndarray, seed: np.random.SeedSequence,
             options: Mapping[str, Any], torch_threads: int = 1) -> xr.Dataset:
    """Evaluate one task on this worker (the function Dask runs).

    Parameters
    ----------
    payload : bytes
        :func:`pack` of ``model``, ``spec``, ``data`` (as for :func:`anvm_stats.montecarlo.sweep`), optional
        ``calibration``, ``program`` and ``metrics``, and ``prep`` (``layers``, ``digital``, ``device`` for
        :func:`anvm_stats.analog.prepare`); scattered once per worker.
    cache_key : str
        Content hash of the payload: the per-worker program cache key.
    grid : dict of knob -> 1-d array, or None
        The task's grid (one point or all of them).
    instances : ndarray of int, shape [K]
        Instance indices of the task.
    seed : SeedSequence
        Root seed of the run.
    options : dict
        ``samples_per_batch``, ``memory_budget`` and ``sampler`` (resolved) for
        :class:`anvm_stats.montecarlo.RunOptions`.
    torch_threads : int
        Intra-op threads of torch on the worker.

    Returns
    -------
    xr.Dataset
        The core sweep's result for the task: dims ``(*grid, instance)`` with ``K`` instances.
    """
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    inp = cached_inputs(cache_key, payload)
    return sweep(inp["model"], inp["spec"], inp["data"], grid=grid, instances=instances, seed=seed,
                 program=inp["program"], options=RunOptions(**options), progress=False, metrics=inp.get("metrics"))
