"""Operation counts of a chip: what one inference does on every analog layer of an :class:`AnalogProgram`.

The counts come from the program the engine runs (its layer plans: mapping arrays and ADC signals, bias row,
tiles) and from one nominal forward of one input (the MVMs per input: 1 for a linear layer, the output pixels of a
convolution). Per MVM of a layer with ``n_rows`` augmented rows (inputs, + 1 for a ``"column"`` bias; a grouped
convolution's rows are all ``C * prod(kernel)`` im2col rows), ``O`` outputs, ``A`` device arrays and ``S`` ADC
signals of its mapping (differential: A = 2, S = 1; offset: A = S = 1; ``n`` bit slices: A = 2n, S = n), on
``R x C`` tiles of ``rows x cols`` (untiled: one tile of the layer's size)::

    DAC conversions   n_rows * C              every tile drives its own word lines
    bit-line reads    A * R * O               every device column of every row block
    ADC conversions   S * R * O               every signal of every tile, before the digital sum
    shift-and-adds    R * O * (S - 1)         bit slices recombined per row block
    accumulations     O * (R - 1)             row blocks summed
    offset ops        (n_rows - R) + R * O    offset mappings: sum(x) per row block, one multiply-add per output

Cells: ``A * O * (in + bias)`` programmed devices; ``A * R * C * rows * cols`` allocated (whole tiles).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..analog.program import AnalogProgram, LayerFilter, prepare
from ..analog.tiles import single_tile
from ..data_source import first_samples
from ..errors import ConfigError
from ..hardware.periphery import Periphery
from ..hardware.spec import HardwareSpec


@dataclass(frozen=True)
class LayerCounts:
    """Counts of one analog layer (per MVM unless said per inference).

    Attributes
    ----------
    name : str
        The layer's module name.
    mvms : int
        Matrix-vector products per input sample (output pixels of a convolution, 1 for a linear layer).
    n_rows, outputs : int
        Augmented crossbar rows (inputs + bias row) and outputs (columns per array).
    arrays, signals : int
        Device arrays ``A`` and ADC signals ``S`` of the mapping.
    row_blocks, col_blocks : int
        Tiles ``R x C`` (1 x 1 untiled).
    tile_rows, tile_cols : int
        Physical tile size (the layer's own size untiled).
    cells : int
        Programmed devices.
    conductance : float
        Sum of the nominal normalised conductances of the layer's devices (``g`` in [g_min, 1]).
    offset : bool
        Whether the mapping has a digital offset term.
    """

    name: str
    mvms: int
    n_rows: int
    outputs: int
    arrays: int
    signals: int
    row_blocks: int
    col_blocks: int
    tile_rows: int
    tile_cols: int
    cells: int
    conductance: float
    offset: bool

    @property
    def cells_allocated(self) -> int:
        """Devices of the whole tiles the layer occupies."""
        return self.arrays * self.row_blocks * self.col_blocks * self.tile_rows * self.tile_cols

    @property
    def dac_conversions(self) -> int:
        return self.n_rows * self.col_blocks

    @property
    def bitline_reads(self) -> int:
        return self.arrays * self.row_blocks * self.outputs

    @property
    def adc_conversions(self) -> int:
        return self.signals * self.row_blocks * self.outputs

    @property
    def shift_adds(self) -> int:
        return self.row_blocks * self.outputs * (self.signals - 1)

    @property
    def accumulations(self) -> int:
        return self.outputs * (self.row_blocks - 1)

    @property
    def offset_ops(self) -> int:
        return (self.n_rows - self.row_blocks) + self.row_blocks * self.outputs if self.offset else 0


def layer_counts(program: AnalogProgram, x: torch.Tensor) -> tuple[LayerCounts, ...]:
    """Counts of every analog layer of ``program`` for inputs shaped like ``x`` (``[B, ...]``; one sample is
    run through the nominal chip to count each layer's MVMs per input)."""
    if not isinstance(program, AnalogProgram):
        raise ConfigError("program", type(program).__name__, "an AnalogProgram (anvm_stats.prepare)")
    mvms = _mvms_per_input(program, x[:1].to(program.device))
    out = []
    for p, m in zip(program.plans, mvms):
        layout = p.tiles if p.tiles is not None else single_tile(p)
        enc = p.encoding
        n = (p.w_slice.stop - p.w_slice.start) + (0 if p.b_slice is None else p.b_slice.stop - p.b_slice.start)
        g = float(program.g0[p.w_slice].double().sum())
        if p.b_slice is not None:
            g += float(program.g0[p.b_slice].double().sum())
        out.append(LayerCounts(name=p.name, mvms=m, n_rows=layout.n_rows, outputs=p.out_features,
                               arrays=enc.n_arrays, signals=enc.n_signals, row_blocks=layout.row_blocks,
                               col_blocks=layout.col_blocks, tile_rows=layout.tile.rows, tile_cols=layout.tile.cols,
                               cells=n, conductance=g, offset=enc.offset is not None))
    return tuple(out)


@torch.no_grad()
def _mvms_per_input(program: AnalogProgram, x: torch.Tensor) -> list[int]:
    """MVMs each analog layer computes for one input ``x`` ``[1, ...]``: its outputs over its output columns,
    summed over every call of the layer in one forward."""
    seen = {id(m): 0 for m in program.analog_modules()}

    def hook(module, args, out):
        seen[id(module)] += out.numel() // (out.shape[0] * module.plan.out_features)

    x = program.input(x)   # chooses the layout first (it runs a forward of its own, before the hooks)
    mods = program.analog_modules()
    hooks = [m.register_forward_hook(hook) for m in mods]
    try:
        program.load(program.g0[None], B=1)
        program.module(x)
    finally:
        program.unload()
        for h in hooks:
            h.remove()
    return [seen[id(m)] for m in mods]


def count(model: nn.Module, spec: HardwareSpec, data, *, layers: LayerFilter = None, digital=(),
          program: AnalogProgram | None = None) -> tuple[LayerCounts, ...]:
    """Counts of ``model`` on ``spec`` (the plans :func:`~anvm_stats.analog.prepare` makes) for inputs like those of
    ``data`` ((x, y) tensors, Data, batches or an input tensor). ``program``: use this prepared program instead."""
    if program is None:
        if not isinstance(spec, HardwareSpec):
            raise ConfigError("spec", type(spec).__name__, "a HardwareSpec")
        # the plans do not depend on converters or wires: prepare without calibrating
        bare = replace(spec, periphery=Periphery(), parasitics=None)
        program = prepare(model, bare, layers=layers, digital=digital, device="cpu")
    return layer_counts(program, first_samples(data, 1))
