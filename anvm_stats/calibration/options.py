"""What per-chip calibration adapts, and how: :class:`CalibrationOptions` (validated, frozen)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import check, check_number

PARAMS = ("column_affine", "batchnorm", "sparse")
SELECT = ("random", "sensitivity")
OBJECTIVES = ("distill", "labels")
DEFAULT_LR = {"column_affine": 1e-2, "batchnorm": 1e-2, "sparse": 2e-3}


@dataclass(frozen=True, kw_only=True)
class CalibrationOptions:
    """What :func:`anvm_stats.calibration.calibrate` adapts, and how.

    Parameters
    ----------
    params : {"column_affine", "batchnorm", "sparse"}
        The digital parameter set (see module docstring).
    sparse_fraction : float in (0, 1]
        Fraction of each chip's crossbar weights moved to digital memory (``params="sparse"``).
    sparse_select : {"random", "sensitivity"}
    steps : int >= 0
        Adam steps, full batch over the recovery samples.
    lr : float > 0, optional
        Adam learning rate; default 1e-2 for affine sets, 2e-3 for sparse weights.
    n_recovery : int, optional
        Use the first ``n_recovery`` recovery samples (default: all).
    objective : {"distill", "labels"}
    temperature : float > 0
        Softmax temperature of the ``"distill"`` objective (KL divergence times ``T**2``).
    instances_per_chunk : int
        Chips adapted together.
    """

    params: str = "column_affine"
    sparse_fraction: float = 0.05
    sparse_select: str = "random"
    steps: int = 50
    lr: float | None = None
    n_recovery: int | None = None
    objective: str = "distill"
    temperature: float = 1.0
    instances_per_chunk: int = 16

    def __post_init__(self):
        check(self.params in PARAMS, "params", self.params, f"one of {PARAMS}")
        check(self.sparse_select in SELECT, "sparse_select", self.sparse_select, f"one of {SELECT}")
        check(self.objective in OBJECTIVES, "objective", self.objective, f"one of {OBJECTIVES}")
        check_number("sparse_fraction", self.sparse_fraction, low=0.0, high=1.0, low_open=True)
        check_number("steps", self.steps, low=0, integer=True)
        if self.lr is not None:
            check_number("lr", self.lr, low=0.0, low_open=True)
        if self.n_recovery is not None:
            check_number("n_recovery", self.n_recovery, low=1, integer=True)
        check_number("temperature", self.temperature, low=0.0, low_open=True)
        check_number("instances_per_chunk", self.instances_per_chunk, low=1, integer=True)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.params]
