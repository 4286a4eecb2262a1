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
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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
from ..errors import ConfigError, check, check_number
from ..hardware.spec import HardwareSpec
from ..montecarlo import RunOptions, run_points
from ..provenance import provenance
from ..rng import SeedLike, Stream, instance_generators, instance_sequence, seed_entropy
from ..sampler import ChipSampler, instance_indices

Tensor = torch.Tensor
PARAMS = ("column_affine", "batchnorm", "sparse")
SELECT = ("random", "sensitivity")
OBJECTIVES = ("distill", "labels")
DEFAULT_LR = {"column_affine": 1e-2, "batchnorm": 1e-2, "sparse": 2e-3}
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True, kw_only=True)
class CalibrationOptions:
    """What :func:`anvm_stats.calibration.calibrate` adapts, and how.

    Parameters
    ----------
    params : {"column_affine", "batchnorm", "sparse"}
        The digital parameter set (see module docstring).
    sparse_fraction : float in (0, 1]
        Fraction of each chip's crossbar weights moved to digital memory (``params="sparse"``).
    sparse_select : {"random", "sensitivity"}
    steps : int >= 0
        Adam steps, full batch over the calibration samples.
    lr : float > 0, optional
        Adam learning rate; default 1e-2 for affine sets, 2e-3 for sparse weights.
    n_calib : int, optional
        Use the first ``n_calib`` calibration samples (default: all).
    objective : {"distill", "labels"}
    temperature : float > 0
        Softmax temperature of the ``"distill"`` objective (KL divergence times ``T**2``).
    chunk_size : int
        Chips adapted together.
    """

    params: str = "column_affine"
    sparse_fraction: float = 0.05
    sparse_select: str = "random"
    steps: int = 50
    lr: float | None = None
    n_calib: int | None = None
    objective: str = "distill"
    temperature: float = 1.0
    chunk_size: int = 16

    def __post_init__(self):
        check(self.params in PARAMS, "params", self.params, f"one of {PARAMS}")
        check(self.sparse_select in SELECT, "sparse_select", self.sparse_select, f"one of {SELECT}")
        check(self.objective in OBJECTIVES, "objective", self.objective, f"one of {OBJECTIVES}")
        check_number("sparse_fraction", self.sparse_fraction, low=0.0, high=1.0, low_open=True)
        check_number("steps", self.steps, low=0, integer=True)
        if self.lr is not None:
            check_number("lr", self.lr, low=0.0, low_open=True)
        if self.n_calib is not None:
            check_number("n_calib", self.n_calib, low=1, integer=True)
        check_number("temperature", self.temperature, low=0.0, low_open=True)
        check_number("chunk_size", self.chunk_size, low=1, integer=True)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.params]


class _Adapter:
    """Per-instance digital parameters hooked into ``program.module``; inactive hooks are the identity."""

    def __init__(self, program, K: int):
        self.program, self.K, self.active = program, K, True
        self._handles: list = []

    def _on(self) -> int | None:
        """The batch size B of the current forward, or None when the hooks must pass (inactive, or a forward
        of another number of instances, e.g. a probe of the nominal chip)."""
        rt = self.program.analog_modules()[0].runtime
        return rt.B if self.active and rt is not None and rt.K == self.K else None

    def parameters(self) -> list[Tensor]:
        raise NotImplementedError

    def initial(self) -> list[Tensor]:
        return self._init

    def shift(self) -> Tensor:
        """Per-instance ``max |p - p_initial|`` over all parameters, ``[K]``."""
        out = torch.zeros(self.K, dtype=torch.float64)
        for p, p0 in zip(self.parameters(), self.initial()):
            d = (p.detach() - p0).abs().reshape(self.K, -1).amax(1).double().cpu()
            out = torch.maximum(out, d)
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class AffineAdapter(_Adapter):
    """Gain ``[K, C]`` and offset ``[K, C]`` on the channel dim (dim 1) of each target module's output."""

    def __init__(self, program, K: int, targets: list[nn.Module], channels: list[int]):
        super().__init__(program, K)
        dev = program.device
        self.gains = [torch.ones(K, c, device=dev, requires_grad=True) for c in channels]
        self.offsets = [torch.zeros(K, c, device=dev, requires_grad=True) for c in channels]
        self._init = [p.detach().clone() for p in self.parameters()]
        for m, a, c in zip(targets, self.gains, self.offsets):
            self._handles.append(m.register_forward_hook(self._hook(a, c)))

    def parameters(self):
        return self.gains + self.offsets

    def _hook(self, gain: Tensor, offset: Tensor):
        def hook(module, inputs, y):
            K, B = self.K, self._on()
            if B is None:
                return None
            if y.shape[0] == B and K > 1:   # still shared across instances (before the first analog layer)
                y = y.unsqueeze(0).expand(K, *y.shape).reshape(K * B, *y.shape[1:])
            shape = (K, 1, y.shape[1]) + (1,) * (y.dim() - 2)
            out = y.view(K, -1, *y.shape[1:]) * gain.view(shape) + offset.view(shape)
            return out.reshape(y.shape)
        return hook


class SparseAdapter(_Adapter):
    """Digital weight corrections ``D`` ``[K, out, in(+1)]`` (non-zero on a mask) added as ``x~ @ D.T``."""

    def __init__(self, program, K: int, restore: dict[str, Tensor], mask: dict[str, Tensor] | None):
        super().__init__(program, K)
        self.names = list(restore)
        self.mask = mask or {n: torch.ones_like(t) for n, t in restore.items()}
        self.deltas = [(restore[n] * self.mask[n]).detach().clone().requires_grad_(True) for n in self.names]
        self._init = [p.detach().clone() for p in self.deltas]
        for n, d in zip(self.names, self.deltas):
            m = program.module.get_submodule(n)
            self._handles.append(m.register_forward_hook(self._hook(m, n, d)))

    def parameters(self):
        return self.deltas

    def _hook(self, m, name: str, delta: Tensor):
        p = m.plan

        def hook(module, inputs, y):
            K, B = self.K, self._on()
            if B is None:
                return None
            x = inputs[0]
            d = delta * self.mask[name]
            w, b = (d[..., :p.in_features], d[..., p.in_features] * p.bias_scale) \
                if p.bias_mode == "column" else (d, None)
            corr = m._matmul(x, w, b, x.shape[0] == B and K > 1, K, B)
            return y + corr.reshape(y.shape)
        return hook


def make_adapter(program, opts: CalibrationOptions, g: Tensor, idx, root, objective=None) -> _Adapter:
    """The adapter of ``opts.params`` for chips ``g`` ``[K, P]`` with instance indices ``idx``.

    ``objective()`` (loss summed over instances) is needed for ``sparse_select="sensitivity"``."""
    K = g.shape[0]
    if opts.params == "column_affine":
        mods = program.analog_modules()
        return AffineAdapter(program, K, mods, [m.plan.out_features for m in mods])
    if opts.params == "batchnorm":
        bns = [m for m in program.module.modules() if isinstance(m, _BATCHNORMS)]
        if not bns:
            raise ConfigError("params", "batchnorm", "a model with BatchNorm left unfolded (a spec with "
                                                     "fold_batchnorm=False and a model holding BatchNorm layers)")
        return AffineAdapter(program, K, bns, [m.num_features for m in bns])
    with torch.no_grad():
        nominal = program.weights(program.g0[None])
        chip = program.weights(g)
    error = {n: nominal[n] - chip[n] for n in nominal}   # what restoring a weight digitally adds
    total = sum(t[0].numel() for t in error.values())
    k = max(1, int(round(opts.sparse_fraction * total)))
    if opts.sparse_select == "random":
        rows = []
        for i in idx:
            rng = np.random.default_rng(instance_sequence(root, int(i), Stream.CALIBRATE).spawn(1)[0])
            rows.append(torch.as_tensor(rng.choice(total, size=k, replace=False)))
        chosen = torch.stack(rows).to(g.device)
    else:
        probe = SparseAdapter(program, K, {n: torch.zeros_like(t) for n, t in error.items()}, None)
        try:
            grads = torch.autograd.grad(objective(), probe.deltas)
        finally:
            probe.remove()
        score = torch.cat([(e * gr).abs().reshape(K, -1) for e, gr in zip(error.values(), grads)], dim=1)
        chosen = torch.topk(score, k, dim=1).indices
    flat = torch.zeros(K, total, device=g.device)
    flat.scatter_(1, chosen, 1.0)
    mask, start = {}, 0
    for n, t in error.items():
        size = t[0].numel()
        mask[n] = flat[:, start:start + size].view_as(t)
        start += size
    return SparseAdapter(program, K, error, mask)


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
    return x.to(device, torch.float32), y.to(device, torch.int64)


def calibrate(model: nn.Module, spec: HardwareSpec, data, *, recovery_data, n_instances: int | None = 64,
              seed: SeedLike = 0, params: str = "column_affine", sparse_fraction: float = 0.05,
              sparse_select: str = "random", steps: int = 50, lr: float | None = None,
              n_calib: int | None = None, instances: Sequence[int] | None = None, progress: bool = True,
              objective: str = "distill", temperature: float = 1.0, chunk_size: int = 16,
              calibration=None, layers=None, digital: Sequence[str] = (), device=None,
              batch_size: int | None = None) -> xr.Dataset:
    """Adapt a small digital parameter set on every simulated chip and evaluate before and after.

    The chips are those :func:`anvm_stats.evaluate` draws with the same ``model``, ``spec``, ``seed`` (and
    ``calibration`` data for converter ranges, default ``data`` as in ``evaluate``): instance ``i`` here is
    instance ``i`` there, so ``accuracy_before`` equals ``evaluate(...).accuracy``.

    Parameters
    ----------
    model : nn.Module
        Trained network (never modified).
    spec : HardwareSpec
    data : (x, y) tensors, Data, or iterable of batches
        Held-out evaluation data (accuracy and loss before and after).
    recovery_data : (x, y) tensors, Data, or iterable of batches
        The few samples each chip's digital parameters are adapted on (the first ``n_calib`` are used, full batch,
        at every step).
    n_instances, instances, seed
        Which chips (as in :func:`anvm_stats.sweep`).
    params, sparse_fraction, sparse_select, steps, lr, n_calib, objective, temperature, chunk_size
        See :class:`CalibrationOptions`.
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
                              steps=steps, lr=lr, n_calib=n_calib, objective=objective, temperature=temperature,
                              chunk_size=chunk_size)
    idx = instance_indices(n_instances, instances)
    program = prepare(model, spec, calibration=calibration if calibration is not None else data, layers=layers,
                      digital=digital, device=device)
    for p in program.module.parameters():
        p.requires_grad_(False)
    dev = program.device
    batches = [(program.input(x.to(dev, torch.float32)), y.to(dev, torch.int64))
               for x, y in iter_batches(data, batch_size or 1024)]
    if not batches:
        raise ConfigError("data", "empty", "at least one sample")
    n_samples = sum(int(x.shape[0]) for x, _ in batches)
    xc, yc = _recovery_tensors(recovery_data, opts.n_calib, dev)
    xc = program.input(xc)
    sampler = ChipSampler(program, seed)
    per = spec.periphery
    conv = dict(dac_levels=per.dac.n_levels if per.dac else None, adc_levels=per.adc.n_levels if per.adc else None)
    conv["ste"] = per.dac is not None or per.adc is not None
    out = {k: np.zeros(len(idx)) for k in ("acc0", "acc1", "loss0", "loss1", "obj0", "obj1", "shift")}
    n_classes, n_digital = None, 0
    bar = tqdm(total=len(idx), unit="chip", disable=not progress, desc="Calibration", leave=False)
    try:
        for start in range(0, len(idx), opts.chunk_size):
            ids = idx[start:start + opts.chunk_size]
            K, N = len(ids), xc.shape[0]
            g = sampler.chips(ids)
            with torch.no_grad():
                program.load(program.g0.expand(K, -1).contiguous(), B=N, **conv)
                teacher = program.module(xc).view(K, N, -1)
            n_classes = teacher.shape[-1]
            gens = instance_generators(sampler.root, ids, Stream.CALIBRATE, dev)
            loss_k = objective_fn(opts, teacher, yc)

            def forward() -> Tensor:
                gs = sampler.read(g, spec, gens) if spec.read_effects else g
                program.load(gs, B=N, output_noise=per.output_noise, noise_sources=gens, **conv)
                return loss_k(program.module(xc).view(K, N, -1))

            adapter = make_adapter(program, opts, g, ids, sampler.root, lambda: forward().sum())
            try:
                n_digital = int(sum(p[0].numel() for p in adapter.parameters()))
                if opts.params == "sparse":
                    n_digital = int(sum(m[0].sum() for m in adapter.mask.values()))
                sl = slice(start, start + K)
                run = RunOptions(chunk_size=K, progress=False)
                adapter.active = False
                before = run_points(program, sampler, [spec], ids, batches, run, n_classes)
                adapter.active = True
                optim = torch.optim.Adam(adapter.parameters(), lr=opts.learning_rate)
                with torch.no_grad():
                    out["obj0"][sl] = forward().cpu().numpy()
                for _ in range(opts.steps):
                    optim.zero_grad(set_to_none=True)
                    forward().sum().backward()
                    optim.step()
                with torch.no_grad():
                    out["obj1"][sl] = forward().cpu().numpy()
                after = run_points(program, sampler, [spec], ids, batches, run, n_classes)
                out["shift"][sl] = adapter.shift().numpy()
            finally:
                adapter.remove()
                program.unload()
            out["acc0"][sl], out["acc1"][sl] = before["correct"][0] / n_samples, after["correct"][0] / n_samples
            out["loss0"][sl], out["loss1"][sl] = before["loss"][0] / n_samples, after["loss"][0] / n_samples
            bar.update(K)
    finally:
        bar.close()
    I = dims.INSTANCE
    ds = xr.Dataset({f"{dims.ACCURACY}_before": (I, out["acc0"]), f"{dims.ACCURACY}_after": (I, out["acc1"]),
                     f"{dims.LOSS}_before": (I, out["loss0"]), f"{dims.LOSS}_after": (I, out["loss1"]),
                     "objective_before": (I, out["obj0"]), "objective_after": (I, out["obj1"]),
                     "parameter_shift": (I, out["shift"])}, coords={I: idx})
    ds.attrs.update(provenance(model=model, spec=spec, dataset=describe(data), seed_entropy=seed_entropy(sampler.root),
                               device=dev))
    ds.attrs.update(n_samples=n_samples, n_classes=int(n_classes), n_calib=int(xc.shape[0]), n_digital=n_digital,
                    calibration_dataset=describe(recovery_data), analog_layers=",".join(program.layer_names),
                    options=json.dumps({k: getattr(opts, k) for k in opts.__dataclass_fields__}, sort_keys=True),
                    learning_rate=opts.learning_rate)
    return ds
