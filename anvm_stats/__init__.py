"""anvm_stats: how a deep network behaves, with statistical confidence, when its weights live in analog
non-volatile memory, and how to train it to survive."""

from .version import __version__  # noqa: E402,F401

from . import _omp  # noqa: E402,F401  (first: sets the OpenMP wait policy before torch loads)
from . import data, dims, hardware, models, rng, stats  # noqa: E402
from . import calibration, devices, report, study, testing, training  # noqa: E402
from .devices import EmpiricalDevice, effect_from_function  # noqa: E402
from .training import TrainResult, train_hasgd  # noqa: E402
from .study import load_study, run_study  # noqa: E402
from .adaptive import evaluate_until  # noqa: E402
from .io import load, save  # noqa: E402
from .calibration import calibrate, drift_sweep, train_distilled  # noqa: E402
from .fragility import sensitivity  # noqa: E402
from .analog import AnalogProgram, prepare  # noqa: E402
from . import cost  # noqa: E402
from .hardware import (  # noqa: E402
    BitSlicedMapping, ConductanceLevels, DifferentialMapping, Drift, HardwareSpec, OffsetMapping, Periphery,
    Parasitics, ProgrammingNoise, Quantizer, ReadNoise, StuckAt, Tile,
)
from .montecarlo import LocalExecutor, RunOptions, evaluate, plan_grid, run_points, sweep  # noqa: E402
from .sampler import ChipSampler, CounterSampler, GeneratorSampler  # noqa: E402
from . import metrics  # noqa: E402
from .metrics import Metric  # noqa: E402
from .chip_module import Chip, chip  # noqa: E402

__all__ = [
    "__version__", "data", "models", "stats", "cost", "calibration", "devices", "testing", "training", "report", "study", "EmpiricalDevice", "effect_from_function", "TrainResult", "train_hasgd", "load_study", "run_study", "calibrate", "drift_sweep", "train_distilled", "evaluate_until", "save", "load", "sensitivity", "dims", "hardware", "rng", "AnalogProgram", "prepare", "BitSlicedMapping",
    "ConductanceLevels", "DifferentialMapping", "Drift", "HardwareSpec", "OffsetMapping", "Periphery",
    "Parasitics", "ProgrammingNoise", "Quantizer", "ReadNoise", "StuckAt", "Tile", "RunOptions", "evaluate", "sweep", "ChipSampler",
    "LocalExecutor", "plan_grid", "run_points", "DaskExecutor", "GeneratorSampler", "CounterSampler",
    "metrics", "Metric", "Chip", "chip",
]


def __getattr__(name: str):
    """Lazy access to the Dask back end (``distributed`` is slow to import)."""
    if name in ("parallel", "DaskExecutor"):
        import importlib
        mod = importlib.import_module(".parallel", __name__)
        return mod if name == "parallel" else getattr(mod, name)
    raise AttributeError(f"module 'anvm_stats' has no attribute {name!r}")
