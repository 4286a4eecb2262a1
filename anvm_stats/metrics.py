"""What a Monte Carlo run measures on each chip: :class:`Metric` descriptions and the built-in ones.

A metric is a per-sample function ``(outputs, targets) -> values`` (``outputs`` ``[N, ...]`` as the network returns
them, ``targets`` ``[N, ...]`` as the data holds them, ``values`` ``[N]``), reduced per chip instance over the
samples of the evaluation data: ``"mean"`` (the chip's value is the mean per-sample value) or ``"exp_mean"``
(``exp`` of that mean: perplexity from per-sample mean negative log-likelihoods). Sequence outputs reduce over
their tokens inside the per-sample function (``outputs`` ``[N, L, V]`` and ``targets`` ``[N, L]`` for a language
model: the built-ins average over the ``L`` tokens), then over samples.

``evaluate`` / ``sweep`` / ``evaluate_until`` take ``metrics=[...]``: :class:`Metric` objects, names of built-ins
(:data:`BUILTIN`), or plain callables (named after the function, reduced by ``"mean"``); each becomes a Dataset
variable of dims ``(*grid, instance)``, so every interval of :mod:`anvm_stats.stats` applies to it. Without
``metrics`` a classifier's run reports accuracy, loss and top-5 accuracy as it always did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError

Tensor = torch.Tensor
#: how per-sample values become a chip's value
REDUCTIONS = ("mean", "exp_mean")


@dataclass(frozen=True, eq=False)
class Metric:
    """A per-chip measurement.

    Parameters
    ----------
    name : str
        The Dataset variable (a Python identifier).
    fn : callable(outputs, targets) -> Tensor [N]
        Per-sample values of a batch of ``N`` samples (any float dtype; summed in float64).
    reduction : {"mean", "exp_mean"}
        The chip's value: the mean per-sample value, or ``exp`` of it.
    higher_is_better : bool
        Direction of the metric (recorded in the variable's attrs; reports and yields read it).
    class_labels : bool
        Whether ``targets`` must be integer class indices into the outputs' last dim (checked before work).
    long_name, units : str
        Recorded in the variable's attrs.
    bounds : (float, float)
        Range every chip's value lies in (``(-inf, inf)`` when unbounded): the ``bounds`` a betting interval of
        its mean needs (:func:`anvm_stats.stats.mean`, :func:`anvm_stats.evaluate_until`).
    """

    name: str
    fn: Callable[[Tensor, Tensor], Tensor]
    reduction: str = "mean"
    higher_is_better: bool = True
    class_labels: bool = False
    long_name: str = ""
    units: str = "1"
    bounds: tuple = (-math.inf, math.inf)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigError("Metric.name", self.name, "a Python identifier (the Dataset variable's name)")
        if not callable(self.fn):
            raise ConfigError(f"Metric({self.name}).fn", type(self.fn).__name__,
                              "a callable (outputs, targets) -> per-sample values [N]")
        if self.reduction not in REDUCTIONS:
            raise ConfigError(f"Metric({self.name}).reduction", self.reduction, f"one of {REDUCTIONS}")
        for flag in ("higher_is_better", "class_labels"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"Metric({self.name}).{flag}", getattr(self, flag), "true or false")
        lo, hi = self.bounds
        if not lo < hi:
            raise ConfigError(f"Metric({self.name}).bounds", self.bounds, "(low, high) with low < high")

    def per_sample(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """``fn`` checked: values ``[N]`` for ``N = outputs.shape[0]`` samples."""
        v = self.fn(outputs, targets)
        n = outputs.shape[0]
        if not isinstance(v, Tensor) or tuple(v.shape) != (n,):
            raise ConfigError(f"metrics.{self.name}", f"a value of shape {list(getattr(v, 'shape', []))}",
                              f"per-sample values of shape [{n}] (one per sample of outputs [{n}, ...])")
        return v

    def reduce(self, mean):
        """The chip's value from the mean per-sample value (an array or float)."""
        if self.reduction == "exp_mean":
            return np.exp(mean)
        return mean


def _tokens(outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Scores ``[N, T, C]`` and labels ``[N, T]`` of every token (``T = 1`` for a classifier's ``[N, C]``)."""
    n, c = outputs.shape[0], outputs.shape[-1]
    return outputs.reshape(n, -1, c), targets.reshape(n, -1).long()


def token_correct(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample fraction of tokens whose largest score is the label (``argmax``, first index on ties) ``[N]``."""
    s, y = _tokens(outputs, targets)
    return (s.argmax(-1) == y).double().mean(1)


def token_top5(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample fraction of tokens whose label ranks among the 5 largest scores ``[N]`` (ties rank by index)."""
    s, y = _tokens(outputs, targets)
    true = s.gather(-1, y.unsqueeze(-1))
    earlier = torch.arange(s.shape[-1], device=s.device) < y.unsqueeze(-1)
    rank = ((s > true) | ((s == true) & earlier)).sum(-1)
    return (rank < 5).double().mean(1)


def token_cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample mean cross-entropy (nat) of the tokens' scores against their labels ``[N]``."""
    s, y = _tokens(outputs, targets)
    return F.cross_entropy(s.float().transpose(1, 2), y, reduction="none").double().mean(1)


def squared_error(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample mean squared error over every output of the sample ``[N]``."""
    d = outputs.double().reshape(outputs.shape[0], -1) - targets.double().reshape(targets.shape[0], -1)
    return (d * d).mean(1)


ACCURACY = Metric("accuracy", token_correct, higher_is_better=True, class_labels=True, long_name="top-1 accuracy",
                  bounds=(0.0, 1.0))
TOP5_ACCURACY = Metric("top5_accuracy", token_top5, higher_is_better=True, class_labels=True,
                       long_name="top-5 accuracy", bounds=(0.0, 1.0))
CROSS_ENTROPY = Metric("loss", token_cross_entropy, higher_is_better=False, class_labels=True,
                       long_name="mean cross-entropy loss", units="nat", bounds=(0.0, math.inf))
PERPLEXITY = Metric("perplexity", token_cross_entropy, reduction="exp_mean", higher_is_better=False,
                    class_labels=True, long_name="perplexity (exp of the mean per-sample token cross-entropy)",
                    bounds=(1.0, math.inf))
MSE = Metric("mse", squared_error, higher_is_better=False, long_name="mean squared error", bounds=(0.0, math.inf))

def token_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over every token of a batch (a training loss): ``F.cross_entropy`` of scores
    ``[N, L..., C]`` against labels ``[N, L...]`` (for ``[N, C]`` and ``[N]`` the same value as
    ``F.cross_entropy``)."""
    return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))


#: built-in metrics by name (``"cross_entropy"`` is the ``loss`` variable)
BUILTIN = {"accuracy": ACCURACY, "top5_accuracy": TOP5_ACCURACY, "top5": TOP5_ACCURACY, "loss": CROSS_ENTROPY,
           "cross_entropy": CROSS_ENTROPY, "perplexity": PERPLEXITY, "mse": MSE}
#: variable names a metric may not take (engine variables and dims)
RESERVED = ("correct_count", "instance", "layer", "quantile", "ci_bound")


def resolve_metrics(metrics: Iterable | None, field: str = "metrics") -> tuple[Metric, ...] | None:
    """``metrics`` as :class:`Metric` objects: each item a Metric, a name of :data:`BUILTIN`, or a callable
    (``Metric(fn.__name__, fn)``); ``None`` stays ``None`` (a classifier's default variables).

    Raises
    ------
    ConfigError
        For an unknown name, a non-callable item, duplicate or reserved names, or an empty list.
    """
    if metrics is None:
        return None
    if isinstance(metrics, (str, Metric)) or callable(metrics):
        metrics = [metrics]
    out = []
    for i, m in enumerate(metrics):
        if isinstance(m, str):
            if m not in BUILTIN:
                raise ConfigError(f"{field}[{i}]", m, f"a Metric, a callable or a built-in: one of {sorted(BUILTIN)}")
            m = BUILTIN[m]
        elif not isinstance(m, Metric):
            if not callable(m):
                raise ConfigError(f"{field}[{i}]", type(m).__name__,
                                  f"a Metric, a callable or a built-in: one of {sorted(BUILTIN)}")
            m = Metric(getattr(m, "__name__", "metric"), m)
        if m.name in RESERVED:
            raise ConfigError(f"{field}[{i}]", m.name, f"a name other than {RESERVED}")
        out.append(m)
    if not out:
        raise ConfigError(field, [], "at least one metric (or None for the defaults)")
    names = [m.name for m in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(field, names, f"distinct variable names (repeated: {dup})")
    return tuple(out)
