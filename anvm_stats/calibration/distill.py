"""Knowledge distillation under the device statistics (paper 2): a student learns from a float teacher while its
weights are perturbed by chips drawn from a hardware model ``spec``.

Each step draws ``samples`` chips from ``spec`` (in the style of HA-SGD, paper 1): for every Linear/Conv layer the
augmented weights ``W~ = [W, b/s]`` are encoded with ``spec.mapping``, every device effect of ``spec`` is applied to the
conductances, and the decoded weights give a perturbation ``dW`` (computed without gradient). The loss

    alpha * T^2 * KL(softmax(t / T) || softmax(s(W + dW) / T)) + (1 - alpha) * CE(s(W + dW), y)

is averaged over the ``samples`` draws and its gradient with respect to ``W`` (straight through ``dW``) is handed
to the optimiser. Periphery (DAC/ADC) is not simulated in training.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn
from torch.func import functional_call

from .. import dims
from ..analog.program import ANALOG_TYPES, augmented_weights
from ..data_source import as_tensors, iter_batches
from ..errors import ConfigError, check, check_number
from ..hardware.spec import HardwareSpec
from ..rng import SeedLike, Stream, instance_seed, instance_sequence, root_sequence, torch_generator

Tensor = torch.Tensor
OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """Settings of :func:`train_distilled` (see its docstring)."""

    samples: int = 4
    temperature: float = 4.0
    alpha: float = 0.9
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0

    def __post_init__(self):
        check_number("samples", self.samples, low=1, integer=True)
        check_number("temperature", self.temperature, low=0.0, low_open=True)
        check_number("alpha", self.alpha, low=0.0, high=1.0)
        check_number("epochs", self.epochs, low=1, integer=True)
        check_number("lr", self.lr, low=0.0, low_open=True)
        check_number("batch_size", self.batch_size, low=1, integer=True)
        check(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"one of {OPTIMIZERS}")
        check_number("momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        check_number("weight_decay", self.weight_decay, low=0.0)


@dataclass(frozen=True, eq=False)
class DistillResult:
    """Outcome of :func:`train_distilled`.

    Attributes
    ----------
    model : nn.Module
        The trained student (a copy; eval mode).
    history : xr.Dataset
        Dim ``epoch`` (1..epochs): ``loss`` (total), ``kd_loss``, ``ce_loss`` and ``accuracy`` (training
        accuracy of the perturbed student), means over the epoch's steps and draws.
    config : DistillConfig
    """

    model: nn.Module
    history: xr.Dataset
    config: DistillConfig


@torch.no_grad()
def weight_perturbation(model: nn.Module, spec: HardwareSpec, generator: torch.Generator) -> dict[str, Tensor]:
    """One chip of ``spec`` as additive perturbations of ``model``'s analog-capable parameters.

    Parameters
    ----------
    model : nn.Module
        Not modified.
    spec : HardwareSpec
        Mapping, bounds, bias mode and device effects (program and read phase, in order) of the chip.
    generator : torch.Generator
        Source of every random draw.

    Returns
    -------
    dict of parameter name -> Tensor
        ``dW`` of the shape of each Linear/Conv1d/Conv2d weight (and ``db`` of its bias when the bias is a
        crossbar column): decoded noisy weights minus decoded nominal weights (exactly 0 without device effects).
    """
    out = {}
    bounds = spec.bounds
    for name, m in model.named_modules():
        if type(m) not in ANALOG_TYPES:
            continue
        w = m.weight.detach().reshape(m.weight.shape[0], -1)
        b = None if m.bias is None else m.bias.detach()
        w_aug, s, mode = augmented_weights(w, b, spec.bias)
        enc = spec.mapping.encode(w_aug, bounds)
        g = enc.g.reshape(1, -1)
        for eff in spec.effects:
            draws = eff.draw(g.shape[-1], generator, device=g.device, dtype=g.dtype)
            g = eff.apply(g, {k: v[None] for k, v in draws.items()}, bounds)
        dw = enc.decode(g.view_as(enc.g)) - enc.decode(enc.g)
        prefix = f"{name}." if name else ""
        out[prefix + "weight"] = dw[:, :w.shape[1]].reshape(m.weight.shape)
        if mode == "column":
            out[prefix + "bias"] = dw[:, w.shape[1]] * s
    return out


def _kd_terms(student_logits: Tensor, teacher_logits: Tensor, y: Tensor, T: float) -> tuple[Tensor, Tensor]:
    kd = F.kl_div(F.log_softmax(student_logits / T, -1), F.log_softmax(teacher_logits / T, -1),
                  log_target=True, reduction="batchmean") * (T * T)
    return kd, F.cross_entropy(student_logits, y)


def train_distilled(model: nn.Module, spec: HardwareSpec, data, *, teacher: nn.Module, samples: int = 4,
                    temperature: float = 4.0, alpha: float = 0.9, epochs: int = 10, lr: float = 1e-3,
                    batch_size: int = 64, seed: SeedLike = 0, optimizer: str = "adam", momentum: float = 0.9,
                    weight_decay: float = 0.0) -> DistillResult:
    """Train a copy of ``model`` (the student) to match ``teacher`` while its weights are perturbed by chips drawn
    from ``spec``.

    Parameters
    ----------
    model : nn.Module
        Initial student (not modified; a copy is trained).
    spec : HardwareSpec
        Hardware model the perturbations come from (``devices.preset("ideal")``: plain distillation).
    data : (x, y) tensors or Data (reshuffled every epoch) or an iterable of (x, y) batches (used as is)
        Training data.
    teacher : nn.Module
        Float teacher (not modified; evaluated in eval mode, unperturbed).
    samples, temperature, alpha, epochs, lr, batch_size, optimizer, momentum, weight_decay
        See :class:`DistillConfig`; ``alpha`` weighs the KD term against cross-entropy on the labels.
    seed : int, SeedSequence or None
        Shuffling and perturbations come from streams of it (``Stream.TRAIN``); the global RNG is not used.

    Returns
    -------
    DistillResult
    """
    cfg = DistillConfig(samples=samples, temperature=temperature, alpha=alpha, epochs=epochs, lr=lr,
                        batch_size=batch_size, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay)
    if not isinstance(spec, HardwareSpec):
        raise ConfigError("spec", type(spec).__name__, "an anvm_stats.HardwareSpec")
    root = root_sequence(seed)
    gen = torch_generator(instance_seed(root, 0, Stream.TRAIN))
    shuffle = np.random.default_rng(instance_sequence(root, 1, Stream.TRAIN))
    net = copy.deepcopy(model).train()
    teacher = copy.deepcopy(teacher).eval()
    params = dict(net.named_parameters())
    opt = (torch.optim.Adam(params.values(), lr=lr, weight_decay=weight_decay) if optimizer == "adam" else
           torch.optim.SGD(params.values(), lr=lr, momentum=momentum, weight_decay=weight_decay))
    tensors = as_tensors(data)
    hist = {k: np.zeros(epochs) for k in ("loss", "kd_loss", "ce_loss", "accuracy")}
    for ep in range(epochs):
        if tensors is not None:
            perm = torch.as_tensor(shuffle.permutation(tensors[0].shape[0]))
            batches = ((tensors[0][perm[i:i + batch_size]], tensors[1][perm[i:i + batch_size]])
                       for i in range(0, len(perm), batch_size))
        else:
            batches = iter_batches(data)
        sums, n_steps = dict.fromkeys(hist, 0.0), 0
        for x, y in batches:
            x, y = x.float(), y.long()
            with torch.no_grad():
                t_logits = teacher(x)
            opt.zero_grad(set_to_none=True)
            for _ in range(samples):
                dw = weight_perturbation(net, spec, gen)
                noisy = {k: (p + dw[k] if k in dw else p) for k, p in params.items()}
                logits = functional_call(net, noisy, (x,))
                kd, ce = _kd_terms(logits, t_logits, y, temperature)
                loss = alpha * kd + (1 - alpha) * ce
                (loss / samples).backward()
                for k, v in (("loss", loss), ("kd_loss", kd), ("ce_loss", ce)):
                    sums[k] += float(v.detach()) / samples
                sums["accuracy"] += float((logits.detach().argmax(-1) == y).float().mean()) / samples
            opt.step()
            n_steps += 1
        if n_steps == 0:
            raise ConfigError("data", "empty", "at least one batch")
        for k in hist:
            hist[k][ep] = sums[k] / n_steps
    net.eval()
    history = xr.Dataset({k: (dims.EPOCH, v) for k, v in hist.items()},
                         coords={dims.EPOCH: np.arange(1, epochs + 1)},
                         attrs={"hardware_spec": spec.to_json(), "seed_entropy": str(root.entropy),
                                **{k: str(getattr(cfg, k)) for k in cfg.__dataclass_fields__}})
    return DistillResult(model=net, history=history, config=cfg)
