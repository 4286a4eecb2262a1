"""Distributed Monte Carlo sweeps (Dask) and incremental zarr stores with resume.

``sweep(model, spec, data, grid=..., executor=DaskExecutor(...))`` gives the same Dataset as the in-process
:func:`anvm_stats.montecarlo.sweep`, computed by a Dask cluster (a loopback LocalCluster by default) and, with
``DaskExecutor(store="run.zarr")``, streamed into a zarr store that a rerun of the same call resumes.
"""

from .executor import DaskExecutor, connect, local_cluster
from .store import MemorySink, ZarrSink, fingerprint
from .tasks import Task, hash_data, hash_model, plan_tasks

__all__ = ["DaskExecutor", "local_cluster", "connect", "MemorySink", "ZarrSink", "fingerprint", "Task",
           "plan_tasks", "hash_model", "hash_data"]
