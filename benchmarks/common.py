"""What every benchmark shares: best-of-N wall-clock timing (device-synchronised) and the digits MLP job."""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from anvm_stats.data import digits
from anvm_stats.models import build_model


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], device: torch.device = torch.device("cpu"), repeats: int = 3) -> float:
    """The shortest of ``repeats`` wall-clock times (s) of ``fn()``, synchronised with ``device``."""
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return min(times)


def digits_mlp(device: torch.device | str = "cpu", seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The benchmarks' job: MLP 64-256-256-10 (weights seeded by ``seed``, eval mode) and the 360 test digits.

    Returns
    -------
    (net, x, y)
        On ``device``; ``x`` ``[360, 64]`` float32, ``y`` ``[360]`` int64.
    """
    test = digits("test")
    net = build_model("mlp", seed=seed)
    return net.to(device).eval(), test.x.to(device), test.y.to(device)
