"""Exact nodal analysis of a crossbar tile with wire resistance (the circuit of :mod:`.parasitics`).

Two independent solvers of the same circuit:

:func:`solve_scipy`
    assembles the sparse conductance matrix branch by branch (cells, word-line segments, drivers, bit-line
    segments), factorises it once per conductance matrix with ``scipy.sparse.linalg.splu`` and solves for all
    input vectors at once. The reference.
:func:`solve_torch`
    batched over K conductance matrices and B inputs: the bit-line node voltages solve the Schur complement
    ``(M_b - D M_w^-1 D) V_b = D w_0`` (``D = diag(G)``, ``M_w``/``M_b`` the word-/bit-line blocks, ``w_0`` the
    word-line voltages with the bit lines grounded) by conjugate gradients preconditioned with the bit-line
    blocks; every block is a set of independent tridiagonal line systems (Thomas algorithm, vectorised).

Resistances are plain floats here (units of the device's on-resistance, conductances normalised so ``G_max = 1``);
a segment resistance of zero makes that line one node (a word line with zero driver resistance too is then held
at its input voltage, a bit line at virtual ground).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch

from ..errors import ConfigError

Tensor = torch.Tensor

_GROUND = -1
#: right-hand sides per SuperLU triangular solve (SuperLU is slower with many columns per call than a few)
_RHS_CHUNK = 4


def _source(i):
    """Terminal code of input driver ``i`` (a fixed voltage ``v_i``)."""
    return -2 - i


def _broadcast_inputs(g_shape: tuple, v_shape: tuple) -> tuple[int | None, int, int, int]:
    """(K or None, B, rows, cols) of a solve of ``G [K?, rows, cols]`` with ``v [K?, B, rows]``."""
    if len(g_shape) not in (2, 3) or len(v_shape) not in (2, 3):
        raise ConfigError("conductances/inputs shapes", (g_shape, v_shape),
                          "G [rows, cols] or [K, rows, cols] and v [B, rows] or [K, B, rows]")
    rows, cols = g_shape[-2:]
    if v_shape[-1] != rows:
        raise ConfigError("inputs.shape[-1]", v_shape[-1], f"the tile's rows ({rows})")
    ks = {s[0] for s in (g_shape, v_shape) if len(s) == 3}
    if len(ks) > 1:
        raise ConfigError("conductances/inputs instances", (g_shape[0], v_shape[0]), "the same K in both")
    return (ks.pop() if ks else None), v_shape[-2], rows, cols


# ----------------------------------------------------------------------------------------- scipy reference
def _terminals(rows: int, cols: int, r_wl: float, r_bl: float, r_driver: float):
    """Terminal codes of every cell's word-line and bit-line end ([rows, cols] each) and the unknowns' count."""
    i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    if r_wl > 0:
        wl = i * cols + j
    elif r_driver > 0:
        wl = i.copy()                              # one node per word line
    else:
        wl = _source(i)                            # held at v_i
    n_wl = 0 if r_wl == 0 and r_driver == 0 else int(wl.max()) + 1
    bl = n_wl + i * cols + j if r_bl > 0 else np.full((rows, cols), _GROUND)
    n = n_wl + (rows * cols if r_bl > 0 else 0)
    return wl, bl, n


def _branches(g: np.ndarray, r_wl: float, r_bl: float, r_driver: float):
    """Every two-terminal branch of the tile as (terminal a, terminal b, conductance) arrays."""
    rows, cols = g.shape
    wl, bl, n = _terminals(rows, cols, r_wl, r_bl, r_driver)
    a, b, c = [wl.ravel()], [bl.ravel()], [g.ravel()]                       # the cells
    if r_wl > 0:                                                              # word-line segments
        a.append(wl[:, :-1].ravel()); b.append(wl[:, 1:].ravel())
        c.append(np.full(rows * (cols - 1), 1.0 / r_wl))
    if r_wl + r_driver > 0:                                                   # driver + first segment
        a.append(_source(np.arange(rows))); b.append(wl[:, 0])
        c.append(np.full(rows, 1.0 / (r_driver + r_wl)))
    if r_bl > 0:                                                              # bit-line segments, TIA end
        a.append(bl[:-1, :].ravel()); b.append(bl[1:, :].ravel())
        c.append(np.full((rows - 1) * cols, 1.0 / r_bl))
        a.append(bl[-1, :]); b.append(np.full(cols, _GROUND)); c.append(np.full(cols, 1.0 / r_bl))
    return np.concatenate(a), np.concatenate(b), np.concatenate(c), wl, bl, n


def nodal_system(g: np.ndarray, r_wl: float, r_bl: float, r_driver: float):
    """Sparse nodal equations ``A x = S v`` of one tile.

    Parameters
    ----------
    g : ndarray [rows, cols]
        Cell conductances (``G_max = 1``), non-negative.
    r_wl, r_bl, r_driver : float >= 0
        Word-line segment, bit-line segment and driver resistances (units of ``1 / G_max``).

    Returns
    -------
    A : scipy.sparse.csc_matrix [n, n]
        Conductance matrix of the unknown node voltages.
    S : scipy.sparse.csc_matrix [n, rows]
        Source matrix: right-hand side for input voltages ``v [rows]`` is ``S @ v``.
    wl, bl : ndarray of int [rows, cols]
        Terminal of each cell's word-line / bit-line end: an unknown's index (>= 0), -1 for ground (virtual
        ground), ``-2 - i`` for input ``i``.
    """
    a, b, c, wl, bl, n = _branches(np.asarray(g, dtype=np.float64), r_wl, r_bl, r_driver)
    rows = g.shape[0]
    ua, ub = a >= 0, b >= 0
    both = ua & ub
    ri = np.concatenate([a[ua], b[ub], a[both], b[both]])
    ci = np.concatenate([a[ua], b[ub], b[both], a[both]])
    vals = np.concatenate([c[ua], c[ub], -c[both], -c[both]])
    A = scipy.sparse.coo_matrix((vals, (ri, ci)), shape=(n, n)).tocsc()
    # an unknown joined to input i through conductance c gets c * v_i on its right-hand side
    sa = ua & (b <= -2)
    sb = ub & (a <= -2)
    S = scipy.sparse.coo_matrix((np.concatenate([c[sa], c[sb]]),
                                 (np.concatenate([a[sa], b[sb]]), np.concatenate([-2 - b[sa], -2 - a[sb]]))),
                                shape=(n, rows)).tocsc()
    return A, S, wl, bl


def _terminal_voltages(term: np.ndarray, x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Voltages [B, rows, cols] at terminals ``term`` given unknowns ``x [n, B]`` and inputs ``v [B, rows]``."""
    out = np.zeros((v.shape[0],) + term.shape)
    node = term >= 0
    out[:, node] = x[term[node]].T
    src = term <= -2
    out[:, src] = v[:, -2 - term[src]]
    return out


def solve_scipy(g, v, r_wl: float, r_bl: float, r_driver: float) -> np.ndarray:
    """Column currents of a tile with wire resistance, by sparse LU (float64).

    Parameters
    ----------
    g : array_like [rows, cols] or [K, rows, cols]
        Cell conductances, non-negative; each of the K matrices is factorised once.
    v : array_like [B, rows] or [K, B, rows]
        Input voltages at the drivers.
    r_wl, r_bl, r_driver : float >= 0
        Segment and driver resistances (units of ``1 / G_max``).

    Returns
    -------
    ndarray [B, cols] or [K, B, cols]
        Currents into the virtual-ground sense amplifiers, ``sum_i G_ij (V_wl_ij - V_bl_ij)``.
    """
    g = np.asarray(g, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    k, _, _, _ = _broadcast_inputs(g.shape, v.shape)
    if k is None:
        return _solve_one(g, v, r_wl, r_bl, r_driver)
    gs = g if g.ndim == 3 else np.broadcast_to(g, (k,) + g.shape)
    vs = v if v.ndim == 3 else np.broadcast_to(v, (k,) + v.shape)
    return np.stack([_solve_one(gi, vi, r_wl, r_bl, r_driver) for gi, vi in zip(gs, vs)])


def _solve_one(g: np.ndarray, v: np.ndarray, r_wl: float, r_bl: float, r_driver: float) -> np.ndarray:
    A, S, wl, bl = nodal_system(g, r_wl, r_bl, r_driver)
    rhs = np.asfortranarray(S @ v.T)                                          # [n, B]
    x = np.empty_like(rhs)
    if A.shape[0]:
        lu = scipy.sparse.linalg.splu(A, permc_spec="MMD_AT_PLUS_A")          # symmetric: order A + A^T
        for k in range(0, rhs.shape[1], _RHS_CHUNK):
            x[:, k:k + _RHS_CHUNK] = lu.solve(rhs[:, k:k + _RHS_CHUNK])
    vw = _terminal_voltages(wl, x, v)
    vb = _terminal_voltages(bl, x, v)
    return np.einsum("ij,bij->bj", g, vw - vb)


# ----------------------------------------------------------------------------------------- batched torch
def _shift(x: Tensor, s: int, dim: int, fill: float) -> Tensor:
    """``y[k] = x[k - s]`` along ``dim`` (``fill`` where ``k - s`` is outside)."""
    dim = dim % x.dim()
    n = x.shape[dim]
    m = min(abs(s), n)
    pad_shape = list(x.shape)
    pad_shape[dim] = m
    pad = x.new_full(pad_shape, fill)
    if s > 0:
        return torch.cat([pad, x.narrow(dim, 0, n - m)], dim)
    return torch.cat([x.narrow(dim, m, n - m), pad], dim)


class _Tridiagonal:
    """Symmetric tridiagonal systems along ``dim`` (independent along every other axis) with a constant
    off-diagonal ``off``: the Thomas algorithm, its elimination factors computed once, each solve one forward
    and one backward sweep along the line (vectorised over lines, inputs and instances).

    Stable without pivoting here: every line's matrix is diagonally dominant (a conductance Laplacian grounded
    at one end, plus the non-negative cell conductances).
    """

    def __init__(self, diag: Tensor, off: float, dim: int):
        self.dim = dim % diag.dim()
        self.n = diag.shape[self.dim]
        self.inv_pivot = torch.empty_like(diag)       # 1 / (b_k - off c_{k-1})
        self.upper = torch.empty_like(diag)           # c_k = off / (b_k - off c_{k-1})
        prev = None
        for k in range(self.n):
            b = diag.select(self.dim, k)
            inv = 1.0 / (b if prev is None else b - off * prev)
            self.inv_pivot.select(self.dim, k).copy_(inv)
            prev = off * inv
            self.upper.select(self.dim, k).copy_(prev)
        self.lower = self.inv_pivot * off             # off / pivot_k, the forward sweep's factor

    def solve(self, d: Tensor) -> Tensor:
        """Solve for right-hand sides ``d`` (extra leading axes broadcast against the coefficients)."""
        x = d * self.inv_pivot
        dim = self.dim + (x.dim() - self.inv_pivot.dim())
        for k in range(1, self.n):
            x.select(dim, k).sub_(x.select(dim, k - 1) * self.lower.select(self.dim, k))
        for k in range(self.n - 2, -1, -1):
            x.select(dim, k).sub_(x.select(dim, k + 1) * self.upper.select(self.dim, k))
        return x


def solve_torch(g: Tensor, v: Tensor, r_wl: float, r_bl: float, r_driver: float, *, rtol: float | None = None,
                max_iter: int = 2000) -> Tensor:
    """Column currents of K tiles with wire resistance for B inputs each, by preconditioned CG.

    Parameters
    ----------
    g : Tensor [rows, cols] or [K, rows, cols]
        Cell conductances, non-negative.
    v : Tensor [B, rows] or [K, B, rows]
        Input voltages at the drivers.
    r_wl, r_bl, r_driver : float >= 0
        Segment and driver resistances (units of ``1 / G_max``).
    rtol : float, optional
        Stop when every right-hand side's preconditioned residual norm is below ``rtol`` times its initial one;
        default ``1e-12`` in float64, ``1e-5`` otherwise.
    max_iter : int
        Raise :class:`RuntimeError` if CG has not converged after this many iterations.

    Returns
    -------
    Tensor [B, cols] or [K, B, cols]
        Currents into the virtual-ground sense amplifiers, in the dtype of ``g`` and ``v`` (use float64 for
        round-off near 1e-12).
    """
    k, _, rows, cols = _broadcast_inputs(tuple(g.shape), tuple(v.shape))
    if rtol is None:
        rtol = 1e-12 if g.dtype == torch.float64 else 1e-5
    squeeze = k is None
    G = g.unsqueeze(-3) if g.dim() == 3 else g.unsqueeze(0).unsqueeze(0)     # [K|1, 1, rows, cols]
    V = v if v.dim() == 3 else v.unsqueeze(0)                                 # [K|1, B, rows]
    wl_fixed = r_wl == 0 and r_driver == 0
    g_d = 0.0 if wl_fixed else 1.0 / (r_driver + r_wl)
    # word lines: w0 (voltages with the bit lines grounded) and P(rhs) = M_w^-1 rhs
    drive = g_d * V.unsqueeze(-1)                                            # [K|1, B, rows, 1]
    if wl_fixed:
        w0 = V.unsqueeze(-1).expand(-1, -1, -1, cols)
        p_wl = None
    elif r_wl == 0:
        total = G.sum(-1, keepdim=True) + g_d                                 # one node per word line
        w0 = (drive / total).expand(-1, -1, -1, cols)
        p_wl = lambda rhs: (rhs.sum(-1, keepdim=True) / total).expand_as(rhs)
    else:
        gw = 1.0 / r_wl
        j = torch.arange(cols, device=g.device)
        deg = gw * ((j > 0).to(g.dtype) + (j < cols - 1).to(g.dtype)) + g_d * (j == 0).to(g.dtype)
        tri_w = _Tridiagonal(G + deg, -gw, dim=-1)
        p_wl = tri_w.solve
        first = torch.zeros(cols, dtype=g.dtype, device=g.device)
        first[0] = 1.0
        w0 = tri_w.solve(drive * first)
    if r_bl == 0:
        current = (G * w0).sum(-2)
    else:
        gb = 1.0 / r_bl
        i = torch.arange(rows, device=g.device).unsqueeze(-1)
        deg = gb * ((i > 0).to(g.dtype) + 1.0)                               # the last node's segment: to the TIA
        diag_b = G + deg
        tri_b = _Tridiagonal(diag_b, -gb, dim=-2)

        def m_b(x):
            return diag_b * x - gb * (_shift(x, 1, -2, 0.0) + _shift(x, -1, -2, 0.0))

        def schur(x):
            return m_b(x) if p_wl is None else m_b(x) - G * p_wl(G * x)

        vb = _pcg(schur, tri_b.solve, G * w0, rtol, max_iter)
        vw = w0 if p_wl is None else w0 + p_wl(G * vb)
        current = (G * (vw - vb)).sum(-2)
    return current.reshape(v.shape[0], cols) if squeeze else current


def _pcg(apply_a, apply_m_inv, rhs: Tensor, rtol: float, max_iter: int) -> Tensor:
    """Preconditioned conjugate gradients for many SPD systems at once (each [..., rows, cols] right-hand side
    has its own step sizes); starts from zero."""
    def dot(a, b):
        return (a * b).sum((-2, -1), keepdim=True)

    x = torch.zeros_like(rhs)
    r = rhs.clone()
    z = apply_m_inv(r)
    p = z
    rz = dot(r, z)
    stop = rz.abs() * rtol ** 2
    for _ in range(max_iter):
        if bool((rz.abs() <= stop).all()):
            return x
        ap = apply_a(p)
        pap = dot(p, ap)
        alpha = torch.where(pap > 0, rz / torch.where(pap > 0, pap, 1.0), 0.0)
        x = x + alpha * p
        r = r - alpha * ap
        z = apply_m_inv(r)
        rz_new = dot(r, z)
        beta = torch.where(rz != 0, rz_new / torch.where(rz != 0, rz, 1.0), 0.0)
        p = z + beta * p
        rz = rz_new
    raise RuntimeError(f"IR-drop CG did not converge in {max_iter} iterations")
