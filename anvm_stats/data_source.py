"""Normalise the data arguments users pass: ``(x, y)`` tensors, an ``anvm_stats.data.Data``, or any iterable of
``(x, y)`` batches (e.g. a DataLoader)."""

from __future__ import annotations

from typing import Iterator

import torch

from .errors import ConfigError

Tensor = torch.Tensor


def as_tensors(data) -> tuple[Tensor, Tensor] | None:
    """``(x, y)`` if ``data`` holds whole tensors, else ``None`` (an iterable of batches)."""
    if hasattr(data, "x") and hasattr(data, "y") and isinstance(getattr(data, "x"), Tensor):
        return data.x, data.y
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ConfigError("data", f"x {tuple(x.shape)}, y {tuple(y.shape)}", "x and y with the same first dim")
        return x, y
    return None


def iter_batches(data, batch_size: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(x, y)`` batches; whole tensors are cut into ``batch_size`` pieces (all at once if None)."""
    tensors = as_tensors(data)
    if tensors is not None:
        x, y = tensors
        n = x.shape[0]
        step = n if batch_size is None else max(1, int(batch_size))
        for i in range(0, n, step):
            yield x[i:i + step], y[i:i + step]
        return
    if isinstance(data, Tensor):
        raise ConfigError("data", f"a bare tensor {tuple(data.shape)}", "(x, y) tensors, a Data, or batches")
    try:
        it = iter(data)
    except TypeError:
        raise ConfigError("data", type(data).__name__, "(x, y) tensors, an anvm_stats Data, or an iterable of "
                                                       "(x, y) batches") from None
    for i, batch in enumerate(it):
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise ConfigError(f"data[batch {i}]", type(batch).__name__, "an (x, y) pair")
        yield batch[0], batch[1]


def first_samples(data, n: int) -> Tensor:
    """The inputs of the first ``n`` samples (a tensor of inputs is accepted as is)."""
    if isinstance(data, Tensor):
        return data[:n]
    xs, got = [], 0
    for x, _ in iter_batches(data):
        xs.append(x[: n - got])
        got += xs[-1].shape[0]
        if got >= n:
            break
    if not xs:
        raise ConfigError("calibration_data", "empty", "at least one sample")
    return torch.cat(xs)


def describe(data) -> str:
    """A short label for provenance attrs."""
    name = getattr(data, "name", None)
    tensors = as_tensors(data)
    if tensors is not None:
        shape = tuple(tensors[0].shape)
        return f"{name} {shape}" if name else f"tensors {shape}"
    return name or type(data).__name__
