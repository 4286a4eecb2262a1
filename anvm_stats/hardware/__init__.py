"""The hardware model: device effects, weight<->conductance mappings, periphery, and the composed HardwareSpec."""

from .effects import Bounds, ConductanceLevels, DeviceEffect, Drift, ProgrammingNoise, ReadNoise, StuckAt
from .mapping import BitSlicedMapping, DifferentialMapping, LayerEncoding, Mapping, OffsetMapping
from .parasitics import Parasitics
from .periphery import Periphery, Quantizer, calibrate_range, quantize
from .registry import register
from .spec import KNOBS, HardwareSpec
from .tile import Tile

__all__ = [
    "Bounds", "ConductanceLevels", "DeviceEffect", "Drift", "ProgrammingNoise", "ReadNoise", "StuckAt",
    "BitSlicedMapping", "DifferentialMapping", "LayerEncoding", "Mapping", "OffsetMapping",
    "Parasitics", "Periphery", "Quantizer", "calibrate_range", "quantize", "register", "KNOBS", "HardwareSpec", "Tile",
]
