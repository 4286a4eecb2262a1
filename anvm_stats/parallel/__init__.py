"""Distributed Monte Carlo sweeps (Dask), incremental zarr stores with resume, and their benchmark.

``sweep_distributed(model, spec, data, grid=..., n_instances=..., seed=...)`` gives the same Dataset as
:func:`anvm_stats.montecarlo.sweep`, computed by a Dask cluster (a loopback LocalCluster by default) and, with
``store="run.zarr"``, streamed into a zarr store that a rerun of the same call resumes.
"""

from .dask_sweep import connect, dask_sweep, local_cluster, sweep_distributed
from .store import MemorySink, ZarrSink, fingerprint
from .tasks import Task, hash_data, hash_model, plan_tasks

__all__ = ["sweep_distributed", "dask_sweep", "local_cluster", "connect", "MemorySink", "ZarrSink",
           "fingerprint", "Task", "plan_tasks", "hash_model", "hash_data"]
