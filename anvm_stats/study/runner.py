"""Run a study: train (or load cached weights), sweep every model x chip x grid point on the same chips, add
sensitivity / recovery when asked, save the results and write the report.

Results layout (an ``xr.Dataset``)
----------------------------------
``accuracy``, ``loss``, ``correct_count`` [, ``top5_accuracy``] with dims ``instance``, the sweep knobs, and
``model`` (several trained models; coordinate ``sigma_train`` beside it) / ``hardware`` (chip variants) when
present; ``float_accuracy`` (digital network, per model); ``history_<curve>`` (dims model?, ``epoch``);
``sensitivity_trace`` / ``_se`` / ``_per_param`` (dim ``layer``); ``recovery_accuracy_before`` / ``_after``
(per-chip calibration); with ``sweep.cost``, ``energy_per_inference``, ``latency_per_inference``, ``chip_area``
(and ``energy`` by ``component``) per point, without the ``instance`` dim. With two or more training seeds
(``[training] seeds``) every variable that depends on the trained network gets a ``train_seed`` dim (coordinate:
the seed): seed ``s`` trains every model from ``s`` and draws its chips from ``s`` (models paired on chips within a
seed, seeds independent). Attrs: provenance, ``study`` (name), ``study_toml`` (the file), ``report_*`` settings,
``train_seeds``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import xarray as xr

from .. import dims
from ..analog.program import resolve_device
from ..calibration import calibrate
from ..checks import NONFINITE_ATTR, flag_nonfinite
from ..hardware.spec import HardwareSpec
from ..hessian import layer_sensitivity
from ..io import load, save
from ..metrics import token_loss
from ..montecarlo import RunOptions, sweep
from ..parallel import DaskExecutor, connect, hash_model
from ..parallel.tasks import hash_json
from ..report import write_report
from ..stats import sequential_estimate
from .config import Study
from .preflight import check_data, check_folders, check_name, check_size
from .train import DEFAULT_CACHE, load_data, load_weights, train_or_load

MODEL_DIM = "model"
HARDWARE_DIM = "hardware"


#: knobs a study sweeps by preparing (and calibrating the converter ranges of) one program per value, the results
#: stacked along them; the other knobs are grid dims of one engine sweep
STACKED_KNOBS = ("adc_levels", "dac_levels", "mean_shift")


def _nest(items: list, shape: list[int]):
    if len(shape) <= 1:
        return items
    step = math.prod(shape[1:])
    return [_nest(items[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def _over_extra(fn: Callable[[HardwareSpec], xr.Dataset], spec: HardwareSpec, extra: dict) -> xr.Dataset:
    """Run ``fn`` at every combination of the study-only knobs and stack the results along them."""
    if not extra:
        return fn(spec)
    keys = list(extra)
    parts = []
    for combo in itertools.product(*extra.values()):
        ds = fn(spec.with_knobs(**dict(zip(keys, combo))))
        parts.append(ds.expand_dims({k: [v] for k, v in zip(keys, combo)}))
    return xr.combine_nested(_nest(parts, [len(v) for v in extra.values()]), concat_dim=keys,
                             combine_attrs="override")


def _stack(parts: list[xr.Dataset], dim: str, labels: list[str], keep: bool) -> xr.Dataset:
    if not keep:
        return parts[0]
    return xr.concat(parts, dim=dim, combine_attrs="override", data_vars="all",
                     coords="minimal", compat="override").assign_coords({dim: labels})


@dataclass
class _Ctx:
    study: Study
    models: dict
    test: object
    device: object
    progress: bool
    client: object = None                           # a distributed.Client: sweeps run on Dask
    calibration: object = None                      # data that calibrates converter ranges (the training split)
    store_dir: Path | None = None                   # resumable zarr stores, one per sweep call
    seed: int = 0                                   # the chips' seed (the training seed's)

    def executor(self, model, spec, instances):
        """The executor of one sweep call (None: in process); with a store folder, a Dask store named by a hash of
        what the call computes (model weights, chip, instances, seed, grid), so re-running the study resumes each
        sweep."""
        if self.client is None:
            return None
        if self.store_dir is None:
            return DaskExecutor(self.client)
        key = hash_json({"model": hash_model(model), "spec": spec.to_json(), "seed": self.seed,
                         "instances": [int(instances[0]), int(instances[-1]), len(instances)],
                         "grid": {k: [float(x) for x in v] for k, v in self.grids()[0].items()},
                         "calibration": getattr(self.calibration, "name", None),
                         **({} if self.study.sweep.metrics is None else {"metrics": list(self.study.sweep.metrics)})})
        return DaskExecutor(self.client, store=self.store_dir / f"sweep-{key[:16]}.zarr")

    @property
    def keep_model(self) -> bool:
        return len(self.models) > 1

    def grids(self) -> tuple[dict, dict]:
        grid = self.study.sweep.grid
        return ({k: list(v) for k, v in grid.items() if k not in STACKED_KNOBS},
                {k: list(v) for k, v in grid.items() if k in STACKED_KNOBS})

    def over_all(self, fn) -> xr.Dataset:
        """``fn(model, spec)`` over models x hardware variants x study-only knobs, stacked."""
        _, extra = self.grids()
        per_model = []
        for model in self.models.values():
            per_hw = [_over_extra(lambda s: fn(model, s), spec, extra) for spec in self.study.hardware.values()]
            per_model.append(_stack(per_hw, HARDWARE_DIM, list(self.study.hardware), self.study.hardware_variants))
        return _stack(per_model, MODEL_DIM, list(self.models), self.keep_model)


def _sweep_instances(ctx: _Ctx, instances: np.ndarray) -> xr.Dataset:

    std, _ = ctx.grids()
    sw = ctx.study.sweep
    options = RunOptions(samples_per_batch=sw.samples_per_batch, instances_per_chunk=sw.instances_per_chunk)
    extra = {} if sw.metrics is None else {"metrics": list(sw.metrics)}
    return ctx.over_all(lambda model, spec: sweep(
        model, spec, ctx.test, grid=std or None, n_instances=None, instances=instances, seed=ctx.seed,
        device=ctx.device, options=options, progress=ctx.progress, calibration_data=ctx.calibration,
        executor=ctx.executor(model, spec, instances), cost=sw.cost, **extra))


def run_sweep(ctx: _Ctx) -> xr.Dataset:
    """All sweeps at a fixed instance count, or sequentially until every mean interval is narrow enough."""
    sw = ctx.study.sweep
    if sw.target_ci_width is None:
        return _sweep_instances(ctx, np.arange(sw.n_instances))

    chunks: list[xr.Dataset] = []

    def draw(start: int, m: int) -> np.ndarray:
        ds = _sweep_instances(ctx, np.arange(start, start + m))
        chunks.append(ds)
        acc = ds[dims.ACCURACY]
        return acc.transpose(dims.INSTANCE, ...).values.reshape(m, -1)

    res = sequential_estimate(draw, statistic="mean", target_width=sw.target_ci_width, ci=ctx.study.outputs.ci,
                              instances_per_round=sw.instances_per_round, max_n=sw.max_instances)
    fixed = [v for v in chunks[0].data_vars if dims.INSTANCE not in chunks[0][v].dims]   # cost: per point only
    ds = xr.concat([c.drop_vars(fixed) for c in chunks], dim=dims.INSTANCE, combine_attrs="override")
    ds = xr.merge([ds, chunks[0][fixed]], combine_attrs="override") if fixed else ds
    ds.attrs.update(sequential_stopped_by=res.stopped_by, sequential_target_width=sw.target_ci_width,
                    sequential_width=float(res.width))
    return ds


@torch.no_grad()
def float_accuracy(model, data, batch: int = 1024) -> float:
    """Accuracy of the digital (float) network (over every token for token labels ``[N, L...]``)."""
    model.eval()
    dev = next(model.parameters()).device
    correct = sum(int((model(x.to(dev)).argmax(-1) == y.to(dev)).sum()) for x, y in data.batches(batch))
    return correct / data.y.numel()


def _recovery(ctx: _Ctx, calib, n_instances: int) -> xr.Dataset:

    rec = ctx.study.recovery
    std, _ = ctx.grids()
    points = [dict(zip(std, c)) for c in itertools.product(*std.values())] if std else [{}]

    def one(model, spec):
        parts = [calibrate(model, spec.with_knobs(**pt), ctx.test, recovery_data=calib, calibration_data=ctx.calibration,
                           n_instances=n_instances,
                           seed=ctx.seed, n_recovery=rec.n_calibration, progress=ctx.progress,
                           device=ctx.device, **rec.options).expand_dims({k: [v] for k, v in pt.items()})
                 for pt in points]
        ds = xr.combine_nested(_nest(parts, [len(v) for v in std.values()]), concat_dim=list(std),
                               combine_attrs="override") if std else parts[0]
        keep = [f"{dims.ACCURACY}_before", f"{dims.ACCURACY}_after"]
        return ds[[v for v in keep if v in ds]].rename({v: f"recovery_{v}" for v in keep if v in ds})

    return ctx.over_all(one)


def _sensitivity(ctx: _Ctx) -> xr.Dataset:

    data = ctx.test if ctx.test.n <= 512 else ctx.test.subset(512, seed=0)
    parts = []
    for model in ctx.models.values():
        extra = {"loss_fn": token_loss} if data.y.dim() > 1 else {}       # scores [N, L, V] of token labels
        s = layer_sensitivity(model, data, seed=ctx.seed, eigen=False, max_probes=64, **extra)
        parts.append(s[["trace", "trace_se", "trace_per_param"]].rename(
            {v: f"sensitivity_{v}" for v in ("trace", "trace_se", "trace_per_param")}))
    return _stack(parts, MODEL_DIM, list(ctx.models), ctx.keep_model)


def _histories(ctx: _Ctx, histories: dict) -> xr.Dataset:
    names = sorted({k for h in histories.values() for k in h})
    n_ep = max((len(v) for h in histories.values() for v in h.values()), default=0)
    if not names or n_ep == 0:
        return xr.Dataset()
    arr = np.full((len(histories), len(names), n_ep), np.nan)
    for i, h in enumerate(histories.values()):
        for j, k in enumerate(names):
            v = h.get(k, [])
            arr[i, j, :len(v)] = v
    ds = xr.Dataset({f"history_{k}": ((MODEL_DIM, dims.EPOCH), arr[:, j]) for j, k in enumerate(names)},
                    coords={MODEL_DIM: list(histories), dims.EPOCH: np.arange(1, n_ep + 1)})
    return ds if ctx.keep_model else ds.isel({MODEL_DIM: 0}, drop=True)


def save_results(ds: xr.Dataset, path: Path) -> Path:
    """Save atomically with :func:`anvm_stats.io.save` (netCDF or zarr)."""
    save(ds, path)
    return path
    return path


def load_results(path: str | Path) -> xr.Dataset:
    """Load a results file written by :func:`save_results` (``FileNotFoundError`` if missing)."""
    return load(Path(path))   # finishes a save of path that was killed mid-replace; FileNotFoundError if none


def _run_seed(study: Study, seed: int, train, test, *, device, progress: bool, cache_dir, log, client, store,
              times: dict) -> xr.Dataset:
    """Train (or load) every model from training seed ``seed`` and sweep it on chips drawn from ``seed``; the
    float accuracy, histories, sensitivity and recovery of these models. Adds the seconds spent training and
    sweeping to ``times``."""
    t0 = time.perf_counter()
    models, histories = {}, {}
    if study.model.weights is not None:
        models["model"] = load_weights(study.model, seed, device)
    for t in study.training:
        models[t.label], histories[t.label], _ = train_or_load(
            study.model, t, study.data, train, seed=seed, cache_dir=cache_dir, device=device,
            progress=progress, log=log)
    t1 = time.perf_counter()
    ctx = _Ctx(study=study, models=models, test=test, device=device, progress=progress, calibration=train,
               client=client, store_dir=None if store is None else Path(store), seed=seed)
    log(f"sweep: {len(models)} model(s) x {len(study.hardware)} chip(s), grid {dict(study.sweep.grid)}, "
        + (f"{study.sweep.n_instances} instances" if study.sweep.target_ci_width is None
           else f"until the mean CI is {study.sweep.target_ci_width} wide") + f", chips from seed {seed}")
    ds = run_sweep(ctx)
    times["train_s"] += t1 - t0
    times["sweep_s"] += time.perf_counter() - t1
    ds.attrs["calibration_data"] = train.name   # converter ranges were calibrated on the training split
    if flag_nonfinite(ds, warn=False):   # totals over the stacked sweeps (each sweep warned of its own cells)
        log(f"warning: non-finite accuracy/loss cells: {ds.attrs[NONFINITE_ATTR]} (recorded in attrs)")
    if ctx.keep_model:
        sig = [t.sigma_train if t.sigma_train is not None else 0.0 for t in study.training] \
            if len(study.training) == len(models) else None
        if sig is not None:
            ds = ds.assign_coords(sigma_train=(MODEL_DIM, np.asarray(sig, dtype=float)))
    fa = [float_accuracy(m, test) for m in models.values()]
    ds["float_accuracy"] = ((MODEL_DIM,), fa) if ctx.keep_model else ((), fa[0])
    ds = xr.merge([ds, _histories(ctx, histories)], combine_attrs="override")
    if study.outputs.sensitivity:
        log("per-layer Hessian sensitivity")
        ds = xr.merge([ds, _sensitivity(ctx)], combine_attrs="override")
    if study.recovery is not None:
        rec = _recovery(ctx, train, study.recovery.n_instances or ds.sizes[dims.INSTANCE])
        ds = xr.merge([ds, rec], join="outer", combine_attrs="override")
        ds.attrs["recovery"] = json.dumps(dataclasses.asdict(study.recovery), sort_keys=True)
    return ds


@dataclass(frozen=True)
class RunResult:
    """What :func:`run_study` produced: the results Dataset, its file, the report files and timings (s)."""

    dataset: xr.Dataset
    out_dir: Path
    results_path: Path
    report: dict
    timings: dict


def run_study(study: Study, *, out: str | Path | None = None, device=None, progress: bool = True,
              cache_dir: str | Path | None = DEFAULT_CACHE, log: Callable[[str], None] = print,
              scheduler: str | None = None, workers: int | None = None,
              store: str | Path | None = None) -> RunResult:
    """Train (or load), sweep, save and report one study into ``out`` (default ``reports/<study name>``).

    ``scheduler`` (a Dask scheduler address) or ``workers`` (a loopback LocalCluster of that many workers) runs
    the sweeps on Dask distributed; the results are identical to the in-process run. ``store`` (a folder) makes
    every sweep stream into a resumable zarr store there (Dask executor; 2 local workers unless told otherwise):
    re-running a killed study computes only the missing tasks."""

    t0 = time.perf_counter()
    device = resolve_device(device) if device is not None else None   # CUDA asked, none there: CPU + warning
    check_name(study)
    out_dir = Path(out) if out is not None else Path("reports") / study.name
    check_folders({"out": out_dir, "cache_dir": cache_dir, "store": store})
    seeds = study.seeds
    check_size(study, (len(study.training) + (study.model.weights is not None)) * len(seeds))
    train, test = load_data(study.data, device)
    check_data(study, (train, test))
    if store is not None:
        Path(store).mkdir(parents=True, exist_ok=True)
    dask = scheduler is not None or workers is not None or store is not None
    parts, times = [], {"train_s": 0.0, "sweep_s": 0.0}
    with connect(scheduler=scheduler, n_workers=workers or 2) if dask else contextlib.nullcontext() as client:
        for seed in seeds:
            if len(seeds) > 1:
                log(f"training seed {seed} ({seeds.index(seed) + 1} of {len(seeds)})")
            parts.append(_run_seed(study, seed, train, test, device=device, progress=progress, cache_dir=cache_dir,
                                   log=log, client=client, store=store, times=times))
    ds = parts[0] if len(seeds) == 1 else xr.concat(
        parts, dim=dims.TRAIN_SEED, combine_attrs="override", data_vars="all", coords="minimal",
        compat="override").assign_coords({dims.TRAIN_SEED: list(seeds)})
    if len(seeds) > 1 and "sigma_train" in ds.coords and dims.TRAIN_SEED in ds["sigma_train"].dims:
        ds = ds.assign_coords(sigma_train=ds["sigma_train"].isel({dims.TRAIN_SEED: 0}, drop=True))
    t1 = t0 + times["train_s"]
    t2 = t1 + times["sweep_s"]
    t3 = time.perf_counter()
    o = study.outputs
    ds.attrs.update(study=study.name, study_description=study.description, study_toml=study.text,
                    study_seed=study.seed, report_yield_threshold=o.yield_threshold, report_ci=o.ci,
                    report_quantiles=list(o.quantiles), report_plots=",".join(o.plots), report_html=int(o.html),
                    report_embed=o.embed, train_s=round(t1 - t0, 3), sweep_s=round(t2 - t1, 3))
    if len(seeds) > 1:
        ds.attrs["train_seeds"] = list(seeds)
    specs = {k: v.to_dict() for k, v in study.hardware.items()}   # the chips as configured, before sweep knobs
    ds.attrs["hardware_spec"] = json.dumps(specs if study.hardware_variants else specs["base"], sort_keys=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = save_results(ds, out_dir / f"results.{o.format}")

    report = write_report(ds, out_dir, log=log)
    t4 = time.perf_counter()
    timings = {"train_s": t1 - t0, "sweep_s": t2 - t1, "extras_s": t3 - t2, "report_s": t4 - t3, "total_s": t4 - t0}
    return RunResult(dataset=ds, out_dir=out_dir, results_path=path, report=report, timings=timings)
