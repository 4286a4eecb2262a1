"""Checks that catch silent nonsense before and after a Monte Carlo run: data the model cannot take (wrong input
size or dtype, labels outside its outputs, float labels, NaN/inf inputs) and non-finite metrics in a result.
Floating inputs run in float32; integer inputs (token ids) keep their dtype (:func:`input_dtype`).

:func:`check_model_data` runs one float forward pass on the first sample, so the message names the field and
the shapes instead of a matmul error deep inside the engine. :func:`flag_nonfinite` counts NaN/inf cells of a
result Dataset, records the count in its attrs and warns.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import torch
import xarray as xr
from torch import nn

from . import dims
from .data_source import as_tensors
from .errors import ConfigError

#: bytes of result per chip and grid point (accuracy, loss, correct count and one more float64 variable)
RESULT_BYTES_PER_CELL = 4 * 8
#: attr of a result Dataset: ``{variable: number of NaN/inf cells}`` for every variable that has any
NONFINITE_ATTR = "nonfinite_cells"


def memory_bytes() -> int | None:
    """Physical memory of this machine in bytes (``None`` where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_labels(y: torch.Tensor, n_classes: int, field: str = "data.y") -> None:
    """Refuse labels that are not integers in ``[0, n_classes)`` (float labels are never truncated).

    Parameters
    ----------
    y : Tensor [N]
        Class labels.
    n_classes : int
        Number of classes the model scores (its output width).
    """
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ConfigError(field, f"dtype {y.dtype}", "integer class labels (float labels are not truncated)")
    if y.numel():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= n_classes:
            raise ConfigError(field, f"labels in [{lo}, {hi}]",
                              f"labels in [0, {n_classes - 1}] (the model has {n_classes} outputs)")


def input_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the engine feeds inputs ``x`` in: float32 for real floating inputs, integer (and boolean) inputs
    as they are (token ids for ``nn.Embedding``)."""
    return torch.float32 if x.is_floating_point() else x.dtype


def check_inputs(x: torch.Tensor, field: str = "data.x") -> None:
    """Refuse inputs holding NaN or inf (they would be scored as wrong answers, silently)."""
    if x.is_floating_point() and x.numel():
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise ConfigError(field, f"{bad} NaN/inf value(s)", "finite inputs")


@torch.no_grad()
def check_model_data(model: nn.Module, data, field: str = "data", labels: bool = True) -> None:
    """Refuse data that ``model`` cannot score, before any chip is drawn.

    Parameters
    ----------
    model : nn.Module
        The float network; its mode (train/eval) is left as it was.
    data : Data, (x, y) tensors, or an iterable of (x, y) batches
        Whole tensors are checked in full; for batches, only the first batch.
    field : str
        Prefix of the field named in errors (``"<field>.x"``, ``"<field>.y"``).
    labels : bool
        Whether ``y`` holds class labels to check (false for metrics of other targets, e.g. regression):
        scores ``[N, C]`` with labels ``[N]``, or token scores ``[N, L..., C]`` with labels ``[N, L...]``.

    Raises
    ------
    ConfigError
        For inputs of a shape the model does not take, non-finite inputs, non-integer labels, or labels outside
        ``[0, C)`` where ``C`` is the width of the model's output.
    """
    tensors = as_tensors(data)
    if tensors is None:
        tensors = next(iter(data), None)
        if tensors is None:
            return
    x, y = tensors[0], tensors[1]
    if x.shape[0] == 0:
        return
    check_inputs(x, f"{field}.x")
    param = next(model.parameters(), None)
    device = param.device if param is not None else x.device
    was_training = model.training
    model.eval()
    try:
        out = model(x[:1].to(device=device, dtype=input_dtype(x)))
    except NotImplementedError:   # an op without a kernel on this device (e.g. meta): nothing can be checked
        return
    except RuntimeError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        what = f"inputs of shape {list(x.shape[1:])}"
        if not x.is_floating_point():
            what += f" and dtype {x.dtype} (integer inputs are passed as they are, e.g. token ids)"
        raise ConfigError(f"{field}.x", what, f"inputs of the shape the model takes, in a dtype it reads ({first})") from None
    finally:
        model.train(was_training)
    if not labels:
        return
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        check_labels(y, int(out.shape[-1]), f"{field}.y")        # refuses the dtype before any shape
    if out.ndim != y.ndim + 1 or tuple(out.shape[1:-1]) != tuple(y.shape[1:]):
        raise ConfigError(f"{field}.x", f"inputs of shape {list(x.shape[1:])}",
                          f"inputs for which the model gives [N, classes] scores (it gave {list(out.shape)}; "
                          f"[N, L..., classes] for labels [N, L...], here {list(y.shape)})")
    check_labels(y, int(out.shape[-1]), f"{field}.y")


def flag_nonfinite(ds: xr.Dataset, variables=(dims.ACCURACY, dims.LOSS), what: str = "result",
                   warn: bool = True) -> dict[str, int]:
    """Count NaN/inf cells of ``variables`` in ``ds``; record them in ``ds.attrs[NONFINITE_ATTR]`` and warn
    (a ``RuntimeWarning``, unless ``warn`` is false: for totals of results whose parts warned already).

    Returns
    -------
    dict
        ``{variable: count}`` of the variables with at least one non-finite cell (empty if none; the attr is
        then removed).
    """
    counts = {}
    for v in variables:
        if v in ds and ds[v].dtype.kind == "f":
            n = int((~np.isfinite(ds[v].values)).sum())
            if n:
                counts[v] = n
    if counts:
        ds.attrs[NONFINITE_ATTR] = dict(counts)
    else:
        ds.attrs.pop(NONFINITE_ATTR, None)   # a stale count (e.g. of one part of a concatenated result)
    if counts and warn:
        total = {v: math.prod(ds[v].shape) for v in counts}
        warnings.warn(f"{what}: non-finite values in " + ", ".join(f"{v} ({n} of {total[v]} cells)"
                                                                      for v, n in counts.items())
                      + " (e.g. a noise so large that the outputs overflow); recorded in attrs "
                        f"{NONFINITE_ATTR!r}", RuntimeWarning, stacklevel=2)
    return counts
