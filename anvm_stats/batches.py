"""Evaluation batches: the data of a Monte Carlo run as device tensors, with its sample and class counts.

One helper for every engine loop that scores chips (:func:`anvm_stats.montecarlo.sweep`, the drift sweep, the
per-chip calibration), so they cut, move and count the evaluation data the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .analog.program import AnalogProgram
from .checks import input_dtype
from .data_source import iter_batches
from .errors import ConfigError

Tensor = torch.Tensor
#: samples per forward when none is given
DEFAULT_SAMPLES_PER_BATCH = 1024


@dataclass(frozen=True, eq=False)
class EvaluationBatches:
    """The evaluation data of one run, on the program's device.

    Attributes
    ----------
    batches : list of (Tensor, Tensor)
        ``(x, y)`` pairs: ``x`` inputs as the program reads them (:meth:`AnalogProgram.input`; float32, or
        integer inputs such as token ids in their own dtype, :func:`~anvm_stats.checks.input_dtype`), ``y``
        int64 labels ``[B]`` (``[B, L...]`` for token labels), or float32 targets (metrics of other targets).
    n_samples : int
        Samples over all batches.
    n_classes : int
        Outputs of the network (logits per sample).
    """

    batches: list
    n_samples: int
    n_classes: int

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def evaluation_batches(program: AnalogProgram, data, samples_per_batch: int | None = None, *,
                       name: str = "data") -> EvaluationBatches:
    """Cut ``data`` into batches of ``samples_per_batch`` (default :data:`DEFAULT_SAMPLES_PER_BATCH`) on the
    program's device, and learn the class count from one nominal forward of one sample.

    Parameters
    ----------
    program : AnalogProgram
    data : (x, y) tensors, Data, or iterable of (x, y) batches
        An iterable keeps its own batch boundaries.
    samples_per_batch : int, optional
    name : str
        The argument's name in errors.

    Raises
    ------
    ConfigError
        When ``data`` holds no sample.
    """
    dev = program.device
    batches = [(program.input(x.to(dev, input_dtype(x))),
                y.to(dev, torch.float32 if y.is_floating_point() else torch.int64))
               for x, y in iter_batches(data, samples_per_batch or DEFAULT_SAMPLES_PER_BATCH)]
    if not batches:
        raise ConfigError(name, "empty", "at least one sample")
    n_samples = sum(int(x.shape[0]) for x, _ in batches)
    program.load(program.g0[None], B=1)
    try:
        with torch.no_grad():
            n_classes = int(program.module(batches[0][0][:1]).shape[-1])   # one sample is enough to learn C
    finally:
        program.unload()
    return EvaluationBatches(batches, n_samples, n_classes)
