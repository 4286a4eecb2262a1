"""HA-SGD's gradient estimators, one per mode: how a step draws from the training spec and turns a mini-batch into
a gradient of ``E_q[J(w + dw)]``.

``direct`` (:class:`DirectGradient`)
    L full forward/backward passes over the mini-batch, one per draw: exactly Algorithm 1 of paper 1.
``split`` (:class:`SplitGradient`)
    The mini-batch is split into ``G = min(L, N)`` contiguous groups, group g sees draw g, in one forward/backward
    (:mod:`anvm_stats.training.grouped`).
``local`` (:class:`LocalGradient`)
    Local reparameterisation (:mod:`anvm_stats.training.local`): every sample of a Linear layer gets its own
    closed-form Gaussian pre-activation noise; conv layers as in ``split``.

Every estimator adds its gradient to the parameters' ``.grad`` and reports ``(loss, n_correct, n_predictions)``; a
noise-free (or absent) perturbation gives the plain gradient, identical to plain SGD (:func:`plain_gradient`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, check, check_number
from ..hardware.spec import HardwareSpec
from ..rng import SeedLike
from .grouped import group_sizes, perturbed_forward
from .gaussian_form import gaussian_effects
from .local import LocalPerturbation, draw_local, local_forward
from .perturb import Perturbation, PerturbTarget, draw_perturbations

Tensor = torch.Tensor
#: what one mini-batch reports: mean loss, correct predictions, predictions made
StepStats = tuple[float, int, int]


def n_correct(out: Tensor, y: Tensor) -> int:
    """Correct top-1 predictions of logits ``out`` ``[N, C]`` for labels ``y`` ``[N]`` (0 for other shapes)."""
    return int((out.argmax(-1) == y).sum()) if out.dim() == 2 and y.dim() == 1 else 0


def plain_gradient(model: nn.Module, x: Tensor, y: Tensor, loss_fn: Callable = F.cross_entropy) -> StepStats:
    """Add the gradient of ``loss_fn(model(x), y)`` at the unperturbed weights (plain SGD's)."""
    out = model(x)
    loss = loss_fn(out, y)
    loss.backward()
    return float(loss.detach()), n_correct(out, y), int(x.shape[0])


class GradientEstimator(ABC):
    """One HA-SGD mode with ``samples`` (L) draws per step.

    Parameters
    ----------
    samples : int >= 1
    """

    mode: ClassVar[str]

    def __init__(self, samples: int):
        check_number("samples", samples, low=1, integer=True)
        self.samples = int(samples)

    def check(self, spec: HardwareSpec, batch_size: int) -> None:
        """Refuse a spec or batch size this mode cannot train with (:class:`~anvm_stats.errors.ConfigError`)."""
        check(batch_size >= self.samples, "batch_size", batch_size, f"at least samples={self.samples} in "
                                                                    f"{self.mode} mode")

    def n_draws(self, batch: int) -> int:
        """Draws of one step on a mini-batch of ``batch`` samples."""
        return min(self.samples, batch)

    def draw(self, model: nn.Module, spec: HardwareSpec, *, seed: SeedLike, step: int,
             targets: Sequence[PerturbTarget], batch: int) -> Perturbation | LocalPerturbation:
        """The perturbation of optimiser step ``step`` (a pure function of ``(seed, step)`` and the weights)."""
        return draw_perturbations(model, spec, samples=self.n_draws(batch), seed=seed, step=step, targets=targets)

    def accumulate(self, model: nn.Module, x: Tensor, y: Tensor, pert: Perturbation | LocalPerturbation | None,
                   targets: Sequence[PerturbTarget], loss_fn: Callable = F.cross_entropy) -> StepStats:
        """Add this mode's gradient of the mini-batch ``x`` ``[N, ...]``, ``y`` ``[N]`` to the parameters'
        ``.grad``; ``pert`` None or noise-free: :func:`plain_gradient`.

        Returns
        -------
        (loss, n_correct, n_predictions)
            Mean loss (over the draws in ``direct`` mode) and correct predictions out of ``n_predictions``.
        """
        if pert is None or pert.is_zero:
            return plain_gradient(model, x, y, loss_fn)
        return self._perturbed(model, x, y, pert, targets, loss_fn)

    @abstractmethod
    def _perturbed(self, model, x, y, pert, targets, loss_fn) -> StepStats:
        """:meth:`accumulate` for a perturbation with noise."""


class SplitGradient(GradientEstimator):
    """Group g of ``G = min(L, N)`` contiguous groups of the batch runs at ``w + dw_g``; one pass, the gradient of
    the mean loss over the batch."""

    mode = "split"

    def _perturbed(self, model, x, y, pert, targets, loss_fn) -> StepStats:
        N = x.shape[0]
        G = min(pert.samples, N)
        with perturbed_forward(model, pert.select(slice(0, G)), targets, group_sizes(N, G)):
            out = model(x)
        loss = loss_fn(out, y)
        loss.backward()
        return float(loss.detach()), n_correct(out, y), int(N)


class DirectGradient(GradientEstimator):
    """``mean_l grad J(w + dw_l; x)`` over ``L`` passes of the whole batch (BatchNorm running statistics are
    updated by the first pass only)."""

    mode = "direct"

    def check(self, spec: HardwareSpec, batch_size: int) -> None:
        pass                              # any batch size: every draw sees the whole batch

    def n_draws(self, batch: int) -> int:
        return self.samples

    def _perturbed(self, model, x, y, pert, targets, loss_fn) -> StepStats:
        N = x.shape[0]
        L, total, correct, saved = pert.samples, 0.0, 0, None
        for l in range(L):
            if l == 1:
                saved = [(b, b.clone()) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                         for b in m.buffers()]
            with perturbed_forward(model, pert.select(slice(l, l + 1)), targets, [N]):
                out = model(x)
            loss = loss_fn(out, y)
            (loss if L == 1 else loss / L).backward()
            total += float(loss.detach())
            correct += n_correct(out, y)
        for buf, old in saved or ():
            buf.copy_(old)
        return total / L, correct, int(N) * L


class LocalGradient(GradientEstimator):
    """Local reparameterisation on the Linear layers (per-sample closed-form Gaussian pre-activation noise), the
    ``split`` forward on the convs (``G = min(L, N)`` groups)."""

    mode = "local"

    def check(self, spec: HardwareSpec, batch_size: int) -> None:
        gaussian_effects(spec)           # refuses effects without a closed form, naming them
        super().check(spec, batch_size)

    def draw(self, model, spec, *, seed, step, targets, batch) -> LocalPerturbation:
        return draw_local(model, spec, samples=self.n_draws(batch), seed=seed, step=step, targets=targets)

    def _perturbed(self, model, x, y, pert, targets, loss_fn) -> StepStats:
        if not isinstance(pert, LocalPerturbation):
            raise ConfigError("pert", type(pert).__name__, "a LocalPerturbation (draw_local) in local mode")
        N = x.shape[0]
        with local_forward(model, pert, group_sizes(N, min(pert.samples, N))):
            out = model(x)
        loss = loss_fn(out, y)
        loss.backward()
        return float(loss.detach()), n_correct(out, y), int(N)


#: mode -> estimator class
ESTIMATORS: dict[str, type[GradientEstimator]] = {c.mode: c for c in (SplitGradient, DirectGradient, LocalGradient)}


def gradient_estimator(mode: str, samples: int) -> GradientEstimator:
    """The estimator of ``mode`` (one of :data:`ESTIMATORS`) with ``samples`` draws per step."""
    check(mode in ESTIMATORS, "mode", mode, f"one of {tuple(ESTIMATORS)}")
    return ESTIMATORS[mode](samples)


__all__ = ["GradientEstimator", "SplitGradient", "DirectGradient", "LocalGradient", "ESTIMATORS",
           "gradient_estimator", "plain_gradient", "n_correct", "StepStats"]
