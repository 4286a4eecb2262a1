"""Energy, latency and area of a chip from its operation counts (:mod:`.counts`) and a constants table
(:mod:`.constants`), as labelled Datasets.

Per inference (one input sample) and analog layer, with the counts of :class:`~.counts.LayerCounts`:

* ``dac``: DAC conversions x input bits x ``dac_energy_per_bit`` (a b-bit input costs b one-bit drives);
* ``cells``: ``read_voltage^2 g_on read_time`` times the summed nominal conductance of the layer's devices, per
  MVM: every row driven at the full read voltage (an upper bound; real inputs are smaller);
* ``bitlines``: bit-line reads x ``column_read_energy``;
* ``adc``: ADC conversions x ``E_adc(levels)``, the larger of Walden's ``FOM_W levels`` (doubling per bit) and
  the thermal limit from Schreier's figure of merit ``0.5 10^((SNDR - FOM_S) / 10)`` with
  ``SNDR = 20 log10(levels) + 1.76 dB`` (quadrupling per bit): Murmann's survey envelope. Below the knee
  (:func:`adc_knee_bits`, 13.7 bits with the shipped table) the ADC term doubles per bit;
* ``shift_add``, ``accumulate``, ``offset``: digital adds x ``digital_add_energy``.

Latency: layers run one after another, the MVMs of a layer one after another, the tiles of a layer in parallel;
one MVM takes ``read_time`` + the conversions each ADC makes in series (``min(columns_per_adc, S cols)``) x
``ceil(log2 levels) adc_time_per_bit`` + an adder tree of ``ceil(log2(S R))`` (+1 with an offset) stages.
Area: the allocated cells (whole tiles) x the cell type's area; ``ceil(S cols / columns_per_adc)`` ADCs per tile of
``adc_area_8bit 2^(bits - 8)``; one DAC of ``bits x dac_area_per_bit`` per word line of every tile. Digital logic,
buffers, interconnect and control are not counted.
"""

from __future__ import annotations

import json
import math
from typing import Sequence

import numpy as np
import xarray as xr
from torch import nn

from .. import dims
from ..analog.program import AnalogProgram, LayerFilter
from ..errors import ConfigError
from ..hardware.spec import HardwareSpec
from .constants import CostConstants, resolve
from .counts import LayerCounts, count

ENERGY_COMPONENTS = ("dac", "cells", "bitlines", "adc", "shift_add", "accumulate", "offset")
AREA_COMPONENTS = ("cells", "adc", "dac")
DEFAULT_CELL = "rram_1t1r"
UNITS = {dims.ENERGY: "J", dims.ENERGY_PER_INFERENCE: "J", dims.LATENCY: "s", dims.LATENCY_PER_INFERENCE: "s",
         dims.AREA: "m^2", dims.CHIP_AREA: "m^2"}


def adc_energy(levels: float, constants: CostConstants) -> float:
    """Energy (J) of one conversion of an ADC with ``levels`` levels (``2^bits``): Murmann's envelope
    ``max(FOM_W levels, 0.5 10^((20 log10(levels) + 1.76 - FOM_S) / 10))``."""
    if not (isinstance(levels, (int, float, np.integer, np.floating)) and levels >= 2):
        raise ConfigError("adc levels", levels, "a number >= 2")
    walden = constants["adc_walden_fom"] * float(levels)
    sndr = 20.0 * math.log10(levels) + 1.76
    return max(walden, 0.5 * 10.0 ** ((sndr - constants["adc_schreier_fom"]) / 10.0))


def adc_knee_bits(constants: CostConstants) -> float:
    """Resolution (bits) where the thermal limit overtakes the Walden term: below it the ADC energy doubles per
    bit, above it it quadruples."""
    log2 = math.log10(2.0)
    rhs = math.log10(0.5) + (1.76 - constants["adc_schreier_fom"]) / 10.0 - math.log10(constants["adc_walden_fom"])
    return -rhs / log2


def converters(spec: HardwareSpec, constants: CostConstants) -> tuple[float, float, list[str]]:
    """``(adc_levels, dac_bits, assumed)``: the spec's converters, or the table's ``default_adc_bits`` /
    ``default_dac_bits`` for a converter the spec does not have (named in ``assumed``)."""
    per = spec.periphery
    assumed = [name for name in ("adc", "dac") if getattr(per, name) is None]
    adc = float(per.adc.n_levels) if per.adc is not None else float(2 ** constants["default_adc_bits"])
    dac = math.log2(per.dac.n_levels) if per.dac is not None else float(constants["default_dac_bits"])
    return adc, dac, assumed


def layer_energy(c: LayerCounts, k: CostConstants, adc_levels: float, dac_bits: float) -> dict[str, float]:
    """Energy (J) per inference of one layer, by component (:data:`ENERGY_COMPONENTS`)."""
    add = k["digital_add_energy"]
    return {
        "dac": c.mvms * c.dac_conversions * dac_bits * k["dac_energy_per_bit"],
        "cells": c.mvms * k["read_voltage"] ** 2 * k["g_on"] * k["read_time"] * c.conductance,
        "bitlines": c.mvms * c.bitline_reads * k["column_read_energy"],
        "adc": c.mvms * c.adc_conversions * adc_energy(adc_levels, k),
        "shift_add": c.mvms * c.shift_adds * add,
        "accumulate": c.mvms * c.accumulations * add,
        "offset": c.mvms * c.offset_ops * add,
    }


def layer_latency(c: LayerCounts, k: CostConstants, adc_levels: float) -> float:
    """Time (s) per inference of one layer (see the module docstring)."""
    serial = min(int(k["columns_per_adc"]), c.signals * min(c.tile_cols, c.outputs))
    t_conv = math.ceil(math.log2(adc_levels) - 1e-9) * k["adc_time_per_bit"]
    depth = math.ceil(math.log2(c.signals * c.row_blocks)) + int(c.offset)
    return c.mvms * (k["read_time"] + serial * t_conv + depth * k["digital_add_time"])


def layer_area(c: LayerCounts, k: CostConstants, adc_levels: float, dac_bits: float, cell: str) -> dict[str, float]:
    """Area (m^2) of one layer, by component (:data:`AREA_COMPONENTS`)."""
    tiles = c.row_blocks * c.col_blocks
    n_adc = tiles * math.ceil(c.signals * c.tile_cols / k["columns_per_adc"])
    return {"cells": c.cells_allocated * k.cell_area(cell),
            "adc": n_adc * k["adc_area_8bit"] * adc_levels / 256.0,
            "dac": tiles * c.tile_rows * dac_bits * k["dac_area_per_bit"]}


def cost_of_counts(counts: Sequence[LayerCounts], spec: HardwareSpec, *, constants=None,
                   cell: str = DEFAULT_CELL) -> xr.Dataset:
    """The cost Dataset of :func:`cost` from counts already made (the converters come from ``spec``)."""
    k = resolve(constants)
    k.cell_area(cell)   # validates the cell type
    adc, dac, assumed = converters(spec, k)
    names = [c.name for c in counts]
    energy = np.array([list(layer_energy(c, k, adc, dac).values()) for c in counts])
    area = np.array([list(layer_area(c, k, adc, dac, cell).values()) for c in counts])
    latency = np.array([layer_latency(c, k, adc) for c in counts])
    per_layer = {
        "mvms": [c.mvms for c in counts],
        "dac_conversions": [c.mvms * c.dac_conversions for c in counts],
        "adc_conversions": [c.mvms * c.adc_conversions for c in counts],
        "bitline_reads": [c.mvms * c.bitline_reads for c in counts],
        "digital_adds": [c.mvms * (c.shift_adds + c.accumulations + c.offset_ops) for c in counts],
        "cells": [c.cells for c in counts],
        "cells_allocated": [c.cells_allocated for c in counts],
        "tiles": [c.row_blocks * c.col_blocks for c in counts],
    }
    ds = xr.Dataset(
        {dims.ENERGY: ((dims.LAYER, dims.COMPONENT), energy),
         dims.LATENCY: ((dims.LAYER,), latency),
         dims.AREA: ((dims.LAYER, dims.AREA_COMPONENT), area),
         dims.ENERGY_PER_INFERENCE: ((), energy.sum()),
         dims.LATENCY_PER_INFERENCE: ((), latency.sum()),
         dims.CHIP_AREA: ((), area.sum()),
         **{n: ((dims.LAYER,), np.asarray(v, dtype=np.int64)) for n, v in per_layer.items()}},
        coords={dims.LAYER: names, dims.COMPONENT: list(ENERGY_COMPONENTS),
                dims.AREA_COMPONENT: list(AREA_COMPONENTS)})
    for name, unit in UNITS.items():
        ds[name].attrs["units"] = unit
    ds.attrs.update(cost_cell=cell, cost_constants=k.path, cost_adc_levels=adc, cost_dac_bits=dac,
                    cost_assumed_converters=",".join(assumed), hardware_spec=spec.to_json(),
                    cost_constants_values=json.dumps(dict(k.values), sort_keys=True))
    return ds


def cost(model: nn.Module, spec: HardwareSpec, data, *, constants: CostConstants | str | None = None,
         cell: str = DEFAULT_CELL, layers: LayerFilter = None, digital: Sequence[str] = (),
         program: AnalogProgram | None = None) -> xr.Dataset:
    """What one inference of ``model`` costs on the chip ``spec``: energy, latency and area by layer and component.

    Parameters
    ----------
    model : nn.Module
        The network (never modified).
    spec : HardwareSpec
        The chip: mapping (arrays and ADC signals), tile, converters (``periphery.adc`` / ``dac``; the table's
        ``default_*_bits`` when absent, recorded in the attr ``cost_assumed_converters``).
    data : (x, y) tensors, Data, batches or an input tensor
        Inputs of the network's shape (one sample is run to count each layer's MVMs).
    constants : CostConstants or csv path, optional
        The per-operation constants (default: the shipped table, :mod:`anvm_stats.cost.constants`).
    cell : str
        Cell type of the weight storage area (a ``cell_area_<type>`` row: rram_1t1r, rram_crossbar, pcm_1t1r,
        sram_6t in the shipped table).
    layers, digital
        As for :func:`anvm_stats.analog.prepare`.
    program : AnalogProgram, optional
        A program prepared from ``model`` and ``spec`` (counts then come from it).

    Returns
    -------
    xr.Dataset
        ``energy`` (J per inference, dims ``layer``, ``component``), ``latency`` (s per inference, ``layer``),
        ``area`` (m^2, ``layer``, ``area_component``), totals ``energy_per_inference``, ``latency_per_inference``,
        ``chip_area``; per-layer counts per inference ``mvms``, ``dac_conversions``, ``adc_conversions``,
        ``bitline_reads``, ``digital_adds`` and ``cells``, ``cells_allocated``, ``tiles``. Attrs: the cell, the
        constants table and its values, the converter resolution used, the spec.
    """
    counts = count(model, spec, data, layers=layers, digital=digital, program=program)
    return cost_of_counts(counts, spec, constants=constants, cell=cell)


def grid_cost(counts: Sequence[LayerCounts], specs: Sequence[HardwareSpec], keys: Sequence[str],
              values: Sequence, *, constants=None, cell: str = DEFAULT_CELL) -> xr.Dataset:
    """Cost totals at every point of a sweep grid: ``specs`` (one per point, C order over ``keys`` x ``values``)
    share the counts (sweep knobs change converters and devices, not the program's structure).

    Returns ``energy_per_inference``, ``latency_per_inference``, ``chip_area`` (dims ``keys``) and ``energy``
    (dims ``keys``, ``component``; summed over layers)."""
    k = resolve(constants)
    parts = [cost_of_counts(counts, s, constants=k, cell=cell) for s in specs]
    shape = tuple(len(v) for v in values)
    out = {}
    for name in (dims.ENERGY_PER_INFERENCE, dims.LATENCY_PER_INFERENCE, dims.CHIP_AREA):
        out[name] = (tuple(keys), np.array([float(p[name]) for p in parts]).reshape(shape))
    comp = np.stack([p[dims.ENERGY].sum(dims.LAYER).values for p in parts])
    out[dims.ENERGY] = (tuple(keys) + (dims.COMPONENT,), comp.reshape(shape + (len(ENERGY_COMPONENTS),)))
    ds = xr.Dataset(out, coords={**{kk: np.asarray(v) for kk, v in zip(keys, values)},
                                 dims.COMPONENT: list(ENERGY_COMPONENTS)})
    for name in (dims.ENERGY, dims.ENERGY_PER_INFERENCE, dims.LATENCY_PER_INFERENCE, dims.CHIP_AREA):
        ds[name].attrs["units"] = UNITS[name]
    assumed = {a for p in parts for a in p.attrs["cost_assumed_converters"].split(",") if a}
    ds.attrs.update(cost_cell=cell, cost_constants=k.path, cost_assumed_converters=",".join(sorted(assumed)))
    return ds
