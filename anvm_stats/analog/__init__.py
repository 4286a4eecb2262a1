"""Analog execution of a network: BatchNorm folding, analog layers, prepare() -> AnalogProgram."""

from .fold import fold_batchnorm
from .layers import AnalogModule, LayerPlan, LayerRuntime
from .program import ANALOG_TYPES, AnalogProgram, prepare

__all__ = ["fold_batchnorm", "AnalogModule", "LayerPlan", "LayerRuntime", "ANALOG_TYPES", "AnalogProgram",
           "prepare"]
