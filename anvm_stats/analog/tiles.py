"""Layers on crossbar tiles: row blocks x column blocks, each tile's partial sums digitised by its own ADC before
the digital accumulation over row blocks, with read and output noise drawn per MVM.

Every analog layer is viewed as a matrix product (convolutions through im2col: ``in = C * prod(kernel)``). The
augmented inputs ``[s, x_0, ..., x_{in-1}]`` (``s`` the bias row of a ``"column"`` bias, in the first row block)
are split into ``R`` row blocks of ``rows``; the outputs into ``C`` column blocks of ``cols``. For K chips at once,
with the ADC signals' matrices ``W [K, S, R, O, rows]`` and inputs ``X [K or 1, 1, R, rows, N]`` (``N`` = samples
x output pixels), all partial sums are one batched product (:func:`tile_mvm`)::

    P[k, s, r, o, n] = sum_j W[k, s, r, o, j] X[k, r, j, n]      + read noise + output noise   (analog)
    y[k, o, n]       = sum_{s, r} gain[s, r, o] ADC_{s,r,o}(P) + sum_r offset[r, o] sum_j X[k, r, j, n]  (digital)

Read noise: a device read at conductance ``g`` fluctuates by ``sd(g) Z`` (``read_sd`` of the read effect), fresh for
every input vector; the partial sum's fluctuation is then exactly Gaussian with variance
``sum_j X_j^2 sum_a combine[s, a]^2 sd(G_a)_j^2``, drawn per (sample, signal, tile, output, pixel) from
:class:`~anvm_stats.sample_rng.SampleNoise`. What is not modelled: noise correlated between MVMs (1/f drift within a
batch is drawn independently per MVM), read effects without ``read_sd`` (drawn per forward in the weight domain),
IR drop (the parasitics hook of :func:`tile_mvm`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..counter_rng import CounterStream
from ..hardware.effects import Bounds
from ..hardware.mapping import LayerEncoding
from ..hardware.parasitics import Parasitics, effective_conductance
from ..hardware.periphery import MAX_CALIBRATION_VALUES, quantize
from ..hardware.tile import Tile

Tensor = torch.Tensor
#: calibration quantiles are computed on at most this many values at once
QUANTILE_CHUNK = 1 << 23


@dataclass(frozen=True, eq=False)
class TileLayout:
    """How one analog layer sits on tiles.

    Attributes
    ----------
    tile : Tile
        Tile size and options (a single tile of the layer's size for untiled layers run per MVM).
    n_rows : int
        Augmented inputs (``in + 1`` with a column bias, whose row comes first).
    bias_row : bool
    gain : Tensor [S, R, O]
        Digital gain of each ADC signal, row block and output.
    offset : Tensor [R, O] or None
        Digital offset coefficient per row block (offset mappings).
    """

    tile: Tile
    n_rows: int
    bias_row: bool
    gain: Tensor
    offset: Tensor | None

    @property
    def row_blocks(self) -> int:
        return -(-self.n_rows // self.tile.rows)

    @property
    def col_blocks(self) -> int:
        return -(-self.gain.shape[-1] // self.tile.cols)

    @property
    def n_tiles(self) -> int:
        return self.row_blocks * self.col_blocks

    def to(self, device) -> "TileLayout":
        return TileLayout(self.tile, self.n_rows, self.bias_row, self.gain.to(device),
                          None if self.offset is None else self.offset.to(device))

    def blocks(self, t: Tensor) -> Tensor:
        """``[..., O, n_rows]`` (bias row first) -> ``[..., R, O, rows]`` (zero rows pad the last block)."""
        rows, R = self.tile.rows, self.row_blocks
        t = F.pad(t, (0, R * rows - self.n_rows))
        return t.unflatten(-1, (R, rows)).transpose(-2, -3).contiguous()

    def decode(self, sig: Tensor) -> Tensor:
        """Effective weights ``[..., O, n_rows]`` (bias row first) from signal matrices ``[..., S, O, n_rows]``."""
        r_of = torch.arange(self.n_rows, device=sig.device) // self.tile.rows
        w = (sig * self.gain[:, r_of, :].transpose(-1, -2)).sum(-3)
        if self.offset is not None:
            w = w + self.offset[r_of, :].transpose(0, 1)
        return w


def bias_first(w: Tensor, b: Tensor | None) -> Tensor:
    """``[..., O, n_rows]``: the bias-column values ``b`` ``[..., O, 1]`` (or none) before the weights."""
    return w if b is None else torch.cat([b, w], dim=-1)


def encode_tiles(mapping, w_aug: Tensor, n_in: int, bias_row: bool, tile: Tile, bounds: Bounds):
    """Map a layer's augmented weights ``w_aug`` ``[O, n_in (+1 bias column, last)]`` onto tiles.

    Returns ``(encoding, layout)``: a :class:`~anvm_stats.hardware.mapping.LayerEncoding` whose ``g`` has the
    program's layout (bias column last), and the :class:`TileLayout` with the gains and offsets per row block.
    ``tile.scale == "tile"`` maps every (row block, column block) on its own."""
    O = w_aug.shape[0]
    wb = bias_first(w_aug[:, :n_in], w_aug[:, n_in:] if bias_row else None)
    n_rows = wb.shape[1]
    R, C = -(-n_rows // tile.rows), -(-O // tile.cols)
    if tile.scale == "layer":
        enc = mapping.encode(w_aug, bounds)
        gain = enc.gain[:, None, :].expand(-1, R, -1).contiguous()
        offset = None if enc.offset is None else enc.offset[None, :].expand(R, -1).contiguous()
        return enc, TileLayout(tile, n_rows, bias_row, gain, offset)
    g = gain = offset = combine = None
    for r in range(R):
        r0, r1 = r * tile.rows, min(n_rows, (r + 1) * tile.rows)
        for c in range(C):
            c0, c1 = c * tile.cols, min(O, (c + 1) * tile.cols)
            e = mapping.encode(wb[c0:c1, r0:r1], bounds)
            if g is None:
                combine = e.combine
                g = wb.new_empty(e.n_arrays, O, n_rows)
                gain = wb.new_empty(e.n_signals, R, O)
                offset = None if e.offset is None else wb.new_empty(R, O)
            g[:, c0:c1, r0:r1] = e.g
            gain[:, r, c0:c1] = e.gain
            if offset is not None:
                offset[r, c0:c1] = e.offset
    g_prog = torch.cat([g[..., 1:], g[..., :1]], dim=-1) if bias_row else g
    # the encoding's gain/offset are those of the first row block (only the tiled path reads per-block values)
    enc = LayerEncoding(g=g_prog, combine=combine, gain=gain[:, 0].contiguous(),
                        offset=None if offset is None else offset[0].contiguous())
    return enc, TileLayout(tile, n_rows, bias_row, gain, offset)


def groups(plan) -> int:
    """Convolution groups of a layer (1 for linear layers)."""
    return int(plan.conv.get("groups", 1)) if plan.op != "linear" else 1


def full_inputs(plan) -> int:
    """Inputs of a layer's crossbar rows: ``in_features`` times the groups (a grouped convolution's arrays are laid
    out block-diagonally over all ``C * prod(kernel)`` im2col rows)."""
    return plan.in_features * groups(plan)


def expand_groups(plan, t: Tensor) -> Tensor:
    """``[..., O, in]`` per-group values -> block-diagonal ``[..., O, groups * in]`` (zeros off the own group);
    ``t`` itself for ungrouped layers."""
    g = groups(plan)
    if g == 1:
        return t
    *lead, O, n = t.shape
    full = t.new_zeros(*lead, g, O // g, g, n)
    full.diagonal(dim1=-4, dim2=-2).copy_(t.reshape(*lead, g, O // g, n).movedim(-3, -1))
    return full.reshape(*lead, O, g * n)


def single_tile(plan) -> TileLayout:
    """The layout of an untiled layer run per MVM: one tile of the layer's size, one ADC range per signal."""
    enc = plan.encoding
    bias_row = plan.bias_mode == "column"
    n_rows = full_inputs(plan) + int(bias_row)
    tile = Tile(rows=max(1, n_rows), cols=max(1, plan.out_features), adc_ranges="layer")
    offset = None if enc.offset is None else enc.offset[None, :]
    return TileLayout(tile, n_rows, bias_row, enc.gain[:, None, :], offset)


def signal_blocks(plan, layout: TileLayout, arrays: Tensor, bias: Tensor | None) -> Tensor:
    """Per-signal tile matrices ``[K, S, R, O, rows]`` from per-array conductances ``[K, A, O, in]`` (and bias
    column ``[K, A, O, 1]``)."""
    enc = plan.encoding
    return layout.blocks(bias_first(enc.signals(arrays), None if bias is None else enc.signals(bias)))


def variance_blocks(plan, layout: TileLayout, var: Tensor, bias_var: Tensor | None) -> Tensor:
    """Per-signal read-noise variances ``[K, S, R, O, rows]`` from per-device variances ``[K, A, O, in]``:
    ``sum_a combine[s, a]^2 var_a`` (devices fluctuate independently)."""
    c2 = plan.encoding.combine.to(var.dtype) ** 2                        # [S, A]
    v = torch.einsum("sa,kaoi->ksoi", c2, var)
    vb = None if bias_var is None else torch.einsum("sa,kaoi->ksoi", c2, bias_var)
    return layout.blocks(bias_first(v, vb))


def wired_blocks(g: Tensor, parasitics: Parasitics | None, cols: int | None = None) -> Tensor:
    """Every crossbar of the tile blocks ``g`` ``[..., R, O, rows]`` replaced by its effective conductance under
    wire resistance (``HardwareSpec.parasitics``, IR drop; the same shape).

    ``g`` holds one device array's conductances (not a differential signal); the outputs are cut into crossbars of
    ``cols`` columns (word lines x bit lines ``[..., R, C, rows, cols]``), each solved by
    :func:`anvm_stats.hardware.parasitics.effective_conductance`. A chip's crossbars are solved once, when it is
    loaded, not at every forward. Ideal wires (or none) return ``g`` itself."""
    if parasitics is None or parasitics.is_ideal:
        return g
    O, rows = g.shape[-2], g.shape[-1]
    cols = cols or O
    parasitics.check_tile(rows, cols)
    C = -(-O // cols)
    gt = F.pad(g, (0, 0, 0, C * cols - O)).unflatten(-2, (C, cols)).transpose(-1, -2)   # [..., R, C, rows, cols]
    geff = effective_conductance(gt.reshape(-1, rows, cols), parasitics).reshape(gt.shape)
    return geff.transpose(-1, -2).flatten(-3, -2)[..., :O, :]


def tile_mvm(g: Tensor, v: Tensor, parasitics: Parasitics | None = None, cols: int | None = None) -> Tensor:
    """The analog product of every tile: ``[..., R, O, rows] @ [..., R, rows, N] -> [..., R, O, N]``, through
    wires of resistance ``parasitics`` (:func:`wired_blocks`, crossbars of ``cols`` columns)."""
    return torch.matmul(wired_blocks(g, parasitics, cols), v)


def _conv_geometry(plan, x: Tensor):
    """``(x [N0, C, *spatial], kernel, dilation, pads ((lo, hi) per spatial dim), stride, out sizes)`` of a conv
    layer's input, conv1d as a height-1 conv2d; ``padding="same"``/``"valid"`` as numbers."""
    c = plan.conv
    pad = c["padding"]
    if plan.op == "conv1d":
        xs, k, d, s = x.unsqueeze(2), (1, plan.kernel[0]), (1, c["dilation"][0]), (1, c["stride"][0])
        pad = pad if isinstance(pad, str) else (0, pad[0])
    else:
        xs, k, d, s = x, tuple(plan.kernel), tuple(c["dilation"]), tuple(c["stride"])
    nd = len(k)
    if pad == "valid":
        pads = ((0, 0),) * nd
    elif pad == "same":            # torch's "same": total d (k - 1), the extra one at the end
        tot = [d[i] * (k[i] - 1) for i in range(nd)]
        pads = tuple((t // 2, t - t // 2) for t in tot)
    else:
        pads = tuple((q, q) for q in pad)
    out = tuple((xs.shape[2 + i] + pads[i][0] + pads[i][1] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(nd))
    return xs, k, d, pads, s, out


def tile_inputs(x: Tensor, plan, layout: "TileLayout", B: int) -> tuple[Tensor, tuple]:
    """The tiles' input vectors ``[Kx, R, rows, B * L]`` (``Kx`` 1 for a shared input, else K; im2col for
    convolutions, the bias row first, zero rows padding the last block) and the output's spatial shape.

    Built with one strided copy into the final layout (no ``unfold`` temporaries)."""
    R, rows = layout.row_blocks, layout.tile.rows
    first = int(layout.bias_row)
    n_in = full_inputs(plan)
    Kx = x.shape[0] // B
    if plan.op == "linear":
        spatial, L = (), 1
        src = x.reshape(Kx, B, n_in).transpose(1, 2)                                    # [Kx, in, B]
    else:
        xs, k, d, p, s, spatial = _conv_geometry(plan, x)
        flat = [v for pr in reversed(p) for v in pr]                   # F.pad: the last dim first
        xp = F.pad(xs, flat) if any(flat) else xs
        C, nd = xp.shape[1], len(k)
        sN, sC, *sp = xp.stride()
        view = xp.as_strided((Kx, B, C, *k, *spatial),
                             (B * sN, sN, sC, *[d[i] * sp[i] for i in range(nd)], *[s[i] * sp[i] for i in range(nd)]),
                             xp.storage_offset())
        src = view.permute(0, 2, *range(3, 3 + nd), 1, *range(3 + nd, 3 + 2 * nd))   # [Kx, C, *k, B, *out]
        L = 1
        for n in spatial:
            L *= n
        spatial = spatial[1:] if plan.op == "conv1d" else spatial
    buf = x.new_empty(Kx, R * rows, B * L)
    if first:
        buf[:, 0].fill_(plan.bias_scale)
    buf[:, first + n_in:].zero_()
    buf[:, first:first + n_in].view(src.shape).copy_(src)
    return buf.view(Kx, R, rows, B * L), spatial


def group_ranges(v: Tensor, percentile: float, minmax: bool) -> tuple[Tensor, Tensor]:
    """Per-row ranges ``(lo [G], hi [G])`` of values ``[G, n]``: the inner ``percentile`` (``[0, P_p]`` for
    non-negative rows), or min..max with ``minmax``; as :func:`~anvm_stats.hardware.periphery.calibrate_range`."""
    v = v.detach().float()
    step = v.shape[1] // max(1, MAX_CALIBRATION_VALUES // v.shape[0]) + 1 if v.numel() > MAX_CALIBRATION_VALUES else 1
    v = v[:, ::step]
    vmin = v.amin(1)
    if minmax:
        hi, lo_p = v.amax(1), vmin
    else:
        p = percentile / 100.0
        rows = max(1, QUANTILE_CHUNK // v.shape[1])
        q = torch.cat([torch.quantile(v[i:i + rows], torch.tensor([1.0 - p, p], device=v.device), dim=1).T
                       for i in range(0, v.shape[0], rows)])
        lo_p, hi = q[:, 0], q[:, 1]
    lo = torch.where(vmin >= 0, torch.zeros_like(vmin), lo_p)
    hi = torch.where(hi > lo, hi, lo + torch.clamp(lo.abs(), min=1.0) * 1e-6)
    return lo, hi


def calibrate_tiles(P: Tensor, layout: TileLayout, percentile: float) -> tuple[Tensor, Tensor]:
    """ADC ranges ``(lo, hi)`` ``[S, R, O, 1]`` from the nominal chip's partial sums ``P`` ``[1, S, R, O, N]``."""
    S, R, O, N = P.shape[1:]
    t = layout.tile
    mm = t.adc_calibration == "minmax"
    v = P[0]
    if t.adc_ranges == "layer":
        lo, hi = group_ranges(v.reshape(S, -1), percentile, mm)
        return (lo.view(S, 1, 1, 1).expand(S, R, O, 1).contiguous(), hi.view(S, 1, 1, 1).expand(S, R, O, 1).contiguous())
    if t.adc_ranges == "column":
        lo, hi = group_ranges(v.reshape(S * R * O, N), percentile, mm)
        return lo.view(S, R, O, 1), hi.view(S, R, O, 1)
    lo, hi = v.new_empty(S, R, O, 1), v.new_empty(S, R, O, 1)
    for c0 in range(0, O, t.cols):
        c1 = min(O, c0 + t.cols)
        l_, h_ = group_ranges(v[:, :, c0:c1].reshape(S * R, -1), percentile, mm)
        lo[:, :, c0:c1] = l_.view(S, R, 1, 1)
        hi[:, :, c0:c1] = h_.view(S, R, 1, 1)
    return lo, hi


def noise_normals(noise, layer: int, kind: str, first: int, B: int, shape: tuple, device, step: int = 0) -> Tensor:
    """Per-MVM normals as a ``[K, S, R, O, B, L]`` view (``shape = (S, R, O, L)``, ``L`` output pixels or tokens
    per sample), keyed by each sample's index (drawn sample-major; the view adds them to partial sums
    ``[K, S, R, O, B*L]`` without a copy)."""
    S, R, O, L = shape
    z = noise.normal(layer, kind, first, B, S * R * O * L, device, step=step, scratch=True)
    return z.view(-1, B, S, R, O, L).permute(0, 2, 3, 4, 1, 5)


def tiled_forward(module, x: Tensor, shared: bool, K: int, B: int, T: int = 1, step: int = 0) -> Tensor:
    """One tiled / per-MVM analog layer for K chips: ``x`` ``[B*T, ...]`` (shared) or ``[K*B*T, ...]`` (``T``
    tokens per sample of a linear layer, else 1) -> outputs ``[K, B*T, O, *spatial]`` before the digital bias (see
    the module docstring); ``step`` numbers repeated calls on the same samples (noise key)."""
    p, rt = module.plan, module.runtime
    layout = rt.layout
    X, spatial = tile_inputs(x, p, layout, B * T)
    X = X.unsqueeze(1)                                              # [Kx, 1, R, rows, N]
    R = layout.row_blocks
    L = X.shape[-1] // B
    P = tile_mvm(rt.weight, X)             # [K, S, R, O, B*L]; wires already in the loaded blocks
    if rt.parasitics is not None:                                   # per-array currents -> ADC signals
        P = torch.einsum("sa,karon->ksron", p.encoding.combine.to(P.dtype), P)
    S, O = P.shape[1], P.shape[3]
    module.tile_floats = P.numel() // (P.shape[0] * B)     # partial sums per instance and sample (chunk sizes)
    if rt.calibrating:
        lo, hi = calibrate_tiles(P, layout, module.adc_percentile)
        module.signal_lo, module.signal_hi = module.widen_ranges(lo, hi, step)
    lo, hi = module.signal_lo, module.signal_hi
    if lo is not None and lo.dim() == 1:                             # per-signal ranges of an untiled layer
        lo, hi = lo.view(-1, 1, 1, 1), hi.view(-1, 1, 1, 1)
    if not rt.calibrating and rt.mvm_noise is not None:
        Pv = P.view(K, S, R, O, B, L)
        if rt.read_var is not None:
            if rt.read_var.dim() == 1:      # the same variance for every device: [S] per signal
                sd = ((X * X).sum(3, keepdim=True) * rt.read_var.view(1, -1, 1, 1, 1)).sqrt_()
            else:
                sd = torch.matmul(rt.read_var, X * X).sqrt_()
            z = noise_normals(rt.mvm_noise, rt.layer, "read", rt.first_sample, B, (S, R, O, L), P.device, step)
            Pv.addcmul_(sd.view(*sd.shape[:-1], B, L), z)
        if rt.output_noise > 0:
            z = noise_normals(rt.mvm_noise, rt.layer, "output", rt.first_sample, B, (S, R, O, L), P.device, step)
            Pv.addcmul_(z, ((hi - lo) * rt.output_noise).unsqueeze(-1))
    elif not rt.calibrating and rt.output_noise > 0 and rt.noise_sources is not None:
        # callers that give per-forward sources (per-chip calibration): one draw per forward, as untiled layers
        src = rt.noise_sources
        z = src.normal(P.shape[1:], P.dtype) if isinstance(src, CounterStream) else torch.stack(
            [torch.randn(P.shape[1:], generator=g, device=P.device, dtype=P.dtype) for g in src])
        P = P.addcmul_(z, (hi - lo) * rt.output_noise)
    gain = layout.gain.unsqueeze(-1)                                 # [S, R, O, 1]
    if rt.adc_levels is not None and not (rt.ste or P.requires_grad):
        # ADC codes in place, then gain * (lo + lsb * code) summed over signals and row blocks
        lsb = (hi - lo) / (rt.adc_levels - 1)
        P.sub_(lo).div_(lsb).round_().clamp_(0, rt.adc_levels - 1)
        y = P.mul_(gain * lsb).sum(dim=(1, 2)).add_((gain * lo).sum(dim=(0, 1)))     # [K, O, B*L]
    else:
        if rt.adc_levels is not None:
            P = quantize(P, lo, hi, rt.adc_levels, ste=rt.ste)
        y = (P * gain).sum(dim=(1, 2))                               # [K, O, B*L]
    if layout.offset is not None and groups(p) == 1:
        y = y + torch.matmul(layout.offset.t(), X.sum(dim=3)[:, 0])
    elif layout.offset is not None:     # each output's offset times the sum of its own group's inputs
        ones = X.new_ones(O, p.in_features)
        mask = layout.blocks(bias_first(expand_groups(p, ones), X.new_ones(O, 1) if layout.bias_row else None))
        y = y + torch.matmul(mask * layout.offset.unsqueeze(-1), X[:, 0]).sum(dim=1)
    y = y.view(K, O, B * T, *spatial) if spatial else y.view(K, O, B * T)
    return y.movedim(2, 1).contiguous()          # [K, B, O, *spatial] (one copy, plain strides for the next op)
