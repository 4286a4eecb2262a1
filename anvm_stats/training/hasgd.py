"""Hessian-Aware SGD (paper 1, Algorithm 1): train so the network survives the device noise of a HardwareSpec.

Each optimiser step draws ``L`` weight perturbations ``dw_l ~ q`` from the hardware model
(:mod:`anvm_stats.training.perturb`), takes the gradient of ``J(w + dw_l; x)``, averages over ``l`` and hands the
mean to a torch optimiser, which updates ``w``. This minimises ``E_q[J(w + dw)] ~ J(w) + 1/2 sum_l sigma_l^2
range_l^2 tr(H_l)`` (plus mean-shift terms): a Hessian-trace penalty.

Three gradient estimators (``mode``; :mod:`anvm_stats.training.estimators`): ``"split"`` (default: the mini-batch
split into L groups, group g at draw g, one pass: cost near plain SGD's, needs ``batch_size >= L``), ``"direct"``
(L full passes, one per draw: exactly Algorithm 1, L times the cost) and ``"local"`` (local reparameterisation for
unclipped additive Gaussian q: per-sample closed-form pre-activation noise on Linear layers, convs as in split).

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
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from .. import dims
from ..analog.program import LayerFilter
from ..data_source import as_tensors, describe, first_samples, iter_batches
from ..errors import check, check_number
from ..hardware.spec import HardwareSpec
from ..montecarlo import evaluate
from ..provenance import model_label
from ..rng import SeedLike, root_sequence, seed_entropy
from .adc import ADCInTheLoop, adc_points
from .checkpoint import fingerprint, load_checkpoint, save_checkpoint
from .estimators import ESTIMATORS, GradientEstimator, gradient_estimator, n_correct
from .history import training_history
from .perturb import DATA_KEY, EVAL_KEY, TORCH_KEY, PerturbTarget, perturb_targets, step_root

Tensor = torch.Tensor
MODES = tuple(ESTIMATORS)
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
    perturb_batchnorm: bool = True
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


@torch.no_grad()
def _float_accuracy(model: nn.Module, data, device) -> float:
    was, correct, n = model.training, 0, 0
    model.eval()
    for x, y in iter_batches(data, 1024):
        correct += n_correct(model(x.to(device)), y.to(device))
        n += int(y.shape[0])
    model.train(was)
    return correct / max(n, 1)


def _evaluate_epoch(net: nn.Module, spec: HardwareSpec | None, data, *, n_instances: int, root, layers,
                    device) -> tuple[float, float]:
    """Accuracy of the float weights on ``data`` and the mean accuracy of ``n_instances`` chips of ``spec`` (the
    same chips every epoch; NaN without a spec or chips)."""
    acc_q = math.nan
    acc = _float_accuracy(net, data, device)
    if spec is not None and n_instances > 0:
        ds = evaluate(net, spec, data, n_instances=n_instances, seed=step_root(root, EVAL_KEY), layers=layers,
                      progress=False)
        acc_q = float(ds[dims.ACCURACY].mean())
    return acc, acc_q


def _run_fingerprint(cfg: HASGDConfig, *, spec, layers, model, data, loss_fn, sigma_schedule, root) -> str:
    """What a checkpoint must have been written with to be resumed (every argument that changes the run)."""
    args = {k: (v if not callable(v) else getattr(v, "__qualname__", repr(v))) for k, v in asdict(cfg).items()
            if k not in ("epochs", "eval_instances")}
    args.update(q=None if spec is None else spec.to_dict(), layers=repr(layers), model=model_label(model),
                data=describe(data), loss=getattr(loss_fn, "__qualname__", repr(loss_fn)),
                sigma_schedule=sigma_schedule if not callable(sigma_schedule) else sigma_schedule.__qualname__)
    args["seed_entropy"] = seed_entropy(root)
    return fingerprint(args)


def _epoch_batches(data, tensors, root, epoch: int, batch_size: int, device) -> Iterator[tuple[Tensor, Tensor]]:
    """Mini-batches of ``epoch``: tensors in the order :func:`epoch_order`, an iterable as given."""
    if tensors is None:
        return ((x.to(device), y.to(device)) for x, y in iter_batches(data))
    x_all, y_all = tensors
    order = torch.as_tensor(epoch_order(root, epoch, x_all.shape[0]), device=device)
    return ((x_all[order[i:i + batch_size]], y_all[order[i:i + batch_size]])
            for i in range(0, x_all.shape[0], batch_size))


def _train_epoch(net: nn.Module, opt: torch.optim.Optimizer, estimator: GradientEstimator, spec: HardwareSpec | None,
                 batches, *, targets: Sequence[PerturbTarget], adc: ADCInTheLoop | None, root, step: int,
                 loss_fn: Callable) -> tuple[dict, int]:
    """One pass over ``batches``, one optimiser step each; returns the epoch's sums and the next step index."""
    sums = {"loss": 0.0, "correct": 0, "samples": 0, "predictions": 0, "steps": 0}
    for x, y in batches:
        pert = None
        if spec is not None:
            pert = estimator.draw(net, spec, seed=root, step=step, targets=targets, batch=x.shape[0])
        opt.zero_grad()
        with adc if adc is not None else contextlib.nullcontext():
            loss, correct, predictions = estimator.accumulate(net, x, y, pert, targets, loss_fn)
        opt.step()
        sums["loss"] += loss * x.shape[0]
        sums["correct"] += correct
        sums["samples"] += x.shape[0]
        sums["predictions"] += predictions
        sums["steps"] += 1
        step += 1
    return sums, step


def _run_epoch(net: nn.Module, opt, estimator, spec: HardwareSpec | None, epoch: int, *, data, tensors, root,
               step: int, targets, adc, calib_x, loss_fn, lr, sigma_schedule, batch_size: int, eval_data,
               eval_instances: int, layers, device) -> tuple[dict, int]:
    """One epoch of :func:`train_hasgd`: the epoch's spec and learning rate, its batches, the steps (torch's RNG
    forked and seeded from the run's root, for dropout) and the per-epoch evaluation.

    Returns
    -------
    (row, step)
        The epoch's history row and the global step count after it.
    """
    t0 = time.perf_counter()
    spec_e = spec if (spec is None or sigma_schedule is None) else spec.with_knobs(
        noise_level=_per_epoch(sigma_schedule, epoch, "sigma_schedule"))
    lr_e = _per_epoch(lr, epoch, "lr")
    for group in opt.param_groups:
        group["lr"] = lr_e
    batches = _epoch_batches(data, tensors, root, epoch, batch_size, device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.random.manual_seed(int(step_root(root, TORCH_KEY, epoch).generate_state(1, np.uint32)[0]))
        if adc is not None:
            adc.calibrate(calib_x)    # train mode (dropout draws from the forked, seeded RNG)
        sums, step = _train_epoch(net, opt, estimator, spec_e, batches, targets=targets, adc=adc, root=root,
                                  step=step, loss_fn=loss_fn)
    row = {"train_loss": sums["loss"] / sums["samples"] if sums["samples"] else math.nan,
           "train_accuracy": sums["correct"] / sums["predictions"] if sums["predictions"] else math.nan,
           "eval_accuracy": math.nan, "eval_accuracy_q": math.nan, "lr": lr_e, "sigma_train": _sigma_of(spec_e),
           "epoch_time_s": 0.0, "steps": sums["steps"]}
    if eval_data is not None:
        row["eval_accuracy"], row["eval_accuracy_q"] = _evaluate_epoch(
            net, spec_e, eval_data, n_instances=eval_instances, root=root, layers=layers, device=device)
    row["epoch_time_s"] = time.perf_counter() - t0
    return row, step


def _took_steps(row: dict) -> bool:
    """True when the epoch took at least one step (an epoch without data has a NaN loss by construction)."""
    return row.get("steps", 0) > 0


def _checked_estimator(model, spec, cfg: HASGDConfig, sigma_schedule, stop_after_epoch):
    """The gradient estimator of ``cfg.mode`` after checking :func:`train_hasgd`'s arguments that the config does
    not (:class:`ConfigError` naming the argument)."""
    check(isinstance(model, nn.Module), "model", type(model).__name__, "a torch.nn.Module")
    check(spec is None or isinstance(spec, HardwareSpec), "spec", type(spec).__name__,
          "an anvm_stats.HardwareSpec or None")
    check(spec is not None or sigma_schedule is None, "sigma_schedule", sigma_schedule, "None when spec is None")
    estimator = gradient_estimator(cfg.mode, cfg.samples)
    if spec is not None:
        estimator.check(spec, cfg.batch_size)
    if stop_after_epoch is not None:
        check_number("stop_after_epoch", stop_after_epoch, low=0, integer=True)
    return estimator


def _restore(net: nn.Module, opt, state: dict | None) -> tuple[int, int, list]:
    """Load a checkpoint's model and optimizer state into ``net`` and ``opt``: ``(first epoch, step, history
    rows)``; ``(0, 0, [])`` without one."""
    if state is None:
        return 0, 0, []
    net.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    return int(state["epoch"]), int(state["step"]), list(state["history"])


def _resume(checkpoint, seed: SeedLike, cfg: HASGDConfig, **fingerprinted) -> tuple[dict | None, object, str]:
    """The checkpoint state to resume (None: a fresh run), the run's root ``SeedSequence`` (a resumed run without
    ``seed`` reuses the checkpoint's entropy) and the run's fingerprint; a checkpoint written with other arguments
    raises the ``ConfigError`` of :func:`load_checkpoint` naming the mismatch."""
    state = load_checkpoint(checkpoint) if checkpoint is not None else None
    if seed is None and state is not None:
        seed = int(state["seed_entropy"])
    root = root_sequence(seed)
    fp = _run_fingerprint(cfg, root=root, **fingerprinted)
    if state is not None and state["fingerprint"] != fp:
        load_checkpoint(checkpoint, fingerprint=fp)
    return state, root, fp


def _adc_in_the_loop(net: nn.Module, targets, cfg: HASGDConfig, data, device) -> tuple:
    """The ADC observer of the analog layers' outputs and its calibration inputs (the first ``n_calibration``
    training samples), or ``(None, None)`` without ``adc_levels``."""
    if cfg.adc_levels is None:
        return None, None
    adc = ADCInTheLoop(net, adc_points(net, [t.name for t in targets]), cfg.adc_levels, cfg.adc_percentile)
    return adc, first_samples(data, cfg.n_calibration).to(device)


def _check_finite(row: dict, epoch: int, optimizer, mode: str) -> None:
    """Raise ``FloatingPointError`` when an epoch that took steps ended with a non-finite training loss."""
    if not math.isfinite(row["train_loss"]) and _took_steps(row):
        raise FloatingPointError(f"HA-SGD diverged: training loss {row['train_loss']} in epoch {epoch} (lr "
                                 f"{row['lr']:g}, optimizer {optimizer!r}, mode {mode!r}); lower lr (strong "
                                 f"device noise, e.g. stuck-at faults, needs a smaller step)")


def train_hasgd(model: nn.Module, spec: HardwareSpec | None, data, *, samples: int = 8, epochs: int = 10,
                lr: float | Sequence[float] | Callable = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4,
                batch_size: int = 128, optimizer: str | Callable = "sgd", seed: SeedLike = 0, mode: str = "split",
                sigma_schedule: Sequence[float] | Callable | None = None, adc_levels: int | None = None,
                adc_percentile: float = 99.99, perturb_batchnorm: bool = True, layers: LayerFilter = None,
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
        Default True: for a layer followed by a BatchNorm, draw the noise on the BN-folded layer the chip holds and
        add it after the BatchNorm, so training sees the inference noise of the folded layer (per-channel variance
        and bias noise; :mod:`anvm_stats.training.perturb`). False perturbs the unfolded layer inside the
        BatchNorm (per-channel noise off by the channel's BN scale, no bias noise), for comparison.
    layers : list of module names or callable(name, module) -> bool, optional
        Analog layers (default those :func:`anvm_stats.analog.prepare` makes analog: Linear, Conv, attention,
        recurrent; their arrays perturbed as the engine maps them).
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
    FloatingPointError
        When an epoch's training loss is not finite (the run diverged), naming the epoch and learning rate.
    ConfigError
        For invalid options, ``mode="split"`` or ``"local"`` with ``batch_size < samples``, ``mode="local"`` with
        a spec that is not unclipped additive Gaussian noise (the error names the effect), ``sigma_schedule``
        without a spec, or a checkpoint written with other arguments.
    """
    cfg = HASGDConfig(samples=samples, epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
                      batch_size=batch_size, optimizer=optimizer, mode=mode, adc_levels=adc_levels,
                      adc_percentile=adc_percentile, perturb_batchnorm=perturb_batchnorm,
                      eval_instances=eval_instances, n_calibration=n_calibration)
    estimator = _checked_estimator(model, spec, cfg, sigma_schedule, stop_after_epoch)
    loss_fn = loss_fn or F.cross_entropy
    net = copy.deepcopy(model).train()
    device = next(net.parameters()).device
    state, root, fp = _resume(checkpoint, seed, cfg, spec=spec, layers=layers, model=model, data=data,
                              loss_fn=loss_fn, sigma_schedule=sigma_schedule)
    targets = perturb_targets(net, layers=layers, perturb_batchnorm=perturb_batchnorm) \
        if (spec is not None or adc_levels is not None) else ()
    opt = _make_optimizer(cfg, net.parameters(), _per_epoch(lr, 0, "lr"))
    epoch0, step, rows = _restore(net, opt, state)
    adc, calib_x = _adc_in_the_loop(net, targets, cfg, data, device)
    tensors = as_tensors(data)
    if tensors is not None:
        tensors = tensors[0].to(device), tensors[1].to(device)
    last = epochs if stop_after_epoch is None else min(epochs, int(stop_after_epoch))
    for epoch in tqdm(range(epoch0, last), desc="HA-SGD", disable=not progress):
        row, step = _run_epoch(net, opt, estimator, spec, epoch, data=data, tensors=tensors, root=root, step=step,
                               targets=targets, adc=adc, calib_x=calib_x, loss_fn=loss_fn, lr=lr,
                               sigma_schedule=sigma_schedule, batch_size=batch_size, eval_data=eval_data,
                               eval_instances=eval_instances, layers=layers, device=device)
        _check_finite(row, epoch, optimizer, mode)
        rows.append(row)
        if checkpoint is not None:
            save_checkpoint(checkpoint, fingerprint=fp, model_state=net.state_dict(), optimizer_state=opt.state_dict(),
                            epoch=epoch + 1, step=step, history=rows, seed_entropy=seed_entropy(root))
    done = len(rows)
    history = training_history(rows, model=model, spec=spec, data=data, root=root, device=device, cfg=cfg, mode=mode)
    return TrainResult(model=net.eval(), history=history, optimizer_state=opt.state_dict(), epoch=done, step=step,
                       completed=done >= epochs, seed_entropy=seed_entropy(root))
