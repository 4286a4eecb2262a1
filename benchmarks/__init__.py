"""Benchmarks of anvm_stats, printed as JSON by ``anvm-stats bench`` (or ``python -m benchmarks``).

A top-level package of the source checkout, beside ``anvm_stats`` and not shipped in its wheel: the library
carries no timing code. ``anvm-stats bench`` finds it when ``anvm_stats`` is imported from a checkout (an
editable install or ``PYTHONPATH``). Every benchmark reports ratios measured inside one run (never a wall-clock
assertion); machine measurements go to ``reports/bench/``.

Modules: :mod:`.engine` (the K-instance engine and the sweep against simple loops and this machine's limit),
:mod:`.hessian` (Hutchinson probes against a gradient), :mod:`.training` (HA-SGD modes against plain SGD),
:mod:`.distributed` (a Dask LocalCluster against the in-process engine), :mod:`.tiles` (tiled chips and per-MVM read
noise against the untiled, per-batch engine), :mod:`.transformer` (a transformer encoder classifier: the engine
against the per-chip loop); :mod:`.common` (timing, the digits MLP).
"""

from __future__ import annotations

import importlib
import inspect

import torch

from anvm_stats._omp import omp_settings
from anvm_stats.errors import ConfigError

#: benchmark name -> (module, function); a function taking ``device`` runs on the requested device
BENCHMARKS = {
    "engine": ("benchmarks.engine", "bench_engine"),
    "sweep": ("benchmarks.engine", "bench_sweep"),
    "convnet": ("benchmarks.engine", "bench_convnet"),
    "sensitivity": ("benchmarks.hessian", "bench_hutchinson"),
    "hasgd": ("benchmarks.training", "bench_hasgd"),
    "distributed": ("benchmarks.distributed", "bench_distributed"),
    "tiles": ("benchmarks.tiles", "bench_tiles"),
    "transformer": ("benchmarks.transformer", "bench_transformer"),
}


def run_benchmarks(device: str = "cpu", which: tuple[str, ...] | None = None) -> dict:
    """Run the named benchmarks (default: all) and return a JSON-able dict. Benchmarks that take a ``device`` run
    on ``device``; the others run on the CPU and say so (``"device": "cpu"``). A benchmark whose module or a
    package it needs is missing is reported as skipped, never silently dropped.

    Raises
    ------
    ConfigError
        For a name not in :data:`BENCHMARKS`.
    """
    out: dict = {"torch_version": torch.__version__, "threads": torch.get_num_threads(), "device": device,
                 "openmp": omp_settings()}
    for name in which or tuple(BENCHMARKS):
        if name not in BENCHMARKS:
            raise ConfigError("benchmark", name, f"one of {sorted(BENCHMARKS)}")
        mod, fn = BENCHMARKS[name]
        try:
            func = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as err:
            out[name] = {"skipped": f"{mod}.{fn} unavailable: {err}"}
            continue
        on_device = "device" in inspect.signature(func).parameters
        try:
            result = func(device=device) if on_device else func()
        except ImportError as err:
            out[name] = {"skipped": f"{mod}.{fn} needs a missing package: {err}"}
            continue
        if not on_device and isinstance(result, dict):
            result.setdefault("device", "cpu")
        out[name] = result
    return out
