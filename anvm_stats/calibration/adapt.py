"""Per-chip calibration after programming: a few DIGITAL parameters adapted on each simulated chip (paper 2).

The analog conductances of a chip are never rewritten. Each chip gets its own small set of digital parameters,
attached to the (copied) network by forward hooks and held as per-instance tensors ``[K, ...]``, so the K chips
of a chunk are adapted together by one Adam optimiser on the SUM of their losses (the loss of chip k depends only
on chip k's parameters: gradients never mix across instances).

Parameter sets (``params``):

``"column_affine"``
    a gain and an offset per output column of every analog layer, applied after the ADC: ``y' = a * y + c``.
``"batchnorm"``
    the affine of every (unfolded) BatchNorm, re-parametrised as a gain and offset on its output (needs
    ``HardwareSpec(fold_batchnorm=False)`` and a model with BatchNorm).
``"sparse"``
    ``sparse_fraction`` of the crossbar weights (of ``W~ = [W, b/s]``) moved to digital memory: a digital
    correction ``x @ D.T`` restores their nominal values exactly and is then fine-tuned. Chosen per chip at
    random (stream ``Stream.CALIBRATE``) or by sensitivity (largest ``|dw * dL/dw|``: the first-order loss
    recovered by restoring weight ``w``, with ``dw`` its programming error on that chip).

The default objective (``"distill"``) matches each chip's logits to those of the nominal chip (the same program
with nominal conductances ``g0``) on the calibration inputs: it needs no labels and is exactly zero, with an
exactly zero gradient, on a chip without device error, so calibration then changes nothing.
``"labels"`` uses cross-entropy on the calibration labels instead (paper 2's retraining).

The options: :mod:`.options`; the parameter sets: :mod:`.adapters`; here the objective and the per-chip loop.
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from .. import dims
from ..analog.program import prepare
from ..data_source import describe, iter_batches
from ..errors import ConfigError
from ..hardware.spec import HardwareSpec
from ..batches import EvaluationBatches, evaluation_batches
from ..montecarlo import RunOptions, run_points
from ..provenance import provenance
from ..rng import SeedLike, Stream, instance_generators, seed_entropy
from ..checks import check_model_data, flag_nonfinite
from ..sampler import ChipSampler, instance_indices
from .adapters import make_adapter
from .options import CalibrationOptions

Tensor = torch.Tensor

def objective_fn(opts: CalibrationOptions, teacher: Tensor | None, y: Tensor):
    """Per-instance calibration loss ``[K]`` from student logits ``[K, N, C]``."""
    def loss(logits: Tensor) -> Tensor:
        K, N, C = logits.shape
        if opts.objective == "labels":
            return F.cross_entropy(logits.reshape(K * N, C), y.repeat(K), reduction="none").view(K, N).mean(1)
        T = opts.temperature
        lp = F.log_softmax(logits / T, dim=-1)
        lq = F.log_softmax(teacher / T, dim=-1)
        kl = (lq.exp() * (lq - lp)).sum(-1).mean(1) * T * T
        # value: T^2 KL(q || p); gradient: T (p - q) written out, so that it is exactly zero when the chip's
        # logits equal the nominal ones bitwise (autograd of log_softmax leaves ~1e-8 residues that Adam's
        # normalisation would turn into full-size steps)
        surrogate = ((lp.exp() - lq.exp()).detach() * logits).sum(-1).mean(1) * T
        return kl.detach() + surrogate - surrogate.detach()
    return loss


def _recovery_tensors(recovery_data, n: int | None, device) -> tuple[Tensor, Tensor]:
    xs, ys, got = [], [], 0
    for x, y in iter_batches(recovery_data):
        xs.append(x)
        ys.append(y)
        got += x.shape[0]
        if n is not None and got >= n:
            break
    if not xs:
        raise ConfigError("recovery_data", "empty", "at least one sample")
    x, y = torch.cat(xs), torch.cat(ys)
    if n is not None:
        x, y = x[:n], y[:n]
    return x.to(device, torch.float32 if x.is_floating_point() else x.dtype), y.to(device, torch.int64)


def calibrate(model: nn.Module, spec: HardwareSpec, data, *, recovery_data, n_instances: int | None = 64,
              seed: SeedLike = 0, params: str = "column_affine", sparse_fraction: float = 0.05,
              sparse_select: str = "random", steps: int = 50, lr: float | None = None,
              n_recovery: int | None = None, instances: Sequence[int] | None = None, progress: bool = True,
              objective: str = "distill", temperature: float = 1.0, instances_per_chunk: int = 16,
              calibration_data=None, layers=None, digital: Sequence[str] = (), device=None,
              samples_per_batch: int | None = None) -> xr.Dataset:
    """Adapt a small digital parameter set on every simulated chip and evaluate before and after.

    The chips are those :func:`anvm_stats.evaluate` draws with the same ``model``, ``spec``, ``seed`` (and
    ``calibration_data`` for converter ranges, default ``data`` as in ``evaluate``): instance ``i`` here is
    instance ``i`` there, so ``accuracy_before`` equals ``evaluate(...).accuracy``.

    Parameters
    ----------
    model : nn.Module
        Trained network (never modified).
    spec : HardwareSpec
    data : (x, y) tensors, Data, or iterable of batches
        Held-out evaluation data (accuracy and loss before and after).
    recovery_data : (x, y) tensors, Data, or iterable of batches
        The few samples each chip's digital parameters are adapted on (the first ``n_recovery`` are used, full
        batch, at every step).
    n_instances, instances, seed
        Which chips (as in :func:`anvm_stats.sweep`).
    params, sparse_fraction, sparse_select, steps, lr, n_recovery, objective, temperature, instances_per_chunk
        See :class:`CalibrationOptions`.
    samples_per_batch : int, optional
        Evaluation samples per forward (default up to 1024).
    progress : bool
        Show a progress bar over chips.

    Returns
    -------
    xr.Dataset
        Dim ``instance``; variables ``accuracy_before``, ``accuracy_after``, ``loss_before``, ``loss_after``
        (test cross-entropy), ``objective_before``, ``objective_after`` (calibration objective) and
        ``parameter_shift`` (max ``|p - p_initial|`` of the chip's digital parameters); provenance attrs.
    """
    opts = CalibrationOptions(params=params, sparse_fraction=sparse_fraction, sparse_select=sparse_select,
                              steps=steps, lr=lr, n_recovery=n_recovery, objective=objective,
                              temperature=temperature, instances_per_chunk=instances_per_chunk)
    idx = instance_indices(n_instances, instances)
    check_model_data(model, data)
    check_model_data(model, recovery_data, field="recovery_data")
    program = prepare(model, spec, calibration_data=calibration_data if calibration_data is not None else data,
                      layers=layers, digital=digital, device=device)
    for p in program.module.parameters():
        p.requires_grad_(False)
    dev = program.device
    batches = evaluation_batches(program, data, samples_per_batch, name="data")
    n_samples = batches.n_samples
    xc, yc = _recovery_tensors(recovery_data, opts.n_recovery, dev)
    xc = program.input(xc)
    sampler = ChipSampler(program, seed)
    out = {k: np.zeros(len(idx)) for k in ("acc0", "acc1", "loss0", "loss1", "obj0", "obj1", "shift")}
    n_classes, n_digital = None, 0
    bar = tqdm(total=len(idx), unit="chip", disable=not progress, desc="Calibration", leave=False)
    try:
        for start in range(0, len(idx), opts.instances_per_chunk):
            ids = idx[start:start + opts.instances_per_chunk]
            sl = slice(start, start + len(ids))
            chunk, n_classes, n_digital = _calibrate_chunk(program, sampler, spec, opts, ids, xc, yc, batches)
            for k, v in chunk.items():
                out[k][sl] = v / n_samples if k in ("acc0", "acc1", "loss0", "loss1") else v
            bar.update(len(ids))
    finally:
        bar.close()
    I = dims.INSTANCE
    ds = xr.Dataset({f"{dims.ACCURACY}_before": (I, out["acc0"]), f"{dims.ACCURACY}_after": (I, out["acc1"]),
                     f"{dims.LOSS}_before": (I, out["loss0"]), f"{dims.LOSS}_after": (I, out["loss1"]),
                     "objective_before": (I, out["obj0"]), "objective_after": (I, out["obj1"]),
                     "parameter_shift": (I, out["shift"])}, coords={I: idx})
    ds.attrs.update(provenance(model=model, spec=spec, dataset=describe(data), seed_entropy=seed_entropy(sampler.root),
                               device=dev))
    ds.attrs.update(n_samples=n_samples, n_classes=int(n_classes), n_recovery=int(xc.shape[0]),
                    n_digital=n_digital, calibration_dataset=describe(recovery_data),
                    analog_layers=",".join(program.layer_names),
                    options=json.dumps({k: getattr(opts, k) for k in opts.__dataclass_fields__}, sort_keys=True),
                    learning_rate=opts.learning_rate)
    flag_nonfinite(ds, variables=[f"{v}_{when}" for v in (dims.ACCURACY, dims.LOSS) for when in ("before", "after")],
                   what="calibrate")
    return ds


def _calibrate_chunk(program, sampler: ChipSampler, spec: HardwareSpec, opts: CalibrationOptions, ids: np.ndarray,
                     xc: Tensor, yc: Tensor, batches: EvaluationBatches) -> tuple[dict, int, int]:
    """Adapt the chips ``ids`` together and score them on ``batches`` before and after.

    Returns
    -------
    (sums, n_classes, n_digital)
        ``sums[k]`` ``[K]``: correct counts (``acc0``/``acc1``) and summed test losses (``loss0``/``loss1``)
        before/after, the objective before/after (``obj0``/``obj1``) and the parameter ``shift``; the network's
        outputs; the digital parameters per chip.
    """
    per = spec.periphery
    conv = dict(dac_levels=per.dac.n_levels if per.dac else None, adc_levels=per.adc.n_levels if per.adc else None)
    conv["ste"] = per.dac is not None or per.adc is not None
    K, N = len(ids), xc.shape[0]
    g = sampler.chips(ids)
    with torch.no_grad():
        program.load(program.g0.expand(K, -1).contiguous(), B=N, **conv)
        teacher = program.module(xc).view(K, N, -1)
    n_classes = teacher.shape[-1]
    gens = instance_generators(sampler.root, ids, Stream.CALIBRATE, program.device)
    loss_k = objective_fn(opts, teacher, yc)

    def forward() -> Tensor:
        gs = sampler.read(g, spec, gens) if spec.read_effects else g
        program.load(gs, B=N, output_noise=per.output_noise, noise_sources=gens, **conv)
        return loss_k(program.module(xc).view(K, N, -1))

    sums = {}
    adapter = make_adapter(program, opts, g, ids, sampler.root, lambda: forward().sum())
    try:
        n_digital = int(sum(p[0].numel() for p in adapter.parameters()))
        if opts.params == "sparse":
            n_digital = int(sum(m[0].sum() for m in adapter.mask.values()))
        run = RunOptions(instances_per_chunk=K)
        adapter.active = False
        before = run_points(program, sampler, [spec], ids, batches, run)
        adapter.active = True
        optim = torch.optim.Adam(adapter.parameters(), lr=opts.learning_rate)
        with torch.no_grad():
            sums["obj0"] = forward().cpu().numpy()
        for _ in range(opts.steps):
            optim.zero_grad(set_to_none=True)
            forward().sum().backward()
            optim.step()
        with torch.no_grad():
            sums["obj1"] = forward().cpu().numpy()
        after = run_points(program, sampler, [spec], ids, batches, run)
        sums["shift"] = adapter.shift().numpy()
    finally:
        adapter.remove()
        program.unload()
    sums["acc0"], sums["acc1"] = before["correct"][0], after["correct"][0]
    sums["loss0"], sums["loss1"] = before["loss"][0], after["loss"][0]
    return sums, n_classes, n_digital
