"""Tile: the crossbar size a chip splits every analog layer into, and each tile's periphery options.

A layer's augmented weight matrix ``W~`` (``[out, in (+1 bias row)]``, im2col view for convolutions:
``in = C * prod(kernel)``) is split into ``ceil(in~ / rows)`` row blocks x ``ceil(out / cols)`` column blocks.
Every tile computes the partial sums of its rows for its columns in analog; each partial sum goes through the
tile's own ADC, and the digitised partial sums of the row blocks are added digitally.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, check, check_number

#: largest tile side accepted (physical arrays are 64..1024; larger values are almost certainly a unit error)
MAX_TILE_SIDE = 1 << 16
SCALES = ("layer", "tile")
ADC_RANGES = ("layer", "tile", "column")
ADC_CALIBRATIONS = ("percentile", "minmax")
_KEYS = ("rows", "cols", "scale", "adc_ranges", "adc_calibration")


@dataclass(frozen=True, kw_only=True)
class Tile:
    """Crossbar tile size and per-tile periphery.

    Parameters
    ----------
    rows : int in [1, 65536]
        Word lines (inputs) per tile. A ``"column"`` bias (``HardwareSpec.bias``) takes one row of the first
        row-block tile; ``"digital"`` bias is added after the digital accumulation.
    cols : int in [1, 65536]
        Bit lines (outputs) per tile; every array of the mapping (e.g. both devices of a differential pair) is
        counted as part of the same tile.
    scale : {"layer", "tile"}
        ``"layer"``: the mapping's scale is computed over the whole layer (today's mapping); ``"tile"``: every tile
        is mapped on its own (its own digital scale, the bi-scale "analog floating point" per tile; with a mapping
        of ``granularity="column"`` one scale per column of each tile).
    adc_ranges : {"tile", "column", "layer"}
        ADC range granularity: one range per tile (and ADC signal), per column of each tile, or one per layer.
    adc_calibration : {"percentile", "minmax"}
        ``"percentile"``: the range covers the ADC quantiser's ``percentile`` of the nominal chip's partial sums
        on the calibration data; ``"minmax"``: their full range.
    """

    rows: int
    cols: int
    scale: str = "layer"
    adc_ranges: str = "tile"
    adc_calibration: str = "percentile"

    def __post_init__(self):
        for name in ("rows", "cols"):
            check_number(f"Tile.{name}", getattr(self, name), low=1, high=MAX_TILE_SIDE, integer=True)
            object.__setattr__(self, name, int(getattr(self, name)))
        check(self.scale in SCALES, "Tile.scale", self.scale, f"one of {SCALES}")
        check(self.adc_ranges in ADC_RANGES, "Tile.adc_ranges", self.adc_ranges, f"one of {ADC_RANGES}")
        check(self.adc_calibration in ADC_CALIBRATIONS, "Tile.adc_calibration", self.adc_calibration,
              f"one of {ADC_CALIBRATIONS}")

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _KEYS}

    @classmethod
    def from_dict(cls, data: Any, where: str = "tile") -> "Tile":
        if not isinstance(data, dict):
            raise ConfigError(where, data, f"a table with keys {_KEYS} (rows and cols required)")
        unknown = sorted(set(data) - set(_KEYS))
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}", data[unknown[0]], f"one of {_KEYS}")
        for need in ("rows", "cols"):
            if need not in data:
                raise ConfigError(f"{where}.{need}", None, "an int in [1, 65536] (required)")
        try:
            return cls(**data)
        except ConfigError as err:
            raise ConfigError(f"{where}.{err.field.split('.')[-1]}", err.value, err.allowed) from None
