"""How the device-contract checks exercise an effect: the case under test, seeded draws, test inputs, exact
comparisons and minimal examples (used by :mod:`.properties`, :mod:`.statistical` and :mod:`.conformance`)."""

from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from ..errors import ConfigError
from ..hardware.effects import Bounds
from ..hardware.spec import KNOBS

Tensor = torch.Tensor
#: a failed property: what was observed and a minimal example (or None)
Finding = tuple[str, "dict | None"]
#: values tried for each knob in ``draws_independent_of_parameters`` (the first valid one is used)
KNOB_TRIALS = {"noise_level": (0.0, 0.37, 2.0), "t_inference": (1e5, 1e3), "stuck_at_rate": (0.0, 0.2),
               "adc_bits": (4,), "dac_bits": (4,)}


@dataclass(frozen=True)
class Case:
    """One effect under test and what its user declared about it.

    Attributes
    ----------
    effect : DeviceEffect
    kind : str
        The effect's ``kind`` (or class name), for messages.
    bounds : Bounds
        Test window.
    n : int
        Devices per check.
    seed : int
        Generator seed of the checks.
    clips : bool
        Outputs promised in ``[g_min, g_max]``.
    zero_noise : effect, mapping knob -> value, True or None
        The declared zero-noise version.
    declared_mean, declared_std : float, callable or None
        Declared output moments at a constant input.
    levels : tuple of float
        Input levels (fractions of the window) of the moment checks.
    z : float
        Normal quantile of the statistical checks (their false-failure rate, Bonferroni over all their tests).
    """

    effect: Any
    kind: str
    bounds: Bounds
    n: int
    seed: int
    clips: bool
    zero_noise: Any
    declared_mean: Any
    declared_std: Any
    levels: tuple
    z: float


@contextmanager
def global_rngs_restored() -> Iterator[None]:
    """Leave torch's, numpy's and Python's global RNG states as they were (they still move inside)."""
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


def draw_once(effect, n: int, seed: int, dtype) -> tuple[dict, Tensor]:
    """``effect.draw`` of ``n`` devices from a CPU generator seeded ``seed``; the draws and the generator state
    after."""
    gen = torch.Generator().manual_seed(int(seed))
    d = effect.draw(n, gen, device=torch.device("cpu"), dtype=dtype)
    return d, gen.get_state()


def stacked_draws(effect, n: int, seeds, dtype) -> dict:
    """Draws of one chip per seed, stacked: ``[len(seeds), n]`` per key."""
    per = [draw_once(effect, n, s, dtype)[0] for s in seeds]
    return {k: torch.stack([d[k] for d in per]) for k in per[0]}


def window(bounds: Bounds, n: int, dtype) -> Tensor:
    """``n`` inputs spread evenly over ``[g_min, g_max]`` (the middle for ``n = 1``)."""
    if n == 1:
        return torch.tensor([0.5 * (bounds.g_min + bounds.g_max)], dtype=dtype)
    return torch.linspace(bounds.g_min, bounds.g_max, n, dtype=dtype)


def same(a, b) -> bool:
    """Tensors of equal shape and dtype, equal element by element (NaN equal to NaN)."""
    ok = isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and a.dtype == b.dtype
    return ok and bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())


def same_draws(a: Mapping, b: Mapping) -> bool:
    """The same keys, each :func:`same`."""
    return set(a) == set(b) and all(same(a[k], b[k]) for k in a)


def first_diff(a: Tensor, b: Tensor) -> int:
    """Flat index of the first element where ``a`` and ``b`` differ (0 if none)."""
    diff = ~((a == b) | (torch.isnan(a) & torch.isnan(b))).reshape(-1)
    return int(diff.nonzero()[0, 0]) if diff.any() else 0


def device_case(i: int, g: Tensor, draws: Mapping, **outs) -> dict:
    """Device ``i``'s input, draws and outputs as plain floats (a minimal example)."""
    ex = {"g": float(g.reshape(-1)[i]), "draws": {k: float(v.reshape(-1)[i]) for k, v in draws.items()}}
    ex.update({k: float(v.reshape(-1)[i]) for k, v in outs.items()})
    return ex


def shrink_sizes(n: int) -> list[int]:
    """Smaller device counts tried, in order, to shrink a failure found with ``n``: 1, 2, 3, 4, 8, 16, ..."""
    out, m = [], 1
    while m < n:
        out.append(m)
        m = m + 1 if m < 4 else 2 * m
    return out


def knob_copies(effect) -> Iterator[tuple[str, float, Any]]:
    """``(knob, value, effect.with_knob(knob, value))`` for every knob the effect answers (first valid trial
    value of :data:`KNOB_TRIALS`)."""
    names = list(KNOBS) + [k for k in getattr(effect, "knob_names", ()) if k not in KNOBS]
    for name in names:
        for value in KNOB_TRIALS.get(name, (0.0, 0.37, 2.0)):
            try:
                new = effect.with_knob(name, value)
            except (ConfigError, ValueError):
                continue
            if new is not None:
                yield name, value, new
            break


def declared_moment(declared: float | Callable, g: Tensor) -> Tensor:
    """A declared moment (a number or ``g -> Tensor``) at inputs ``g``, shaped as ``g``."""
    v = declared(g) if callable(declared) else declared
    return torch.as_tensor(v, dtype=g.dtype).expand_as(g)
