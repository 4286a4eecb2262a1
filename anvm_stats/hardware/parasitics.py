"""IR drop: parasitic wire resistance of a crossbar tile, exact (nodal analysis) or to first order.

The circuit
-----------
A tile has ``rows`` word lines (index ``i``, the inputs) crossing ``cols`` bit lines (index ``j``, the outputs).
Cell ``(i, j)`` is a conductance ``G[i, j]`` between word-line node ``(i, j)`` and bit-line node ``(i, j)``::

    v_0 --[r_driver]--[r_wl]--o------[r_wl]------o------ ... --o          word line 0
                              |G00               |G01          |G0,C-1
                              o bit line 0       o bit line 1  o
                           [r_bl]             [r_bl]        [r_bl]
    v_1 --[r_driver]--[r_wl]--o------[r_wl]------o------ ... --o          word line 1
                              |G10               |G11          |
                              o                  o             o
                           [r_bl]             [r_bl]        [r_bl]
                              :                  :             :
                              o (row rows-1)     o             o
                           [r_bl]             [r_bl]        [r_bl]
                              |                  |             |
                            TIA_0 (0 V)        TIA_1 ...     TIA_C-1       currents I_j

* **Inputs** drive the word lines at the column-0 end: an ideal voltage source ``v_i`` with output resistance
  ``r_driver`` in series with the first word-line segment ``r_wl``; each further segment ``r_wl`` joins the nodes
  of adjacent columns ``j - 1`` and ``j``. The far end (after column ``cols - 1``) is open.
* **Outputs** are sensed at the row ``rows - 1`` end of each bit line by an ideal transimpedance amplifier holding
  it at virtual ground (0 V); a segment ``r_bl`` joins the nodes of adjacent rows and the last row's node to the
  amplifier. The far end (before row 0) is open. Cell ``(0, cols - 1)`` is farthest from both.
* **Units**: conductances are normalised so the device's maximum (on-state) conductance ``G_max = 1``
  (:class:`~anvm_stats.hardware.effects.Bounds`); resistances are in units of the on-resistance
  ``R_on = 1 / G_max``, so ``r_wire = R_segment * G_max`` (Xiao et al.'s normalised parasitic ``Rp * Gmax``,
  REFERENCES.md paper 3). Inputs are voltages in the DAC's units and the column currents come out in
  ``volt * G_max``: with no wire resistance ``I = v @ G`` exactly.

The circuit is linear, so for every conductance matrix there is an *effective conductance* ``G_eff`` with
``I = v @ G_eff`` for all inputs: IR drop changes what a programmed chip computes, not how the product is run.
:func:`effective_conductance` returns it (once per programmed tile), :func:`column_currents` the currents.

Modes
-----
``"exact"``
    Nodal analysis of the whole tile (:mod:`.nodal`): ``2 rows cols`` node voltages from Kirchhoff's current law;
    ``G_eff`` from ``rows`` unit inputs, by sparse LU on CPU and by batched preconditioned conjugate gradients on
    other devices. Refused for tiles larger than ``max_exact_size`` cells.
``"first_order"``
    One linearisation step from the ideal solution (the first term of the expansion of the node voltages in the
    wire resistance): the ideal cell currents ``G_ij v_i`` flow through the wires, the drops they cause along the
    word lines (cumulative current toward the driver) and the bit lines (cumulative current toward the sense
    amplifier) lower each cell's voltage, and the cell currents are taken again at those voltages. For this
    circuit the step collapses to ``G_eff = G * (1 - r_driver g_i - r_wl A - r_bl T)`` with ``g_i`` the row sums,
    ``A_ij = sum_m G_im (min(j, m) + 1)`` and ``T_ij = sum_m G_mj (rows - max(i, m))``: cumulative sums of the
    segment currents, a few passes over the tile. Its error is second order in the resistance: relative to the IR-drop effect itself (``|G_eff - G|``)
    it is about ``r_wire * n^2 * mean(G)`` on an ``n x n`` tile (a fraction 0.3-0.6 of that in the tests). It
    breaks down -- overestimates the drop, and finally gives negative conductances -- when ``r_wire n^2 mean(G)``
    approaches 1 (the tabulation in ``tests/test_parasitics.py`` and README's "IR drop" section).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import ConfigError, check, check_number
from . import nodal

Tensor = torch.Tensor

MODES = ("exact", "first_order")
#: largest allowed ``max_exact_size`` (cells of one tile solved exactly)
EXACT_SIZE_LIMIT = 1 << 20
_FIELDS = ("r_wire", "r_wordline", "r_bitline", "r_driver", "mode", "max_exact_size")


@dataclass(frozen=True, kw_only=True)
class Parasitics:
    """Wire resistance of every crossbar tile (the circuit and units are in the module docstring).

    Parameters
    ----------
    r_wire : float >= 0
        Resistance of one wire segment between adjacent cells, in units of the on-resistance ``1 / G_max``.
    r_wordline, r_bitline : float >= 0, optional
        Word-line and bit-line segment resistances when they differ; each defaults to ``r_wire``.
        ``r_wordline=0`` with ``r_bitline > 0`` is Xiao et al.'s bit-line-only model.
    r_driver : float >= 0
        Output resistance of each input driver, in series with the first word-line segment.
    mode : {"exact", "first_order"}
        Nodal analysis of the tile, or the first-order correction (fast; see the module docstring).
    max_exact_size : int in [1, 2**20]
        Largest tile (``rows * cols`` cells) that ``mode="exact"`` solves; larger tiles are refused.
    """

    r_wire: float = 0.0
    r_wordline: float | None = None
    r_bitline: float | None = None
    r_driver: float = 0.0
    mode: str = "first_order"
    max_exact_size: int = 256 * 256

    def __post_init__(self):
        for name in ("r_wire", "r_driver"):
            check_number(f"Parasitics.{name}", getattr(self, name), low=0.0)
        for name in ("r_wordline", "r_bitline"):
            if getattr(self, name) is not None:
                check_number(f"Parasitics.{name}", getattr(self, name), low=0.0)
        check(self.mode in MODES, "Parasitics.mode", self.mode, f"one of {MODES}")
        check_number("Parasitics.max_exact_size", self.max_exact_size, low=1, high=EXACT_SIZE_LIMIT, integer=True)

    @property
    def segment_resistances(self) -> tuple[float, float]:
        """(word-line segment, bit-line segment) resistance, the overrides resolved."""
        wl = self.r_wire if self.r_wordline is None else self.r_wordline
        bl = self.r_wire if self.r_bitline is None else self.r_bitline
        return float(wl), float(bl)

    @property
    def is_ideal(self) -> bool:
        """True when every resistance is zero: the tile computes ``v @ G`` exactly."""
        return self.segment_resistances == (0.0, 0.0) and self.r_driver == 0

    def check_tile(self, rows: int, cols: int) -> None:
        """Refuse a ``rows x cols`` tile that ``mode="exact"`` would not solve.

        Raises
        ------
        ConfigError
            Naming ``Parasitics.mode`` when the tile has more than ``max_exact_size`` cells in exact mode.
        """
        if self.mode == "exact" and not self.is_ideal and rows * cols > self.max_exact_size:
            raise ConfigError("Parasitics.mode", self.mode,
                              f"'first_order' for a {rows}x{cols} tile ({rows * cols} cells), or 'exact' with "
                              f"Parasitics.max_exact_size >= {rows * cols} (now {self.max_exact_size}, at most "
                              f"{EXACT_SIZE_LIMIT})")

    def with_knob(self, name: str, value) -> Parasitics | None:
        """A copy with sweep knob ``r_wire`` set (``None`` for any other knob)."""
        return replace(self, r_wire=value) if name == "r_wire" else None

    def to_dict(self) -> dict:
        """Plain data (the fields; ``None`` overrides left out)."""
        return {k: getattr(self, k) for k in _FIELDS if getattr(self, k) is not None}

    @classmethod
    def from_dict(cls, data: dict, where: str = "parasitics") -> Parasitics:
        """Build from plain data, refusing unknown keys by name (``where`` prefixes field names in errors)."""
        if not isinstance(data, dict):
            raise ConfigError(where, data, f"a table with optional keys {', '.join(_FIELDS)}")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}", data[unknown[0]], f"one of {', '.join(_FIELDS)}")
        try:
            return cls(**data)
        except ConfigError as err:
            raise ConfigError(f"{where}.{err.field.removeprefix('Parasitics.')}", err.value, err.allowed) from None


def _check_conductances(g: Tensor) -> None:
    check(isinstance(g, Tensor) and g.dim() in (2, 3) and g.is_floating_point() and g.numel() > 0, "conductances",
          getattr(g, "shape", g), "a floating-point Tensor [rows, cols] or [K, rows, cols]")
    lo, hi = torch.aminmax(g)
    if not (bool(lo >= 0) and bool(torch.isfinite(hi))):                           # NaN fails lo >= 0
        bad = g[~torch.isfinite(g) | (g < 0)].reshape(-1)[0].item()
        raise ConfigError("conductances", bad, "finite, non-negative conductances (G_max = 1)")


def first_order_conductance(g: Tensor, r_wordline: float, r_bitline: float, r_driver: float) -> Tensor:
    """First-order effective conductance ``G * (1 - r_driver g_i - r_wl A - r_bl T)`` (module docstring).

    Parameters
    ----------
    g : Tensor [..., rows, cols]
        Cell conductances.
    r_wordline, r_bitline, r_driver : float >= 0
        Segment and driver resistances (units of ``1 / G_max``).

    Returns
    -------
    Tensor [..., rows, cols]
        ``G_eff`` with ``I ~= v @ G_eff``; cost: a few cumulative sums over the tile.
    """
    # word lines: segment k carries the suffix sum Q_ik = sum_{m >= k} G_im; A_ij = sum_{k <= j} Q_ik
    prefix = g.cumsum(-1)
    row_sum = prefix[..., -1:]                                                     # g_i
    factor = torch.sub(row_sum, prefix).add_(g).cumsum_(-1).mul_(-r_wordline)      # -r_wl A
    if r_driver:
        factor.sub_(row_sum, alpha=r_driver)
    # bit lines: the segment below row k carries P_kj = sum_{m <= k} G_mj; T_ij = sum_{k >= i} P_kj
    # (on the transpose: cumulative sums along the last axis are the fast ones)
    p = g.mT.contiguous().cumsum(-1)
    t = torch.sub(p.sum(-1, keepdim=True), p.cumsum(-1)).add_(p)
    return g * factor.sub_(t.mT, alpha=r_bitline).add_(1.0)


def effective_conductance(g: Tensor, parasitics: Parasitics) -> Tensor:
    """The conductances a tile with wire resistance acts as: ``I = v @ G_eff`` for every input ``v``.

    Parameters
    ----------
    g : Tensor [rows, cols] or [K, rows, cols]
        Programmed cell conductances of one physical tile (every column at its place: both devices of a
        differential pair, bias and slice columns), normalised so ``G_max = 1``; K chip instances.
    parasitics : Parasitics
        Wire resistances and mode.

    Returns
    -------
    Tensor, shape and dtype of ``g``
        ``g`` itself when ``parasitics.is_ideal``; otherwise ``G_eff``. First order is differentiable in ``g``;
        exact mode computes in float64 on a detached copy (no gradient).

    Raises
    ------
    ConfigError
        For negative or non-finite conductances, or a tile too large for exact mode.
    """
    check(isinstance(parasitics, Parasitics), "parasitics", parasitics, "a Parasitics")
    _check_conductances(g)
    if parasitics.is_ideal:
        return g
    rows, cols = g.shape[-2:]
    parasitics.check_tile(rows, cols)
    r_wl, r_bl = parasitics.segment_resistances
    if parasitics.mode == "first_order":
        return first_order_conductance(g, r_wl, r_bl, parasitics.r_driver)
    g64 = g.detach().to(torch.float64)
    eye = torch.eye(rows, dtype=torch.float64, device=g.device)
    if g.device.type == "cpu":
        out = torch.from_numpy(nodal.solve_scipy(g64.numpy(), eye.numpy(), r_wl, r_bl, parasitics.r_driver))
    else:
        out = nodal.solve_torch(g64, eye, r_wl, r_bl, parasitics.r_driver)
    return out.to(dtype=g.dtype, device=g.device)


def column_currents(g: Tensor, v: Tensor, parasitics: Parasitics) -> Tensor:
    """Currents into the sense amplifiers of tiles ``g`` driven by inputs ``v``.

    Parameters
    ----------
    g : Tensor [rows, cols] or [K, rows, cols]
        Cell conductances (``G_max = 1``).
    v : Tensor [B, rows] or [K, B, rows]
        Input voltages.
    parasitics : Parasitics
        Wire resistances and mode.

    Returns
    -------
    Tensor [B, cols] or [K, B, cols]
        ``v @ effective_conductance(g, parasitics)``; exactly ``v @ g`` when ``parasitics.is_ideal``.
    """
    check(isinstance(v, Tensor) and v.dim() in (2, 3) and v.shape[-1] == g.shape[-1 - 1], "inputs",
          getattr(v, "shape", v), f"a Tensor [B, {g.shape[-2]}] or [K, B, {g.shape[-2]}] (the tile's rows)")
    if g.dim() == 3 and v.dim() == 3 and v.shape[0] != g.shape[0]:
        raise ConfigError("inputs.shape[0]", v.shape[0], f"the number of conductance matrices K = {g.shape[0]}")
    return v @ effective_conductance(g, parasitics)
