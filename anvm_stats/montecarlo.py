"""Monte Carlo evaluation: K chip instances at once, over a grid of hardware knobs, into a labelled Dataset.

Layers: the engine (:func:`plan_grid` validates a grid, :func:`run_points` scores chips of a prepared program at
every grid point), executors that run a whole sweep with it (:class:`LocalExecutor` in this process,
:class:`anvm_stats.parallel.DaskExecutor` on a cluster, which imports this module, never the reverse), and the entry
points :func:`sweep` / :func:`evaluate`.

Each chunk of instances is drawn once (base draws) and re-programmed at every grid point, so every point uses
the same chips (common random numbers) and pays for sampling once; for chips affine in their draws, the layers
that read the network input reuse their products with the draws across points too (:mod:`.analog.lazy`).
Chunks are sized to a memory budget.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from . import dims
from .analog.affine import affine_layers, affine_runtime, draw_views
from .analog.lazy import NOMINAL_CACHE_BYTES, PRODUCT_CACHE_BYTES, ProductCache
from .analog.program import AnalogProgram, LayerFilter, prepare
from .batches import EvaluationBatches, evaluation_batches
from .checks import check_model_data, flag_nonfinite
from .chunking import draw_block, instances_per_chunk, instances_per_forward
from .cost import count as count_operations, grid_cost
from .counter_rng import counter_draws_default
from .data_source import describe
from .errors import ConfigError, check_number
from .hardware.spec import KNOBS, HardwareSpec
from .metrics import ACCURACY, CROSS_ENTROPY, TOP5_ACCURACY, Metric, resolve_metrics
from .provenance import provenance
from .rng import SeedLike, seed_entropy
from .sample_rng import SampleNoise, release_workspace
from .sampler import ChipSampler, instance_indices, warn_shared_streams

Tensor = torch.Tensor
#: RunOptions.sampler -> ChipSampler's ``counter`` argument
SAMPLERS = {"auto": None, "counter": True, "generator": False}
#: logits (floats) scored together by one metrics pass
METRIC_GROUP_FLOATS = 1 << 22
#: raw sums of the rank-based built-ins (correct and top-5 counts, cross-entropy), scored in one pass
RANK_KEYS = ("correct", "loss", "top5")
#: built-in metrics scored by that pass, and their raw sums
RANK_METRICS = {ACCURACY: "correct", TOP5_ACCURACY: "top5", CROSS_ENTROPY: "loss"}


def metric_keys(metrics: tuple[Metric, ...] | None) -> tuple[bool, tuple[Metric, ...]]:
    """What the engine scores for ``metrics`` (``None``: a classifier's defaults): whether the rank-based pass runs
    (:data:`RANK_KEYS`), and the metrics scored by their own per-sample function (raw sums keyed by name)."""
    if metrics is None:
        return True, ()
    own = tuple(m for m in metrics if m not in RANK_METRICS)
    return len(own) < len(metrics), own


def resolve_sampler(sampler: str, device: torch.device | str) -> str:
    """The sampler a run with option ``sampler`` draws from on ``device``: ``"counter"`` or ``"generator"``
    (``"auto"``: counters on CUDA, generators elsewhere)."""
    if sampler not in SAMPLERS:
        raise ConfigError("sampler", sampler, f"one of {sorted(SAMPLERS)}")
    if sampler != "auto":
        return sampler
    return "counter" if counter_draws_default(torch.device(device)) else "generator"


#: reduced precisions of :class:`RunOptions` (None: float32 throughout)
PRECISIONS = {"float32": None, "bf16": torch.bfloat16}


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Execution options of a Monte Carlo run.

    Parameters
    ----------
    instances_per_chunk : int, optional
        Chips evaluated together; default: as many as fit ``memory_budget``.
    samples_per_batch : int, optional
        Samples per forward; default: all samples up to 1024.
    memory_budget : int, optional
        Bytes for one chunk (draws, conductances, weights, activations); default 2 GiB on CPU,
        half the free memory on CUDA.
    sampler : {"auto", "counter", "generator"}
        Where chips' base draws come from: counter-based Philox streams (:mod:`anvm_stats.counter_rng`, one
        kernel per chunk) or one ``torch.Generator`` per instance; ``"auto"``: counters on CUDA, generators on
        CPU (:func:`resolve_sampler`). Unlike the options above this picks *which* chips are drawn (both are pure
        functions of ``(seed, i)``): give ``"counter"`` on both devices to evaluate the same chips on CPU and
        GPU. The resolved sampler is recorded in the result's ``sampler`` attr.
    precision : {"float32", "bf16"}
        ``"bf16"``: the network's matrix products and convolutions (the analog MVMs and digital layers alike) run
        under ``torch.autocast`` in bfloat16 (8-bit mantissa, float32 accumulation where the back end does),
        everything else (draws, conductances, noise, converters, metrics) in float32. Opt-in speed on GPUs with
        bf16 tensor cores; it changes results (a per-MVM relative error around 2^-9 on top of the chip's), so
        compare it to float32 on your network first (``tests/test_montecarlo.py`` checks the digits MLP and a
        ResNet agree within chip-sampling error). Recorded in the result's ``precision`` attr.

    Notes
    -----
    ``instances_per_chunk`` and ``memory_budget`` never change a result (every forward of a chip has the same
    shape). ``samples_per_batch`` does, at float32 round-off: the GEMM and convolution kernels that compute a
    forward are chosen by its shape, so a sample's logits can differ in their last bit between batch sizes (and
    a loss summed per batch in float32 with them). ``sampler`` picks which chips are drawn.
    """

    instances_per_chunk: int | None = None
    samples_per_batch: int | None = None
    memory_budget: int | None = None
    sampler: str = "auto"
    precision: str = "float32"

    def __post_init__(self):
        for name in ("instances_per_chunk", "samples_per_batch", "memory_budget"):
            v = getattr(self, name)
            if v is not None:
                check_number(f"RunOptions.{name}", v, low=1, integer=True)
        if self.sampler not in SAMPLERS:
            raise ConfigError("RunOptions.sampler", self.sampler, f"one of {sorted(SAMPLERS)}")
        if self.precision not in PRECISIONS:
            raise ConfigError("RunOptions.precision", self.precision, f"one of {sorted(PRECISIONS)}")


@dataclass(frozen=True, eq=False)
class GridPlan:
    """A validated grid of sweep knobs.

    Attributes
    ----------
    keys : tuple of str
        Knob names, one Dataset dim each (in the grid's order).
    values : tuple of 1-d ndarray
        Distinct values of each knob.
    points : tuple of dict
        Every combination (C order), knob -> value; empty for no grid.
    """

    keys: tuple
    values: tuple
    points: tuple

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.values)

    def specs(self, spec: HardwareSpec) -> list[HardwareSpec]:
        """``spec`` with the knobs of every point set (``[spec]`` for no grid)."""
        return [spec.with_knobs(**pt) for pt in self.points] or [spec]

    def coords(self, instances: np.ndarray) -> dict[str, np.ndarray]:
        """Coordinates of a result: every knob, then ``instance``."""
        out = dict(zip(self.keys, self.values))
        out[dims.INSTANCE] = instances
        return out


def plan_grid(grid: Mapping[str, Sequence] | None) -> GridPlan:
    """Validate ``grid`` (knob -> values) into a :class:`GridPlan`.

    Raises
    ------
    ConfigError
        For a key that is not a sweep knob (:data:`anvm_stats.hardware.KNOBS`) or values that are not a non-empty
        list of distinct values.
    """
    grid = dict(grid or {})
    keys = list(grid)
    for k in keys:
        if k not in KNOBS:
            raise ConfigError(f"grid.{k}", grid[k], f"a sweep knob: one of {KNOBS}")
    values = []
    for k in keys:
        v = np.atleast_1d(np.asarray(grid[k]))
        if v.ndim != 1 or v.size == 0 or len(np.unique(v)) != v.size:
            raise ConfigError(f"grid.{k}", grid[k], "a non-empty list of distinct values")
        values.append(v)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*[v.tolist() for v in values])]
    return GridPlan(tuple(keys), tuple(values), tuple(points))


def _metrics_update(acc: dict, logits: Tensor, y: Tensor) -> None:
    """Accumulate per-instance correct counts, top-5 counts and loss sums from logits ``[K, C, B]``.

    Class-major (``C`` before the samples): every reduction over classes runs across samples in SIMD lanes, about
    twice as fast as over a 10-wide inner dim. The rank of the true class is the number of classes ranked before it,
    with ``argmax`` semantics: a larger logit, or an equal logit at a smaller class index (so a coarse ADC that
    ties every output scores like ``argmax``, never as correct by default); a NaN logit outranks everything, and a
    NaN true logit is wrong. Top-1 and top-5 come from that one rank; the loss is ``logsumexp - logit_true``."""
    K, C, B = logits.shape
    true = logits.gather(1, y.view(1, 1, B).expand(K, 1, B))
    lse = torch.logsumexp(logits.float(), 1)
    earlier = torch.arange(C, device=logits.device).view(1, C, 1) < y.view(1, 1, B)
    # NaN anywhere (lse is NaN then) or an infinite true logit: the general comparison. On CUDA always (exact for
    # every input; asking the host which case holds would stall the GPU queue once per chunk)
    if logits.is_cuda or bool(torch.isnan(lse).any()) or bool(torch.isinf(true).any()):
        before = (logits > true) | ((logits == true) & earlier) | torch.isnan(logits)
    else:                           # for finite t: x >= t  <=>  x > nextafter(t, -inf); one comparison fewer
        below = torch.nextafter(true, torch.full_like(true, -float("inf")))
        before = logits > torch.where(earlier, below, true)
    rank = before.sum(1, dtype=torch.int32)
    rank = torch.where(torch.isnan(true[:, 0]), torch.full_like(rank, C), rank)
    acc["correct"] += (rank == 0).sum(1).to(torch.float64)
    acc["top5"] += (rank < 5).sum(1).to(torch.float64)
    acc["loss"] += (lse - true[:, 0].float()).sum(1).to(torch.float64)


class _PendingMetrics:
    """Logits of consecutive sub-chunks of one draw block, scored together (fewer, larger metric ops).

    ``add(offset, batch, logits, y)`` keeps ``logits`` ``[K, B, C]`` (any strides) of block rows
    ``offset..offset+K`` on batch index ``batch``, class-major (``[K, C, B]``, contiguous); ``flush(acc)`` scores
    everything kept into ``acc`` (dict of ``[K_block]`` float64 tensors). Scores are per instance, so grouping
    never changes them. Token outputs ``[K, B, L..., C]`` with labels ``[B, L...]`` are scored per token (the sums
    count tokens). ``metrics`` (from :func:`metric_keys`): whether the rank-based pass runs, and the metrics scored
    at ``add`` by their own per-sample function (``[K*B, ...]`` outputs against the labels repeated per instance),
    summed per instance into ``acc[name]``."""

    def __init__(self, max_floats: int = METRIC_GROUP_FLOATS, metrics: tuple = (True, ())):
        self.max_floats = max_floats
        self.rank, self.own = metrics
        self.items: dict[int, list] = {}
        self.size = 0

    def add(self, offset: int, batch: int, logits: Tensor, y: Tensor, acc: dict) -> None:
        K, B = logits.shape[:2]
        for m in self.own:
            out = logits.reshape(K * B, *logits.shape[2:])
            target = y.expand(K, *y.shape).reshape(K * B, *y.shape[1:])
            acc[m.name][offset:offset + K] += m.per_sample(out, target).to(torch.float64).view(K, B).sum(1)
        if not self.rank:
            return
        if logits.dim() > 3:        # token outputs: every token is a scored sample
            logits, y = logits.reshape(K, -1, logits.shape[-1]), y.reshape(-1)
        self.items.setdefault(batch, []).append((offset, logits.transpose(1, 2).contiguous(), y))
        self.size += logits.numel()
        if self.size >= self.max_floats:
            self.flush(acc)

    def flush(self, acc: dict) -> None:
        for runs in self.items.values():
            first, y = runs[0][0], runs[0][2]
            logits = runs[0][1] if len(runs) == 1 else torch.cat([r[1] for r in runs])
            part = {k: torch.zeros(logits.shape[0], dtype=torch.float64, device=logits.device) for k in RANK_KEYS}
            _metrics_update(part, logits, y)
            for k in RANK_KEYS:
                acc[k][first:first + logits.shape[0]] += part[k]
        self.items, self.size = {}, 0


def _forward(program: AnalogProgram, x: Tensor, precision: str) -> Tensor:
    """The network's output on ``x`` (float32), its products in ``precision`` (:class:`RunOptions`)."""
    if PRECISIONS[precision] is None:
        y = program.run_chain(x)       # a plain chain of analog layers as one fused call, where the kernel has one
        return program.module(x) if y is None else y
    with torch.autocast(device_type=x.device.type, dtype=PRECISIONS[precision]):
        return program.module(x).float()


def _pad_rows(draws: list, rows: int) -> list:
    """Base draws of a short chunk padded to ``rows`` instances with copies of its last chip."""
    return [{k: torch.cat([t, t[-1:].expand(rows - t.shape[0], -1)]) for k, t in d.items()} for d in draws]


@dataclass(frozen=True, eq=False)
class _Point:
    """What every chunk needs of one grid point: its spec, converter settings, and the affine map from draws to
    weights (None: the general program-then-decode path)."""

    spec: HardwareSpec
    affine: list | None
    kw: dict
    #: read effects with ``read_sd`` (drawn per MVM), and whether any noise is drawn per MVM (these or output noise)
    mvm_effects: tuple
    mvm: bool
    #: the spec with only the read effects drawn per forward in the weight domain (those without ``read_sd``)
    read_spec: HardwareSpec | None

    @classmethod
    def of(cls, program: AnalogProgram, spec: HardwareSpec) -> "_Point":
        per = spec.periphery
        kw = dict(dac_levels=per.dac.n_levels if per.dac else None,
                  adc_levels=per.adc.n_levels if per.adc else None, output_noise=per.output_noise)
        parasitics = getattr(spec, "parasitics", None)      # IR drop: every tile through analog.tiles.tile_mvm
        if parasitics is not None:
            kw["parasitics"] = parasitics
        affine = affine_layers(program, spec) if program.spec.mapping == spec.mapping and spec.tile is None \
            and parasitics is None else None
        mvm_effects = tuple(e for e in spec.read_effects if callable(getattr(e, "read_sd", None)))
        other = tuple(e for e in spec.read_effects if e not in mvm_effects)
        read_spec = replace(spec, effects=spec.program_effects + other) if other else None
        return cls(spec, affine, kw, mvm_effects, bool(mvm_effects) or per.output_noise > 0, read_spec)


def point_settings(program: AnalogProgram, spec: HardwareSpec) -> _Point:
    """How chips of ``program`` are loaded at ``spec`` (one grid point): the converter keywords of
    :meth:`AnalogProgram.load` (``kw``), the read effects drawn per MVM (``mvm_effects``; ``mvm``: whether any
    noise is drawn per MVM) and the spec of the read effects drawn per forward (``read_spec``, None when none);
    what :func:`anvm_stats.chip_module.chip` loads a single chip with."""
    return _Point.of(program, spec)


def _run_chunk(program: AnalogProgram, sampler: ChipSampler, point: _Point, sub: list, views, idx: np.ndarray,
               rows: int, batches: list, sample_major: bool, pending: "_PendingMetrics", off: int, acc: dict,
               caches: tuple = (None, None), precision: str = "float32") -> None:
    """Program the chips of one chunk (base draws ``sub`` of ``rows`` chips, the first ``len(idx)`` real, the
    rest padding) for one grid point and score every batch into ``acc`` (rows ``off..``). Chips affine in their
    draws are programmed lazily from the chunk's draw ``views`` (:func:`affine.draw_views`); ``caches`` (draw
    products of this chunk, nominal products of this grid point) serve layers that read shared inputs
    (:mod:`anvm_stats.analog.lazy`)."""
    K, spec, kw, affine = len(idx), point.spec, point.kw, point.affine is not None
    if affine:
        lazies = affine_runtime(program, point.affine, views, products=caches[0], nominal=caches[1])
    else:
        g = sampler.program_chips(sub, spec, K=rows)
    gens = sampler.read_generators(idx, point.read_spec) if point.read_spec is not None else None
    if point.mvm:     # read and output noise per MVM, keyed by (seed, instance, layer, sample): anvm_stats.analog.tiles
        keys = np.concatenate([idx, np.repeat(idx[-1:], rows - len(idx))])
        kw = dict(kw, mvm_noise=SampleNoise(sampler.root, keys), mvm_effects=point.mvm_effects)
    loaded, first = False, 0
    try:
        for b, (x, y) in enumerate(batches):
            if point.read_spec is not None:
                program.load(sampler.read(g, point.read_spec, gens), B=x.shape[0], noise_sources=gens, **kw)
            elif not loaded and affine:
                program.load_affine(lazies, B=x.shape[0], dac_levels=kw["dac_levels"], sample_major=sample_major)
            elif not loaded:
                program.load(g, B=x.shape[0], noise_sources=gens, sample_major=sample_major, **kw)
            loaded = True
            program.set_batch(x.shape[0], b, first)
            first += x.shape[0]
            logits = program.instances(_forward(program, x, precision), rows, x.shape[0], sample_major)[:K]
            pending.add(off, b, logits, y, acc)
    finally:
        program.unload()


@torch.no_grad()
def run_points(program: AnalogProgram, sampler: ChipSampler, specs: list[HardwareSpec], indices: np.ndarray,
               batches: EvaluationBatches, options: RunOptions, *, progress: bool = False,
               metrics: Sequence | None = None) -> dict[str, np.ndarray]:
    """The engine: metrics of every grid spec and instance index.

    Parameters
    ----------
    program : AnalogProgram
        The prepared (calibrated) network.
    sampler : ChipSampler
        Draws chip ``i`` from ``(seed, i)``.
    specs : list of HardwareSpec
        One per grid point (:meth:`GridPlan.specs`); all share the program's effects (only knob values differ).
    indices : ndarray of int, shape [n_instances]
    batches : EvaluationBatches
        From :func:`anvm_stats.batches.evaluation_batches`.
    options : RunOptions
        ``instances_per_chunk`` and ``memory_budget`` (the others are read by the callers).
    progress : bool
        Show a progress bar (chip-points/s).
    metrics : sequence of Metric, names or callables, optional
        What to score (:func:`anvm_stats.metrics.resolve_metrics`); default a classifier's counts.

    Returns
    -------
    dict of str -> ndarray [n_points, n_instances]
        ``correct`` and ``top5`` (counts) and ``loss`` (sum of per-sample cross-entropies), per token for token
        outputs ``[B, L..., C]`` with labels ``[B, L...]`` (when ``metrics`` is None or holds a built-in of
        :data:`RANK_METRICS`); the sum of per-sample values of every other metric, under its name.

    Notes
    -----
    Instances are drawn in blocks (:func:`~anvm_stats.chunking.draw_block`, fewer sampler calls) and evaluated in
    chunks sized to the memory budget and, on CPU, the cache (:func:`~anvm_stats.chunking.instances_per_chunk`;
    fixed for sample-major runs, :func:`~anvm_stats.chunking.instances_per_forward`); each chunk's chips are
    re-programmed at every grid point from the same base draws, one point after the other (the chunk's draws and
    shared-input products stay in cache). None of this changes a result: each instance has its own streams.
    """
    n_pts, n_inst = len(specs), len(indices)
    scored = metric_keys(resolve_metrics(metrics))
    keys = (RANK_KEYS if scored[0] else ()) + tuple(m.name for m in scored[1])
    out = {k: np.zeros((n_pts, n_inst)) for k in keys}
    B0 = batches.batches[0][0].shape[0]
    n_draw = sum(1 for e in program.spec.program_effects) + 1
    act = program.largest_activation(batches.batches[0][0])
    chunk = instances_per_chunk(program, options.instances_per_chunk, options.memory_budget, n_inst, B0, act,
                                n_draw)
    fixed = instances_per_forward(program, specs, options.memory_budget, B0, act, n_draw)
    if fixed:
        chunk = fixed if options.instances_per_chunk is None else min(fixed, options.instances_per_chunk)
    block = chunk if options.instances_per_chunk is not None else draw_block(chunk, n_inst, program.n_devices,
                                                                             n_draw)
    points = [_Point.of(program, s) for s in specs]
    any_affine = any(pt.affine is not None for pt in points)
    if any_affine:
        program.mark_shared_inputs(batches.batches[0][0])
    nominal = [ProductCache(NOMINAL_CACHE_BYTES) for _ in specs]
    bar = tqdm(total=n_pts * n_inst, unit="chip", disable=not progress, desc="Monte Carlo", leave=False)
    draws, done = None, []
    try:
        for start in range(0, n_inst, block):
            block_idx = indices[start:start + block]
            draws = sampler.draw(block_idx, specs[0], reuse=draws)
            accs = [{k: torch.zeros(len(block_idx), dtype=torch.float64, device=program.device) for k in out}
                    for _ in specs]
            pending = [_PendingMetrics(max(1, METRIC_GROUP_FLOATS // n_pts), scored) for _ in specs]
            for off in range(0, len(block_idx), chunk):
                idx = block_idx[off:off + chunk]
                sub = draws if len(idx) == len(block_idx) else \
                    [{k: t[off:off + len(idx)] for k, t in d.items()} for d in draws]
                rows = fixed or len(idx)
                if rows > len(idx):          # sample-major forwards hold exactly `fixed` chips: pad
                    sub = _pad_rows(sub, rows)
                views = draw_views(program, sub) if any_affine else None
                products = ProductCache(PRODUCT_CACHE_BYTES)
                for p, point in enumerate(points):
                    _run_chunk(program, sampler, point, sub, views, idx, rows, batches.batches, fixed is not None,
                               pending[p], off, accs[p], (products, nominal[p]), options.precision)
                    bar.update(len(idx))
            for p in range(n_pts):
                pending[p].flush(accs[p])
            done.append((start, accs))      # copied to the host at the end: no device sync between blocks
        for start, accs in done:
            for p in range(n_pts):
                for k in out:
                    out[k][p, start:start + accs[p][k].shape[0]] = accs[p][k].cpu().numpy()
    finally:
        bar.close()
        program.unload()
        release_workspace()
    return out


def metric_variables(raw: dict[str, np.ndarray], metrics: tuple[Metric, ...] | None, batches: EvaluationBatches,
                     vdims: list[str], shape: list[int]) -> dict[str, xr.Variable]:
    """The Dataset variables of :func:`run_points`'s raw sums: a classifier's defaults (``metrics`` None:
    ``accuracy``, ``loss``, ``correct_count``, ``top5_accuracy`` beyond 5 classes) or one variable per metric
    (``accuracy`` brings ``correct_count``), each with ``long_name``, ``units``, ``higher_is_better`` (0/1) and
    ``reduction`` attrs. Rank-based sums count tokens (``n_samples`` times the tokens per sample); other metrics'
    sums count samples."""
    n = batches.n_samples
    n_rank = n * tokens_per_sample(batches)

    def arr(a):
        return a.reshape(shape)

    if metrics is None:
        out = {dims.ACCURACY: xr.Variable(vdims, arr(raw["correct"] / n_rank)),
               dims.LOSS: xr.Variable(vdims, arr(raw["loss"] / n_rank)),
               dims.CORRECT_COUNT: xr.Variable(vdims, arr(raw["correct"]).astype(np.int64))}
        if batches.n_classes > 5:
            out[dims.TOP5_ACCURACY] = xr.Variable(vdims, arr(raw["top5"] / n_rank))
        out[dims.ACCURACY].attrs.update(long_name="top-1 accuracy", units="1")
        out[dims.LOSS].attrs.update(long_name="mean cross-entropy loss", units="nat")
        return out
    out = {}
    for m in metrics:
        key = RANK_METRICS.get(m)
        value = m.reduce(raw[key] / n_rank if key is not None else raw[m.name] / n)
        out[m.name] = xr.Variable(vdims, arr(value), attrs=dict(
            long_name=m.long_name or m.name, units=m.units, higher_is_better=int(m.higher_is_better),
            reduction=m.reduction))
        if m is ACCURACY:
            out[dims.CORRECT_COUNT] = xr.Variable(vdims, arr(raw["correct"]).astype(np.int64))
    return out


def tokens_per_sample(batches: EvaluationBatches) -> int:
    """Class labels per sample of the evaluation data (1 for a classifier's ``[B]``, ``L`` for ``[B, L]`` tokens,
    1 for float targets)."""
    y = batches.batches[0][1]
    return int(y[0].numel()) if y.dim() > 1 and not y.is_floating_point() else 1


class LocalExecutor:
    """Run a sweep in this process (the default executor of :func:`sweep`).

    An executor has one method, ``run(model, spec, data, *, plan, instances, seed, calibration_data, layers,
    digital, device, options, program, progress, metrics) -> xr.Dataset``, with :func:`sweep`'s arguments
    validated (``plan`` from :func:`plan_grid`, ``instances`` the instance indices, ``metrics`` None or a tuple of
    :class:`~anvm_stats.metrics.Metric`); :class:`anvm_stats.parallel.DaskExecutor` runs the same sweep on a Dask
    cluster.
    """

    def run(self, model: nn.Module, spec: HardwareSpec, data, *, plan: GridPlan, instances: np.ndarray,
            seed: SeedLike, calibration_data=None, layers: LayerFilter = None, digital: Sequence[str] = (),
            device: torch.device | str | None = None, options: RunOptions,
            program: AnalogProgram | None = None, progress: bool = True,
            metrics: tuple[Metric, ...] | None = None) -> xr.Dataset:
        if program is None:
            program = prepare(model, spec, calibration_data=calibration_data if calibration_data is not None else data,
                              layers=layers, digital=digital, device=device, fuse_relu=True)
            calibrated_on = "evaluation data" if calibration_data is None else describe(calibration_data)
        else:
            calibrated_on = "as the given program was prepared"
        batches = evaluation_batches(program, data, options.samples_per_batch)
        sampler = ChipSampler(program, seed, counter=SAMPLERS[options.sampler])
        raw = run_points(program, sampler, plan.specs(spec), instances, batches, options, progress=progress,
                         metrics=metrics)
        shape = list(plan.shape) + [len(instances)]
        vdims = list(plan.keys) + [dims.INSTANCE]
        data_vars = metric_variables(raw, metrics, batches, vdims, shape)
        attrs = provenance(model=model, spec=spec, dataset=describe(data), seed_entropy=seed_entropy(sampler.root),
                           device=program.device)
        attrs.update(n_samples=batches.n_samples, n_classes=batches.n_classes,
                     analog_layers=",".join(program.layer_names), sampler=sampler.kind, calibration_data=calibrated_on,
                     precision=options.precision)
        if tokens_per_sample(batches) > 1:
            attrs.update(tokens_per_sample=tokens_per_sample(batches))
        if metrics is not None:
            attrs.update(metrics=",".join(m.name for m in metrics))
        if program.n_tiles:
            attrs.update(n_tiles=sum(program.n_tiles.values()),
                         n_tiles_per_layer=",".join(f"{k}:{v}" for k, v in program.n_tiles.items()))
        return xr.Dataset(data_vars, coords=plan.coords(instances), attrs=attrs)


def sweep(model: nn.Module, spec: HardwareSpec, data, *, grid: Mapping[str, Sequence] | None = None,
          n_instances: int | None = 256, seed: SeedLike = 0, instances: Sequence[int] | None = None,
          calibration_data=None, layers: LayerFilter = None, digital: Sequence[str] = (),
          device: torch.device | str | None = None, options: RunOptions | None = None,
          program: AnalogProgram | None = None, executor=None, progress: bool = True,
          metrics: Sequence | None = None, cost: bool = False) -> xr.Dataset:
    """Evaluate ``model`` on simulated chips over a grid of hardware knobs.

    Parameters
    ----------
    model : nn.Module
        Trained network (never modified).
    spec : HardwareSpec
        The chip; grid values override its knobs (:data:`anvm_stats.hardware.KNOBS`).
    data : (x, y) tensors, Data, or iterable of (x, y) batches
        Evaluation data.
    grid : dict of knob -> list, optional
        One Dataset dim per key; every point uses the same chips (common random numbers).
    n_instances : int
        Number of chips (instance indices ``0..n-1``); or give explicit ``instances``.
    seed : int, SeedSequence or None
        Instance ``i`` depends only on ``(seed, i)``; default 0 (as every entry point); ``None`` draws fresh
        entropy, recorded in attrs.
    calibration_data : (x, y) tensors, Data, or batches, optional
        Data the DAC/ADC ranges are calibrated on (default: the evaluation ``data``); recorded in the
        ``calibration_data`` attr.
    layers, digital, device
        As for :func:`anvm_stats.analog.prepare`.
    options : RunOptions, optional
        Chunking, samples per batch, memory budget, sampler.
    program : AnalogProgram, optional
        A program prepared from ``model`` and ``spec`` (skips preparing and calibrating).
    executor : LocalExecutor or anvm_stats.parallel.DaskExecutor, optional
        Where the sweep runs; default in this process. The result is the same, bit for bit.
    progress : bool
        Show a progress bar.
    metrics : sequence of Metric, built-in names or callables, optional
        What to measure on each chip (:mod:`anvm_stats.metrics`): callables ``(outputs [N, ...], targets [N, ...])
        -> per-sample values [N]`` reduced per instance, one variable each (``metrics`` attr lists them); default
        a classifier's variables below.
    cost : bool
        Add what one inference costs at every grid point (:func:`anvm_stats.cost.grid_cost`, shipped constants,
        1T1R RRAM cells): ``energy_per_inference``, ``latency_per_inference``, ``chip_area`` (grid dims) and
        ``energy`` (grid dims, ``component``), from the counts of the program the engine runs. The other variables
        are unchanged.

    Returns
    -------
    xr.Dataset
        Dims ``(*grid, instance)``; variables ``accuracy``, ``loss`` (mean cross-entropy), ``correct_count``
        and ``top5_accuracy`` (more than 5 classes), or those of ``metrics``; provenance attrs; ``n_samples``,
        ``sampler`` and ``calibration_data`` attrs; ``nonfinite_cells`` (:data:`anvm_stats.checks.NONFINITE_ATTR`)
        when a variable holds NaN/inf cells (e.g. noise so large that the outputs overflow), with a
        ``RuntimeWarning``. Token outputs ``[N, L..., C]`` with labels ``[N, L...]`` (a language model) are scored
        per token: ``accuracy`` and ``loss`` are means over every token, ``correct_count`` counts tokens, and the
        ``tokens_per_sample`` attr is set.

    Raises
    ------
    ConfigError
        Before any work, for ``data`` the model cannot score (inputs of another shape, NaN/inf inputs, labels
        that are not integers in ``[0, n_classes)``: :func:`anvm_stats.checks.check_model_data`), and for
        ``instances`` / ``n_instances`` that are not valid int64 indices or whose results cannot fit in memory.
    """
    options, executor, plan, metrics = _sweep_arguments(spec, options, executor, cost, grid, metrics)
    idx = instance_indices(n_instances, instances, points=max(len(plan.points), 1))
    check_model_data(model, data, labels=metrics is None or any(m.class_labels for m in metrics))
    extra = {} if metrics is None else {"metrics": metrics}     # executors without metrics keep working
    ds = executor.run(model, spec, data, plan=plan, instances=idx, seed=seed, calibration_data=calibration_data,
                      layers=layers, digital=digital, device=device, options=options, program=program,
                      progress=progress, **extra)
    flag_nonfinite(ds, variables=(dims.ACCURACY, dims.LOSS) if metrics is None else [m.name for m in metrics],
                   what="sweep")
    warn_shared_streams(ds.attrs.get("sampler", ""), ds.attrs.get("device", ""), len(idx))
    if cost:
        counts = count_operations(model, spec, data, layers=layers, digital=digital, program=program)
        priced = grid_cost(counts, plan.specs(spec), plan.keys, plan.values)
        ds = xr.merge([ds, priced], combine_attrs="override")
        ds.attrs.update(priced.attrs)
    return ds


def _sweep_arguments(spec, options, executor, cost, grid, metrics) -> tuple:
    """:func:`sweep`'s arguments checked before any work: ``(options, executor, plan, metrics)`` with defaults
    filled in, the grid planned and the metrics resolved (:class:`ConfigError` naming the argument otherwise)."""
    if not isinstance(spec, HardwareSpec):
        raise ConfigError("spec", type(spec).__name__, "a HardwareSpec")
    options = RunOptions() if options is None else options
    if not isinstance(options, RunOptions):
        raise ConfigError("options", type(options).__name__, "a RunOptions")
    executor = LocalExecutor() if executor is None else executor
    if not callable(getattr(executor, "run", None)):
        raise ConfigError("executor", type(executor).__name__, "None, a LocalExecutor or a DaskExecutor")
    if not isinstance(cost, bool):
        raise ConfigError("cost", cost, "True or False")
    plan = plan_grid(grid)
    metrics = resolve_metrics(metrics)
    clash = [m.name for m in metrics or () if m.name in plan.keys]
    if clash:
        raise ConfigError("metrics", clash[0], f"a name other than the grid's dims {list(plan.keys)}")
    return options, executor, plan, metrics


def evaluate(model: nn.Module, spec: HardwareSpec, data, *, n_instances: int | None = 256, seed: SeedLike = 0,
             instances: Sequence[int] | None = None, calibration_data=None, layers: LayerFilter = None,
             digital: Sequence[str] = (), device: torch.device | str | None = None, options: RunOptions | None = None,
             program: AnalogProgram | None = None, executor=None, progress: bool = True,
             metrics: Sequence | None = None) -> xr.Dataset:
    """Evaluate ``model`` on ``n_instances`` simulated chips of ``spec``: :func:`sweep` without a grid (same
    arguments).

    Returns an ``xr.Dataset`` with dim ``instance`` (see :func:`sweep`)."""
    return sweep(model, spec, data, grid=None, n_instances=n_instances, seed=seed, instances=instances,
                 calibration_data=calibration_data, layers=layers, digital=digital, device=device, options=options,
                 program=program, executor=executor, progress=progress, metrics=metrics)
