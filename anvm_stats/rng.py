"""Seeding: one independent random stream per simulated chip instance.

Instance ``i`` of a run with root seed ``s`` draws from child ``i`` of ``SeedSequence(s)``; each child has
sub-streams (programming, read, ...) so that adding read noise never changes the programmed chip. Because the
stream of instance ``i`` depends only on ``(s, i)``, a run split into chunks, reordered, or spread over workers
draws exactly the same chips as the single run. Library code never touches torch's or numpy's global RNG.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Sequence, Union

import numpy as np
import torch

from .errors import ConfigError

SeedLike = Union[int, np.random.SeedSequence, None]


class Stream(IntEnum):
    """Sub-streams of one instance."""

    PROGRAM = 0    #: programming error, faults, drift exponents: fixed per chip
    READ = 1       #: read (cycle-to-cycle) noise and ADC output noise: fresh per forward
    TRAIN = 2      #: perturbations drawn during training
    CALIBRATE = 3  #: per-chip calibration (sample choice, sparse sets)


def root_sequence(seed: SeedLike) -> np.random.SeedSequence:
    """Return the root SeedSequence of a run.

    Parameters
    ----------
    seed : int, SeedSequence or None
        ``None`` draws fresh OS entropy; it is recorded in ``.entropy`` so the run can be repeated.
    """
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ConfigError("seed", seed, "a non-negative int, a numpy SeedSequence or None")
    return np.random.SeedSequence(None if seed is None else int(seed))


def seed_entropy(root: np.random.SeedSequence) -> str:
    """The entropy of ``root`` as a string (attrs cannot hold 128-bit ints)."""
    return str(root.entropy)


def instance_sequence(root: np.random.SeedSequence, index: int, stream: Stream = Stream.PROGRAM,
                      ) -> np.random.SeedSequence:
    """SeedSequence of sub-stream ``stream`` of instance ``index`` (a pure function of root and index)."""
    return np.random.SeedSequence(root.entropy, spawn_key=tuple(root.spawn_key) + (int(index), int(stream)))


def instance_seed(root: np.random.SeedSequence, index: int, stream: Stream = Stream.PROGRAM) -> int:
    """A 63-bit integer seed for torch generators, derived from ``(root, index, stream)``."""
    state = instance_sequence(root, index, stream).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def torch_generator(seed: int, device: Union[str, torch.device] = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``seed``."""
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(int(seed))
    return g


def instance_generators(root: np.random.SeedSequence, indices: Sequence[int], stream: Stream,
                        device: Union[str, torch.device] = "cpu") -> list[torch.Generator]:
    """One generator per instance index, for sub-stream ``stream``."""
    return [torch_generator(instance_seed(root, i, stream), device) for i in indices]


def numpy_generator(root: np.random.SeedSequence, index: int, stream: Stream) -> np.random.Generator:
    """A numpy Generator for sub-stream ``stream`` of ``index``."""
    return np.random.default_rng(instance_sequence(root, index, stream))
