"""Hessian-Aware SGD (paper 1, Algorithm 1): train so the network survives the device noise of a HardwareSpec.

Each optimiser step draws ``L`` weight perturbations ``dw_l ~ q`` from the hardware model
(:mod:`anvm_stats.training.perturb`), takes the gradient of ``J(w + dw_l; x)``, averages over ``l`` and hands the
mean to a torch optimiser, which updates ``w``. This minimises ``E_q[J(w + dw)] ~ J(w) + 1/2 sum_l sigma_l^2
range_l^2 tr(H_l)`` (plus mean-shift terms): a Hessian-trace penalty.

Two forms of the step:

``mode="direct"``
    L full forward/backward passes over the mini-batch, one per draw: exactly Algorithm 1. Lowest gradient variance
    per step, at L times the cost of plain SGD. Right for small L, batches smaller than L, or train-mode
    BatchNorm statistics taken per draw over the whole batch.
``mode="split"`` (default)
    The mini-batch is split into L contiguous groups, group g sees draw g, in one forward/backward of the whole
    batch (BatchNorm statistics over the whole batch). Same expected gradient (each sample's loss at an independent
    draw of q) at a cost near plain SGD's, higher variance per step (each draw sees B/L samples). Needs
    ``batch_size >= L``. Right for long runs where many steps average the noise.
``mode="local"``
    Local reparameterisation (:mod:`anvm_stats.training.local`), only for q of unclipped additive Gaussian noise:
    each Linear pre-activation gets its own closed-form Gaussian noise per sample (``B x O`` normals per layer, not
    ``L x P``), HA-SGD with ``L = batch size``; conv layers are treated as in ``split``.

A noise-free q (``sigma=0``) or ``q=None`` gives plain SGD bit for bit. A mean shift in q
(``ProgrammingNoise.mu``) is a prior: the net learns weights that are right once the shift is added (paper 1,
Figure 8). ``sigma_schedule`` sets q's ``noise_level`` per epoch; ``adc_levels`` quantises analog outputs in the
loop (:mod:`anvm_stats.training.adc`, paper 1 Figure 9).

Randomness: data order of epoch e from a numpy Generator keyed by (seed, e) (:func:`epoch_order`); draw l of step
t from a torch Generator keyed by (seed, t, l); torch's global RNG (dropout) is forked and seeded from (seed, e)
inside each epoch and restored afterwards. So checkpointed runs resume exactly.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn

from .. import dims
from ..analog.program import LayerFilter
from ..data_source import as_tensors, describe, first_samples, iter_batches
from ..errors import check, check_number
from ..hardware.spec import HardwareSpec
from ..provenance import model_label
from ..rng import SeedLike, root_sequence, seed_entropy
from .adc import ADCInTheLoop, adc_points
from .checkpoint import fingerprint, load_checkpoint, save_checkpoint
from .history import training_history
from .local import LocalPerturbation, draw_local, gaussian_effects, local_forward
from .perturb import (DATA_KEY, EVAL_KEY, TORCH_KEY, Perturbation, PerturbTarget, draw_perturbations, group_sizes,
                      perturb_targets, perturbed_forward, step_root)

Tensor = torch.Tensor
MODES = ("split", "direct", "local")
OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass(frozen=True, kw_only=True)
class HASGDConfig:
    """Validated training options of :func:`train_hasgd` (see there)."""

    samples: int = 8
    epochs: int = 10
    lr: float | Sequence[float] | Callable = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    optimizer: str | Callable = "sgd"
    mode: str = "split"
    adc_levels: int | None = None
    adc_percentile: float = 99.99
    perturb_batchnorm: bool = False
    eval_instances: int = 8
    n_calibration: int = 512

    def __post_init__(self):
        check_number("samples", self.samples, low=1, integer=True)
        check_number("epochs", self.epochs, low=0, integer=True)
        if not callable(self.lr) and not isinstance(self.lr, (list, tuple)):
            check_number("lr", self.lr, low=0.0)
        check_number("momentum", self.momentum, low=0.0, high=1.0)
        check_number("weight_decay", self.weight_decay, low=0.0)
        check_number("batch_size", self.batch_size, low=1, integer=True)
        check(callable(self.optimizer) or self.optimizer in OPTIMIZERS, "optimizer", self.optimizer,
              f"one of {OPTIMIZERS} or a callable(params) -> torch.optim.Optimizer")
        check(self.mode in MODES, "mode", self.mode, f"one of {MODES}")
        if self.adc_levels is not None:
            check_number("adc_levels", self.adc_levels, low=2, integer=True)
        check_number("adc_percentile", self.adc_percentile, low=50.0, high=100.0, low_open=True)
        check(isinstance(self.perturb_batchnorm, bool), "perturb_batchnorm", self.perturb_batchnorm, "true or false")
        check_number("eval_instances", self.eval_instances, low=0, integer=True)
        check_number("n_calibration", self.n_calibration, low=1, integer=True)


@dataclass(eq=False)
class TrainResult:
    """What :func:`train_hasgd` returns.

    Attributes
    ----------
    model : nn.Module
        The trained network (a new copy, eval mode); the user's model is never modified.
    history : xr.Dataset
        Dim ``epoch``: ``train_loss``, ``train_accuracy`` (at the perturbed weights the optimiser saw),
        ``eval_accuracy`` (float weights), ``eval_accuracy_q`` (mean over ``eval_instances`` chips of q),
        ``lr``, ``sigma_train``, ``epoch_time_s``; provenance and training attrs.
    optimizer_state : dict
        Final optimiser state dict.
    epoch, step : int
        Epochs completed and optimiser steps taken.
    completed : bool
        False when stopped early by ``stop_after_epoch``.
    seed_entropy : str
    """

    model: nn.Module
    history: xr.Dataset
    optimizer_state: dict
    epoch: int
    step: int
    completed: bool
    seed_entropy: str = field(default="")


def epoch_order(seed: SeedLike, epoch: int, n: int) -> np.ndarray:
    """Permutation of ``range(n)`` used as the data order of ``epoch`` (numpy Generator keyed by (seed, epoch))."""
    return np.random.default_rng(step_root(seed, DATA_KEY, epoch)).permutation(int(n))


def _per_epoch(value, epoch: int, field_name: str) -> float:
    if callable(value):
        v = value(epoch)
    elif isinstance(value, (list, tuple)):
        check(epoch < len(value), field_name, f"{len(value)} values", f"one value per epoch (epoch {epoch})")
        v = value[epoch]
    else:
        v = value
    check_number(f"{field_name}[epoch {epoch}]", float(v) if isinstance(v, (int, float, np.number)) else v, low=0.0)
    return float(v)


def _sigma_of(spec: HardwareSpec | None) -> float:
    if spec is None:
        return 0.0
    return next((float(e.sigma) for e in spec.program_effects if hasattr(e, "sigma")), math.nan)


def _make_optimizer(cfg: HASGDConfig, params, lr0: float) -> torch.optim.Optimizer:
    if callable(cfg.optimizer):
        return cfg.optimizer(params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr0, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=lr0, weight_decay=cfg.weight_decay)


def _norm_buffers(model: nn.Module) -> list[tuple[Tensor, Tensor]]:
    return [(b, b.clone()) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for b in m.buffers()]


def _correct(out: Tensor, y: Tensor) -> int:
    return int((out.argmax(-1) == y).sum()) if out.dim() == 2 and y.dim() == 1 else 0


def accumulate_gradient(model: nn.Module, x: Tensor, y: Tensor, pert: "Perturbation | LocalPerturbation | None",
                        targets: Sequence[PerturbTarget], *, mode: str = "split",
                        loss_fn: Callable = F.cross_entropy) -> tuple[float, int]:
    """Add the HA-SGD gradient of one mini-batch to the parameters' ``.grad``.

    ``direct``: ``mean_l grad J(w + dw_l; x)`` over ``L = pert.samples`` passes (BatchNorm running statistics are
    updated by the first pass only). ``split``: group g of ``G = min(L, N)`` contiguous groups of ``x`` ``[N, ...]``
    runs at ``w + dw_g``, one pass, gradient of the mean loss over the batch. ``pert`` a
    :class:`~anvm_stats.training.local.LocalPerturbation` (any ``mode``): the local-reparameterisation forward.
    ``pert`` None or noise-free: the plain gradient (identical to plain SGD).

    Returns
    -------
    (loss, n_correct) : (float, int)
        Mean loss (over draws in direct mode) and correct predictions (summed over draws in direct mode).
    """
    N = x.shape[0]
    if pert is None or pert.is_zero:
        out = model(x)
        loss = loss_fn(out, y)
        loss.backward()
        return float(loss.detach()), _correct(out, y)
    if mode == "split" or isinstance(pert, LocalPerturbation):
        G = min(pert.samples, N)
        with (local_forward(model, pert, group_sizes(N, G)) if isinstance(pert, LocalPerturbation) else
              perturbed_forward(model, pert.select(slice(0, G)), targets, group_sizes(N, G))):
            out = model(x)
        loss = loss_fn(out, y)
        loss.backward()
        return float(loss.detach()), _correct(out, y)
    L, total, correct, saved = pert.samples, 0.0, 0, None
    for l in range(L):
        if l == 1:
            saved = _norm_buffers(model)
        with perturbed_forward(model, pert.select(slice(l, l + 1)), targets, [N]):
            out = model(x)
        loss = loss_fn(out, y)
        (loss if L == 1 else loss / L).backward()
        total += float(loss.detach())
        correct += _correct(out, y)
    for buf, old in saved or ():
        buf.copy_(old)
    return total / L, correct


@torch.no_grad()
def _float_accuracy(model: nn.Module, data, device) -> float:
    was, correct, n = model.training, 0, 0
    model.eval()
    for x, y in iter_batches(data, 1024):
        correct += _correct(model(x.to(device)), y.to(device))
        n += int(y.shape[0])
    model.train(was)
    return correct / max(n, 1)


def train_hasgd(model: nn.Module, spec: HardwareSpec | None, data, *, samples: int = 8, epochs: int = 10,
                lr: float | Sequence[float] | Callable = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4,
                batch_size: int = 128, optimizer: str | Callable = "sgd", seed: SeedLike = 0, mode: str = "split",
                sigma_schedule: Sequence[float] | Callable | None = None, adc_levels: int | None = None,
                adc_percentile: float = 99.99, perturb_batchnorm: bool = False, layers: LayerFilter = None,
                loss_fn: Callable | None = None, checkpoint=None, stop_after_epoch: int | None = None,
                eval_data=None, eval_instances: int = 8, n_calibration: int = 512,
                progress: bool = True) -> TrainResult:
    """Train a copy of ``model`` with HA-SGD under the device model ``spec`` (paper 1's training distribution q).

    Parameters
    ----------
    model : nn.Module
        Initial network (never modified; a deep copy is trained on the device of its parameters).
    spec : HardwareSpec or None
        Training distribution q (may be wider or mean-shifted against the test chip). None: plain SGD.
    data : (x, y) tensors, Data, or iterable of (x, y) batches
        Training data. Tensors are reshuffled every epoch by :func:`epoch_order`; an iterable is used as given
        (exact resume then needs it to yield the same batches every epoch).
    samples : int
        L, draws per step.
    epochs : int
        Total epochs (a resumed run continues up to this).
    lr : float, list of float (per epoch) or callable(epoch) -> float
        Learning rate, set on every param group at the start of each epoch.
    momentum, weight_decay : float
        Of the default SGD (weight decay also for Adam/AdamW).
    batch_size : int
    optimizer : {"sgd", "adam", "adamw"} or callable(params) -> torch.optim.Optimizer
    seed : int, SeedSequence or None
        Root of every stream (None: fresh entropy, recorded; resuming reuses the checkpoint's).
    mode : {"split", "direct", "local"}
        See the module docstring; ``samples`` is the number of conv draws (groups) in ``local`` mode.
    sigma_schedule : list of float (per epoch) or callable(epoch) -> float, optional
        ``spec.with_knobs(noise_level=sigma)`` per epoch.
    adc_levels : int, optional
        Quantise analog layer outputs to this many levels in the loop (STE), ranges from an observer on the first
        ``n_calibration`` training samples, recalibrated every epoch; ``adc_percentile=100`` is min-max.
    perturb_batchnorm : bool
        Draw noise on the BN-folded layer (see :mod:`anvm_stats.training.perturb`).
    layers : list of module names or callable(name, module) -> bool, optional
        Analog layers (default every Linear / Conv1d / Conv2d).
    loss_fn : callable(out, y) -> scalar, optional
        Default cross-entropy.
    checkpoint : path, optional
        Written atomically after every epoch; an existing checkpoint of the same arguments is resumed.
    stop_after_epoch : int, optional
        Stop once this many epochs are complete (to interrupt a run on purpose, e.g. in tests).
    eval_data : data, optional
        Per-epoch ``eval_accuracy`` (float weights) and, with spec and ``eval_instances > 0``, ``eval_accuracy_q``
        (mean accuracy over ``eval_instances`` chips of the epoch's spec, the same chips every epoch).

    Returns
    -------
    TrainResult

    Raises
    ------
    ConfigError
        For invalid options, ``mode="split"`` or ``"local"`` with ``batch_size < samples``, ``mode="local"`` with
        a spec that is not unclipped additive Gaussian noise (the error names the effect), ``sigma_schedule``
        without a spec, or a checkpoint written with other arguments.
    """
    cfg = HASGDConfig(samples=samples, epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
                      batch_size=batch_size, optimizer=optimizer, mode=mode, adc_levels=adc_levels,
                      adc_percentile=adc_percentile, perturb_batchnorm=perturb_batchnorm,
                      eval_instances=eval_instances, n_calibration=n_calibration)
    check(isinstance(model, nn.Module), "model", type(model).__name__, "a torch.nn.Module")
    check(spec is None or isinstance(spec, HardwareSpec), "spec", type(spec).__name__,
          "an anvm_stats.HardwareSpec or None")
    check(spec is not None or sigma_schedule is None, "sigma_schedule", sigma_schedule, "None when spec is None")
    if spec is not None and mode == "local":
        gaussian_effects(spec)                    # refuses effects without a closed form, naming them
    if spec is not None and mode in ("split", "local"):
        check(batch_size >= samples, "batch_size", batch_size, f"at least samples={samples} in split mode")
    if stop_after_epoch is not None:
        check_number("stop_after_epoch", stop_after_epoch, low=0, integer=True)
    loss_fn = loss_fn or F.cross_entropy
    net = copy.deepcopy(model).train()
    device = next(net.parameters()).device
    args = {k: (v if not callable(v) else getattr(v, "__qualname__", repr(v))) for k, v in asdict(cfg).items()
            if k not in ("epochs", "eval_instances")}
    args.update(q=None if spec is None else spec.to_dict(), layers=repr(layers), model=model_label(model),
                data=describe(data), loss=getattr(loss_fn, "__qualname__", repr(loss_fn)),
                sigma_schedule=sigma_schedule if not callable(sigma_schedule) else sigma_schedule.__qualname__)
    state = load_checkpoint(checkpoint) if checkpoint is not None else None
    if seed is None and state is not None:
        seed = int(state["seed_entropy"])
    root = root_sequence(seed)
    args["seed_entropy"] = seed_entropy(root)
    fp = fingerprint(args)
    if state is not None and state["fingerprint"] != fp:
        load_checkpoint(checkpoint, fingerprint=fp)   # raises the ConfigError naming the mismatch
    targets = perturb_targets(net, layers=layers, perturb_batchnorm=perturb_batchnorm) \
        if (spec is not None or adc_levels is not None) else ()
    opt = _make_optimizer(cfg, net.parameters(), _per_epoch(lr, 0, "lr"))
    epoch0, step, rows = 0, 0, []
    if state is not None:
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        epoch0, step, rows = int(state["epoch"]), int(state["step"]), list(state["history"])
    adc = None
    if adc_levels is not None:
        adc = ADCInTheLoop(net, adc_points(net, [t.name for t in targets]), adc_levels, adc_percentile)
        calib_x = first_samples(data, n_calibration).to(device)
    tensors = as_tensors(data)
    if tensors is not None:
        x_all, y_all = tensors[0].to(device), tensors[1].to(device)
    last = epochs if stop_after_epoch is None else min(epochs, int(stop_after_epoch))
    from tqdm.auto import tqdm
    for epoch in tqdm(range(epoch0, last), desc="HA-SGD", disable=not progress):
        t0 = time.perf_counter()
        spec_e = spec if (spec is None or sigma_schedule is None) else spec.with_knobs(
            noise_level=_per_epoch(sigma_schedule, epoch, "sigma_schedule"))
        lr_e = _per_epoch(lr, epoch, "lr")
        for group in opt.param_groups:
            group["lr"] = lr_e
        if tensors is not None:
            order = torch.as_tensor(epoch_order(root, epoch, x_all.shape[0]), device=device)
            batches = ((x_all[order[i:i + batch_size]], y_all[order[i:i + batch_size]])
                       for i in range(0, x_all.shape[0], batch_size))
        else:
            batches = ((x.to(device), y.to(device)) for x, y in iter_batches(data))
        loss_sum, correct, n_samples, n_pred, n_steps = 0.0, 0, 0, 0, 0
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.random.manual_seed(int(step_root(root, TORCH_KEY, epoch).generate_state(1, np.uint32)[0]))
            if adc is not None:
                adc.calibrate(calib_x)    # train mode (dropout draws from the forked, seeded RNG)
            for x, y in batches:
                pert = None
                if spec_e is not None:
                    L = cfg.samples if mode == "direct" else min(cfg.samples, x.shape[0])
                    draw = draw_local if mode == "local" else draw_perturbations
                    pert = draw(net, spec_e, samples=L, seed=root, step=step, targets=targets)
                opt.zero_grad()
                with adc if adc is not None else contextlib.nullcontext():
                    loss, c = accumulate_gradient(net, x, y, pert, targets, mode=mode, loss_fn=loss_fn)
                opt.step()
                direct = mode == "direct" and pert is not None and not pert.is_zero
                loss_sum += loss * x.shape[0]
                correct += c
                n_samples += x.shape[0]
                n_pred += x.shape[0] * (pert.samples if direct else 1)
                step += 1
                n_steps += 1
        row = {"train_loss": loss_sum / n_samples if n_samples else math.nan,
               "train_accuracy": correct / n_pred if n_pred else math.nan,
               "eval_accuracy": math.nan, "eval_accuracy_q": math.nan, "lr": lr_e, "sigma_train": _sigma_of(spec_e),
               "epoch_time_s": 0.0, "steps": n_steps}
        if eval_data is not None:
            row["eval_accuracy"] = _float_accuracy(net, eval_data, device)
            if spec_e is not None and eval_instances > 0:
                from ..montecarlo import evaluate
                ds = evaluate(net, spec_e, eval_data, n_instances=eval_instances, seed=step_root(root, EVAL_KEY),
                              layers=layers, progress=False)
                row["eval_accuracy_q"] = float(ds[dims.ACCURACY].mean())
        row["epoch_time_s"] = time.perf_counter() - t0
        rows.append(row)
        if checkpoint is not None:
            save_checkpoint(checkpoint, fingerprint=fp, model_state=net.state_dict(), optimizer_state=opt.state_dict(),
                            epoch=epoch + 1, step=step, history=rows, seed_entropy=seed_entropy(root))
    done = len(rows)
    history = training_history(rows, model=model, spec=spec, data=data, root=root, device=device, cfg=cfg, mode=mode)
    return TrainResult(model=net.eval(), history=history, optimizer_state=opt.state_dict(), epoch=done, step=step,
                       completed=done >= epochs, seed_entropy=seed_entropy(root))
