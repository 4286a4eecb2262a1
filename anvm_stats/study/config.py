"""Validated study configuration objects, :class:`StudyError`, and the checking helpers of the parser."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, short_repr
from ..hardware.spec import HardwareSpec
from .lines import find_line, key_lines

#: the largest integer a study key takes (seeds and counts are stored as int64)
MAX_INT = 2**63 - 1
PLOTS = ("distribution", "mean_quantiles", "yield", "sensitivity", "training")


class StudyError(ConfigError):
    """A study file is invalid: names the key, the value, what is allowed and (when found) the file and line."""

    def __init__(self, field: str, value: object, allowed: str, *, line: int | None = None,
                 source: str | None = None):
        self.line = line
        self.source = source
        super().__init__(field, value, allowed)
        where = f"{source or 'study'}:{line}: " if line else (f"{source}: " if source else "")
        self.args = (f"{where}{field}={short_repr(value)} is not allowed: expected {allowed}",)

    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    name: str
    args: dict = field(default_factory=dict)
    seed: int | None = None
    weights: str | None = None


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    name: str = "digits"
    root: str | None = None
    options: dict = field(default_factory=dict)
    n_train: int | None = None
    n_test: int | None = None


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """One model to train (a ``model`` coordinate ``label``); ``q`` is the resolved spec (None for plain)."""

    label: str
    method: str = "plain"
    epochs: int = 10
    lr: float | None = None
    batch_size: int = 64
    samples: int = 8
    sigma_train: float | None = None
    q: HardwareSpec | None = None
    options: dict = field(default_factory=dict)

    def cache_key(self) -> dict:
        return {"method": self.method, "epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size,
                "samples": self.samples, "sigma_train": self.sigma_train, "options": self.options,
                "q": None if self.q is None else self.q.to_dict()}


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    grid: dict = field(default_factory=dict)
    n_instances: int | None = 256
    target_ci_width: float | None = None
    max_instances: int = 4096
    instances_per_round: int = 64
    samples_per_batch: int | None = None
    instances_per_chunk: int | None = None
    #: built-in metric names (anvm_stats.metrics.BUILTIN); None: a classifier's default variables
    metrics: tuple | None = None
    cost: bool = False


@dataclass(frozen=True, kw_only=True)
class RecoveryConfig:
    n_calibration: int = 64
    n_instances: int | None = None
    options: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class OutputsConfig:
    format: str = "nc"
    plots: tuple = PLOTS
    yield_threshold: float = 0.9
    ci: float = 0.95
    quantiles: tuple = (0.05, 0.5, 0.95)
    sensitivity: bool = False
    html: bool = True
    embed: str = "base64"


@dataclass(frozen=True, kw_only=True)
class Study:
    """A validated study. ``hardware`` maps variant label -> spec (one entry ``"base"`` without variants);
    ``training`` is a tuple of models to train (empty when ``model.weights`` is given), each trained once per
    seed of ``train_seeds`` (``(seed,)``: one seed, no ``train_seed`` dim; empty means the same)."""

    name: str
    description: str = ""
    seed: int = 0
    model: ModelConfig
    data: DataConfig
    training: tuple = ()
    train_seeds: tuple = ()
    hardware: dict
    hardware_variants: bool = False
    sweep: SweepConfig
    recovery: RecoveryConfig | None = None
    outputs: OutputsConfig
    source: str | None = None
    text: str = ""

    @property
    def seeds(self) -> tuple[int, ...]:
        """The training seeds (``(seed,)`` when none were given)."""
        return tuple(self.train_seeds) or (self.seed,)


class Ctx:
    """Parsing context: the TOML text's key lines, and checks that raise StudyError at the right line."""

    def __init__(self, text: str, source: str | None):
        self.lines = key_lines(text)
        self.source = source

    def error(self, path: str, value: object, allowed: str) -> StudyError:
        return StudyError(path, value, allowed, line=find_line(self.lines, path), source=self.source)

    def table(self, raw: dict, path: str, allowed: tuple[str, ...]) -> dict:
        if not isinstance(raw, dict):
            raise self.error(path, raw, "a table")
        for k in raw:
            if k not in allowed:
                raise self.error(f"{path}.{k}", raw[k], f"a key of [{path}]: one of {list(allowed)}")
        return raw

    def number(self, path: str, v: Any, *, low=None, high=None, low_open=False, high_open=False,
               integer=False) -> Any:
        """``v`` if it is a finite number (an int with ``integer``; at most :data:`MAX_INT` then, as seeds and
        counts are stored as int64) inside the interval, else a StudyError."""
        if integer and high is None:
            high = MAX_INT
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (not integer or isinstance(v, int))
        ok = ok and v == v and abs(v) != float("inf")
        ok = ok and (low is None or (v > low if low_open else v >= low))
        ok = ok and (high is None or (v < high if high_open else v <= high))
        if not ok:
            kind = "an integer" if integer else "a number"
            lo = "-inf" if low is None else low
            hi = "inf" if high is None else high
            raise self.error(path, v, f"{kind} in {'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}")
        return v

    def string(self, path: str, v: Any, choices: tuple[str, ...] | None = None) -> str:
        if not isinstance(v, str) or (choices is not None and v not in choices):
            raise self.error(path, v, f"one of {list(choices)}" if choices else "a string")
        return v

    def boolean(self, path: str, v: Any) -> bool:
        if not isinstance(v, bool):
            raise self.error(path, v, "true or false")
        return v

    def wrap(self, prefix: str, err: ConfigError) -> StudyError:
        field_ = err.field if err.field.startswith(prefix) else f"{prefix}.{err.field}"
        return self.error(field_, err.value, err.allowed)
