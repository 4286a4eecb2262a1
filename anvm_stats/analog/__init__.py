"""Analog execution of a network: BatchNorm folding, analog layers and their kernels, prepare() -> AnalogProgram."""

from .attention import AnalogMultiheadAttention
from .fold import fold_batchnorm
from .kernels import CudaFusedKernel, GenericKernel, OneDNNKernel, select_kernel
from .layers import AnalogModule, LayerPlan, LayerRuntime
from .program import ANALOG_TYPES, AnalogProgram, prepare
from .recurrent import AnalogRecurrent

__all__ = ["fold_batchnorm", "AnalogModule", "LayerPlan", "LayerRuntime", "ANALOG_TYPES", "AnalogProgram",
           "prepare", "GenericKernel", "OneDNNKernel", "CudaFusedKernel", "select_kernel",
           "AnalogMultiheadAttention", "AnalogRecurrent"]
