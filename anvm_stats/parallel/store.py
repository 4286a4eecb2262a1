"""Where task results go: in memory, or streamed into an incremental zarr store that a killed run resumes.

The zarr store holds the full-shape result, chunked so that each task owns whole chunks, plus a completion mask
``_task_done`` (one int8 chunk per task). A task's region is written first, then its mask entry, so a run killed at
any moment loses at most the tasks in flight; rewriting a region is idempotent. The store records a fingerprint of
the study (spec, grid, instances, seed, chunking, model, data, options, resolved sampler, device, batch size); a
store of another study is refused with a :class:`~anvm_stats.errors.ConfigError` that names what differs.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import dask.array as da
import numpy as np
import xarray as xr

from .. import dims
from ..errors import ConfigError
from ..io import replace_atomically, temporary_sibling
from .tasks import Task, hash_json

FINGERPRINT_ATTR = "_anvm_fingerprint"
DONE = "_task_done"
TASK_DIM = "_task"
STORE_VERSION = 2


def fingerprint(*, spec_json: str, keys: Sequence[str], values: Sequence[np.ndarray], instances: np.ndarray,
                seed_root: np.random.SeedSequence, task_size: int, split_grid: bool, model_hash: str,
                data_hash: str, options_hash: str, sampler: str, device: str,
                samples_per_batch: int | None, precision: str = "float32") -> dict[str, str]:
    """What identifies a study's results, part by part (short readable values or SHA-256 hashes).

    ``sampler`` is the resolved sampler (``"counter"`` or ``"generator"``, never ``"auto"``) and ``device`` the
    workers' device type(s): chips drawn another way, or scored on another device, never join a store.
    ``samples_per_batch`` changes scores at float32 round-off (the forward's kernels depend on its shape);
    ``precision`` other than float32 is recorded (float32 stores keep the fingerprint they always had)."""
    n = len(instances)
    contiguous = bool(np.array_equal(instances, np.arange(n)))
    fp = {
        "store_version": str(STORE_VERSION),
        "spec": hash_json(json.loads(spec_json)),
        "grid": json.dumps({k: v.tolist() for k, v in zip(keys, values)}),
        "instances": f"range({n})" if contiguous else f"{n} instances, sha256 {hash_json(instances.tolist())}",
        "seed": f"entropy={seed_root.entropy} spawn_key={tuple(seed_root.spawn_key)}",
        "chunking": f"chunk_size={task_size} split_grid={split_grid}",   # old text: earlier stores still resume
        "model": model_hash,
        "data": data_hash,
        "options": options_hash,
        "sampler": sampler,
        "device": device,
        "samples_per_batch": "default" if samples_per_batch is None else str(int(samples_per_batch)),
    }
    if precision != "float32":
        fp["precision"] = precision
    return fp


#: why a fingerprint entry that is an option of the run (not of the study) matters
_WHY = {
    "sampler": "RunOptions.sampler: the counter and generator samplers draw different chips",
    "device": "the workers' device (CPU and GPU scores agree only to round-off; RunOptions.sampler='auto' "
              "resolves to another sampler there)",
    "samples_per_batch": "RunOptions.samples_per_batch: the batch shape changes scores at float32 round-off",
    "precision": "RunOptions.precision: reduced-precision products change scores",
}


def stored_fingerprint(path) -> dict[str, str] | None:
    """The fingerprint recorded in the store at ``path``, or None (no store, or not one of ours: opening it as a
    :class:`ZarrSink` then says why)."""
    if path is None or not Path(path).is_dir():
        return None
    try:
        with xr.open_zarr(path, chunks=None, consolidated=False) as z:
            stored = z.attrs.get(FINGERPRINT_ATTR)
        return None if stored is None else json.loads(stored)
    except (OSError, KeyError, ValueError):
        return None


def _differences(stored: Mapping[str, str], wanted: Mapping[str, str]) -> list[str]:
    out = []
    for k in sorted(set(stored) | set(wanted)):
        a, b = stored.get(k), wanted.get(k)
        if a != b:
            short = (lambda s: s if s is None or len(s) <= 48 else s[:12] + "...")
            why = f"; {_WHY[k]}" if k in _WHY else ""
            out.append(f"{k} (store {short(a)!s}, this run {short(b)!s}{why})")
    return out


class MemorySink:
    """Collects task results into one in-memory Dataset.

    Parameters
    ----------
    tasks : list of Task
    keys : list of str
        Grid dims.
    coords : dict of dim -> 1-d array
        Full coordinates (grid values and instance indices).
    attrs : dict
        Attrs that override the workers' (e.g. the dataset label seen by the client).
    """

    def __init__(self, tasks: Sequence[Task], keys: Sequence[str], coords: Mapping[str, np.ndarray],
                 attrs: Mapping[str, Any] | None = None):
        self.tasks, self.keys, self.coords = list(tasks), list(keys), dict(coords)
        self.overrides = dict(attrs or {})
        self.done: set[int] = set()
        self.template: xr.Dataset | None = None
        self._arrays: dict[str, np.ndarray] = {}

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(self.coords[k]) for k in [*self.keys, dims.INSTANCE])

    def pending(self) -> list[Task]:
        """Tasks whose results are not stored yet."""
        return [t for t in self.tasks if t.index not in self.done]

    def _check(self, task: Task, res: xr.Dataset) -> dict[str, slice]:
        region = task.region(self.keys)
        for d, sl in region.items():
            want = np.asarray(self.coords[d])[sl]
            got = res[d].values if d in res.coords else None
            if got is None or not np.array_equal(got, want):
                raise RuntimeError(f"task {task.index} returned {d}={got!r}, expected {want!r}")
        return region

    def _set_template(self, res: xr.Dataset) -> None:
        attrs = {**res.attrs, **self.overrides}
        self.template = xr.Dataset({k: (v.dims, np.empty((0,) * v.ndim, v.dtype), v.attrs)
                                    for k, v in res.data_vars.items()}, attrs=attrs)
        order = [*self.keys, dims.INSTANCE]
        for k, v in res.data_vars.items():
            if list(v.dims) != order:
                raise RuntimeError(f"task result {k} has dims {v.dims}, expected {order}")

    def write(self, task: Task, res: xr.Dataset) -> None:
        """Store the result of ``task`` (dims ``(*keys, instance)``)."""
        region = self._check(task, res)
        if self.template is None:
            self._set_template(res)
        idx = tuple(region[d] for d in [*self.keys, dims.INSTANCE])
        for k, v in res.data_vars.items():
            if k not in self._arrays:
                self._arrays[k] = np.zeros(self.shape, v.dtype)
            self._arrays[k][idx] = v.values
        self.done.add(task.index)

    def result(self) -> xr.Dataset:
        """The merged Dataset (every task must be done)."""
        if self.pending() or self.template is None:
            raise RuntimeError(f"{len(self.pending())} of {len(self.tasks)} tasks are not done")
        t = self.template
        return xr.Dataset({k: (v.dims, self._arrays[k], dict(v.attrs)) for k, v in t.data_vars.items()},
                          coords=self.coords, attrs=dict(t.attrs))


class ZarrSink(MemorySink):
    """Streams task results into a zarr store at ``path`` and resumes from it.

    Parameters
    ----------
    path : str or PathLike
        A ``.zarr`` directory; created on the first result (atomically), reopened when it exists.
    fingerprint : dict
        From :func:`fingerprint`; must equal the one recorded in an existing store.
    task_size : int
        Instances per task (the zarr chunk along ``instance``).
    split_grid : bool
        Whether tasks hold one grid point (zarr chunk 1 along each grid dim) or all of them.
    """

    def __init__(self, path, tasks, keys, coords, attrs=None, *, fingerprint: Mapping[str, str],
                 task_size: int, split_grid: bool):
        super().__init__(tasks, keys, coords, attrs)
        self.path = Path(path)
        if self.path.suffix != ".zarr":
            raise ConfigError("store", str(path), "a path ending in .zarr")
        self.fingerprint = dict(fingerprint)
        self.chunks = tuple([1 if split_grid else len(self.coords[k]) for k in self.keys] + [task_size])
        if self.path.exists():
            self._reopen()

    def _open(self) -> xr.Dataset:
        return xr.open_zarr(self.path, chunks=None, consolidated=False)

    def _reopen(self) -> None:
        try:
            with self._open() as z:
                stored = z.attrs.get(FINGERPRINT_ATTR)
                done = z[DONE].values if DONE in z else None
                self.template = xr.Dataset({k: (v.dims, np.empty((0,) * v.ndim, v.dtype), dict(v.attrs))
                                            for k, v in z.data_vars.items() if k != DONE},
                                           attrs={k: v for k, v in z.attrs.items() if k != FINGERPRINT_ATTR})
        except (OSError, KeyError, ValueError) as err:
            raise ConfigError("store", str(self.path), f"an anvm_stats sweep store (cannot open it: {err})") from err
        if stored is None or done is None:
            raise ConfigError("store", str(self.path), "an anvm_stats sweep store (it has no fingerprint)")
        diff = _differences(json.loads(stored), self.fingerprint)
        if diff:
            raise ConfigError("store", str(self.path),
                              "a store written by this same study; it was written by another one, it differs in: "
                              + "; ".join(diff) + " (use another store path or delete this one)")
        self.done = {int(i) for i in np.flatnonzero(done)}

    def _init_store(self, res: xr.Dataset) -> None:
        self._set_template(res)
        shape = self.shape
        dvars = {k: (v.dims, da.zeros(shape, dtype=v.dtype, chunks=self.chunks), dict(v.attrs))
                 for k, v in self.template.data_vars.items()}
        dvars[DONE] = ((TASK_DIM,), np.zeros(len(self.tasks), np.int8))
        attrs = {**self.template.attrs, FINGERPRINT_ATTR: json.dumps(self.fingerprint, sort_keys=True)}
        full = xr.Dataset(dvars, coords=self.coords, attrs=attrs)
        enc = {k: {"chunks": self.chunks} for k in self.template.data_vars}
        enc[DONE] = {"chunks": (1,)}
        tmp = temporary_sibling(self.path)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
                full.to_zarr(tmp, mode="w-", compute=False, encoding=enc, consolidated=False)
            if self.path.exists():
                raise FileExistsError(f"{self.path} appeared while initialising the store")
            replace_atomically(tmp, self.path)
        finally:
            if tmp.exists():
                import shutil
                shutil.rmtree(tmp, ignore_errors=True)

    def write(self, task: Task, res: xr.Dataset) -> None:
        """Write the task's region, then mark it done in the completion mask."""
        region = self._check(task, res)
        if self.template is None:
            self._init_store(res)
        part = res.drop_vars(list(res.coords)).drop_attrs()
        part.to_zarr(self.path, region=region, mode="r+", consolidated=False)
        flag = xr.Dataset({DONE: ((TASK_DIM,), np.ones(1, np.int8))})
        flag.to_zarr(self.path, region={TASK_DIM: slice(task.index, task.index + 1)}, mode="r+",
                     consolidated=False)
        self.done.add(task.index)

    def result(self) -> xr.Dataset:
        """The complete Dataset read back from the store (in memory, store closed)."""
        if self.pending() or self.template is None:
            raise RuntimeError(f"{len(self.pending())} of {len(self.tasks)} tasks are not done")
        with self._open() as z:
            ds = z.drop_vars(DONE).load()
        ds.attrs.pop(FINGERPRINT_ATTR, None)
        for v in ds.variables.values():
            v.encoding = {}
        return ds


def make_sink(store: str | os.PathLike | None, tasks, keys, coords, attrs, **zarr_kw) -> MemorySink:
    """A :class:`ZarrSink` at ``store``, or a :class:`MemorySink` when ``store`` is ``None``."""
    if store is None:
        return MemorySink(tasks, keys, coords, attrs)
    return ZarrSink(store, tasks, keys, coords, attrs, **zarr_kw)
