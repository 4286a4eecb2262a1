"""Weight <-> conductance mappings.

A mapping turns one layer's (augmented) weight matrix ``W~`` of shape ``[out, in]`` into a
:class:`LayerEncoding`: target conductances on ``A`` device arrays, how the arrays' currents are combined into the
``S`` signals that the ADCs read (differential pairs are subtracted in analog), and the digital post-processing
that turns those signals back into weight units (a per-column gain: the "bi-scale" digital scale times the
analog mantissa, bit-slice significance, and a digital offset for offset mappings)::

    signal_s = sum_a combine[s, a] * (x @ G_a.T)            (analog, what ADC s digitises)
    y        = sum_s gain[s] * ADC_s(signal_s) + offset * sum(x)   (digital)

With ideal devices and periphery ``y = x @ W~.T`` exactly (up to the bit-sliced mapping's weight quantisation).
Granularity ``"layer"`` uses one scale per layer, ``"column"`` one per output column (crossbar column = output
neuron), the "bi-scale" representation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch

from ..errors import check, check_number
from .effects import Bounds
from .registry import register

Tensor = torch.Tensor
_GRANULARITIES = ("layer", "column")


@dataclass(frozen=True, eq=False)
class LayerEncoding:
    """Nominal analog representation of one layer.

    Attributes
    ----------
    g : Tensor [A, out, in]
        Target (nominal) normalised conductances of the ``A`` device arrays.
    combine : Tensor [S, A]
        Analog combination of array currents into ADC signals (entries in {-1, 0, 1}).
    gain : Tensor [S, out]
        Digital gain per ADC signal and output column (weight units per conductance unit).
    offset : Tensor [out] or None
        Digital offset coefficient: ``y += offset * sum_i x_i`` (offset mappings only).
    """

    g: Tensor
    combine: Tensor
    gain: Tensor
    offset: Tensor | None

    @property
    def n_arrays(self) -> int:
        return self.g.shape[0]

    @property
    def n_signals(self) -> int:
        return self.combine.shape[0]

    def _single(self) -> int | None:
        """Index of the array when there is one signal read from one array with weight +1, else None."""
        if self.n_signals != 1:
            return None
        nz = torch.nonzero(self.combine[0]).flatten().tolist()
        return nz[0] if len(nz) == 1 and float(self.combine[0, nz[0]]) == 1.0 else None

    def signals(self, g: Tensor) -> Tensor:
        """Analog signal matrices ``[..., S, out, in]`` from conductances ``g`` of shape ``[..., A, out, in]``."""
        single = self._single()
        if single is not None:
            return g[..., single:single + 1, :, :]
        rows = []
        for s in range(self.n_signals):
            acc = None
            for a in range(self.n_arrays):
                c = float(self.combine[s, a])
                if c == 0.0:
                    continue
                term = g[..., a, :, :]
                acc = (term * c if c != 1.0 else term) if acc is None else acc.add(term, alpha=c)
            rows.append(acc if acc is not None else torch.zeros_like(g[..., 0, :, :]))
        return rows[0].unsqueeze(-3) if len(rows) == 1 else torch.stack(rows, dim=-3)

    def decode(self, g: Tensor) -> Tensor:
        """Effective weights ``[..., out, in]`` from conductances ``[..., A, out, in]`` (ideal periphery)."""
        sig = self.signals(g)
        if self.n_signals == 1:
            gain = self.gain[0, :, None]
            sig = sig[..., 0, :, :]
            if self.offset is not None:
                return torch.addcmul(self.offset[:, None], sig, gain)
            return sig * gain
        w = (sig * self.gain.unsqueeze(-1)).sum(dim=-3)
        return w if self.offset is None else w + self.offset[:, None]


@runtime_checkable
class Mapping(Protocol):
    """What every mapping provides: ``encode(w [out, in], bounds) -> LayerEncoding`` and a ``kind``."""

    kind: ClassVar[str]

    def encode(self, w: Tensor, bounds: Bounds) -> LayerEncoding: ...


def _scale(values: Tensor, granularity: str) -> Tensor:
    """Per-column (``[out, 1]``) or per-layer (broadcast) scale; zeros become 1 to keep the mapping invertible."""
    s = values.amax(dim=1, keepdim=True) if granularity == "column" else values.amax().reshape(1, 1).expand(values.shape[0], 1)
    return torch.where(s > 0, s, torch.ones_like(s))


@register("mapping")
@dataclass(frozen=True, kw_only=True)
class DifferentialMapping:
    """Differential pair: ``|w|`` on one device, its partner at g_min (proportional: zero -> (g_min, g_min)).

    ``m = w / s`` with ``s = max|w|`` per layer or per column; ``G+ = g_min + span relu(m)``,
    ``G- = g_min + span relu(-m)``; the ADC reads ``G+ - G-``; digital gain ``s / span``.
    """

    kind: ClassVar[str] = "differential"
    granularity: str = "layer"

    def __post_init__(self):
        check(self.granularity in _GRANULARITIES, "DifferentialMapping.granularity", self.granularity,
              f"one of {_GRANULARITIES}")

    def encode(self, w, bounds):
        s = _scale(w.abs(), self.granularity)
        m = w / s
        g = torch.stack([m.clamp(min=0), (-m).clamp(min=0)]).mul_(bounds.span).add_(bounds.g_min)
        combine = torch.tensor([[1.0, -1.0]], dtype=w.dtype, device=w.device)
        return LayerEncoding(g=g, combine=combine, gain=(s[:, 0] / bounds.span)[None, :], offset=None)


@register("mapping")
@dataclass(frozen=True, kw_only=True)
class OffsetMapping:
    """One device per weight with a digital offset (not proportional: zero sits mid-range).

    ``symmetric=True``: ``[-s, s]`` with ``s = max|w|`` maps onto ``[g_min, g_max]`` (Xiao et al.);
    ``symmetric=False``: ``[min w, max w]`` does (paper 1, both ends use the full device range).
    The offset is removed digitally: ``y = gain * (x @ G.T) + offset * sum(x)``.
    """

    kind: ClassVar[str] = "offset"
    granularity: str = "layer"
    symmetric: bool = True

    def __post_init__(self):
        check(self.granularity in _GRANULARITIES, "OffsetMapping.granularity", self.granularity,
              f"one of {_GRANULARITIES}")
        check(isinstance(self.symmetric, bool), "OffsetMapping.symmetric", self.symmetric, "true or false")

    def encode(self, w, bounds):
        if self.symmetric:
            s = _scale(w.abs(), self.granularity)
            lo, hi = -s, s
        else:
            if self.granularity == "column":
                lo, hi = w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True)
            else:
                lo = w.amin().reshape(1, 1).expand(w.shape[0], 1)
                hi = w.amax().reshape(1, 1).expand(w.shape[0], 1)
            hi = torch.where(hi > lo, hi, lo + 1.0)
        gain = (hi - lo) / bounds.span
        g = ((w - lo) / gain + bounds.g_min)[None]
        combine = torch.ones(1, 1, dtype=w.dtype, device=w.device)
        offset = (lo - bounds.g_min * gain)[:, 0]
        return LayerEncoding(g=g, combine=combine, gain=gain[:, 0][None, :], offset=offset)


@register("mapping")
@dataclass(frozen=True, kw_only=True)
class BitSlicedMapping:
    """Bit slicing: ``|w|/s`` quantised to ``n_slices * bits_per_slice`` bits, each slice on its own differential pair.

    Slice k (k = 0 is the least significant) holds digit ``d_k`` in ``[0, 2^b - 1]`` as ``g_min + span d_k/(2^b-1)``
    on the positive or negative array; each slice has its own ADC signal and the digits are recombined digitally
    by shift-and-add (gain ``s 2^(b k) (2^b - 1) / ((2^(n b) - 1) span)``).
    """

    kind: ClassVar[str] = "bit_sliced"
    n_slices: int = 4
    bits_per_slice: int = 2
    granularity: str = "layer"

    def __post_init__(self):
        check_number("BitSlicedMapping.n_slices", self.n_slices, low=1, high=16, integer=True)
        check_number("BitSlicedMapping.bits_per_slice", self.bits_per_slice, low=1, high=8, integer=True)
        check(self.n_slices * self.bits_per_slice <= 24, "BitSlicedMapping.n_slices * bits_per_slice",
              self.n_slices * self.bits_per_slice, "at most 24 bits in all (float32 exactness)")
        check(self.granularity in _GRANULARITIES, "BitSlicedMapping.granularity", self.granularity,
              f"one of {_GRANULARITIES}")

    @property
    def total_levels(self) -> int:
        return 2 ** (self.n_slices * self.bits_per_slice) - 1

    def encode(self, w, bounds):
        n, b = self.n_slices, self.bits_per_slice
        base, digit_max = 2 ** b, 2 ** b - 1
        s = _scale(w.abs(), self.granularity)
        q = torch.round(w.abs() / s * self.total_levels).to(torch.int64)
        sign_pos = (w >= 0)
        arrays, gains = [], []
        for k in range(n):
            d = ((q // base ** k) % base).to(w.dtype) / digit_max
            arrays.append(torch.where(sign_pos, d, torch.zeros_like(d)))
            arrays.append(torch.where(sign_pos, torch.zeros_like(d), d))
            gains.append(s[:, 0] * (base ** k) * digit_max / (self.total_levels * bounds.span))
        g = torch.stack(arrays).mul_(bounds.span).add_(bounds.g_min)
        combine = torch.zeros(n, 2 * n, dtype=w.dtype, device=w.device)
        for k in range(n):
            combine[k, 2 * k], combine[k, 2 * k + 1] = 1.0, -1.0
        return LayerEncoding(g=g, combine=combine, gain=torch.stack(gains), offset=None)
