"""IR drop (anvm_stats/hardware/parasitics.py, nodal.py): the circuit solved by hand, by an independent dense
assembly, by sparse LU and by batched CG; the first-order mode's error and where it breaks down; bad input."""

import math

import numpy as np
import pytest
import sympy
import torch

from anvm_stats.errors import ConfigError
from anvm_stats.hardware import Parasitics
from anvm_stats.hardware.nodal import solve_scipy, solve_torch
from anvm_stats.hardware.parasitics import (
    column_currents,
    effective_conductance,
    first_order_conductance,
)

# (r_wordline, r_bitline, r_driver): all wires, bit lines only (Xiao et al.), word lines only, collapsed word
# lines behind a driver resistance, and mixed values
RESISTANCES = [(1e-2, 1e-2, 0.0), (0.0, 1e-2, 0.0), (1e-2, 0.0, 0.0), (0.0, 2e-2, 0.1), (3e-3, 7e-3, 5e-2),
               (0.0, 0.0, 0.2)]


# ------------------------------------------------------------------------------------------- by hand: 2x2
def test_2x2_tile_matches_the_node_equations_solved_symbolically():
    """Kirchhoff's current law at the 8 nodes of a 2x2 tile, written out and solved exactly with sympy."""
    r, rd = sympy.Rational(1, 20), sympy.Rational(1, 10)     # segment and driver resistance
    G = [[sympy.Rational(9, 10), sympy.Rational(1, 5)], [sympy.Rational(1, 2), sympy.Rational(3, 4)]]
    v = [sympy.Rational(1), sympy.Rational(-1, 2)]
    w00, w01, w10, w11, b00, b01, b10, b11 = sympy.symbols("w00 w01 w10 w11 b00 b01 b10 b11")
    eqs = [
        # word line 0: driver + first segment into w00, segment w00-w01, open end after w01
        (w00 - v[0]) / (rd + r) + (w00 - w01) / r + G[0][0] * (w00 - b00),
        (w01 - w00) / r + G[0][1] * (w01 - b01),
        (w10 - v[1]) / (rd + r) + (w10 - w11) / r + G[1][0] * (w10 - b10),
        (w11 - w10) / r + G[1][1] * (w11 - b11),
        # bit line 0: open above b00, segment b00-b10, segment b10 -> virtual ground
        (b00 - b10) / r + G[0][0] * (b00 - w00),
        (b10 - b00) / r + b10 / r + G[1][0] * (b10 - w10),
        (b01 - b11) / r + G[0][1] * (b01 - w01),
        (b11 - b01) / r + b11 / r + G[1][1] * (b11 - w11),
    ]
    sol = sympy.solve(eqs, [w00, w01, w10, w11, b00, b01, b10, b11], rational=True)
    expected = np.array([float(sol[b10] / r), float(sol[b11] / r)])   # current into each amplifier
    # the same currents as the sum of the cell currents of each bit line
    cells = [sum(G[i][j] * (sol[[w00, w01, w10, w11][2 * i + j]] - sol[[b00, b01, b10, b11][2 * i + j]])
                 for i in range(2)) for j in range(2)]
    assert [float(c) for c in cells] == pytest.approx(expected, rel=1e-15)

    g = np.array([[0.9, 0.2], [0.5, 0.75]])
    vv = np.array([[1.0, -0.5]])
    p = Parasitics(r_wire=0.05, r_driver=0.1, mode="exact")
    for got in (solve_scipy(g, vv, 0.05, 0.05, 0.1)[0],
                solve_torch(torch.tensor(g), torch.tensor(vv), 0.05, 0.05, 0.1)[0].numpy(),
                column_currents(torch.tensor(g), torch.tensor(vv), p)[0].numpy()):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert np.abs(expected - vv @ g).max() > 0.05                     # the wires matter in this case


def test_bit_line_only_2x2_matches_cramers_rule():
    """Word lines ideal (held at v_i), bit lines with segments r: per column two equations
    ``(G0 + 1/r) b0 - b1/r = G0 v0`` and ``-b0/r + (G1 + 2/r) b1 = G1 v1``; the current is ``b1 / r``."""
    r = 0.1
    g = np.array([[0.8, 0.3], [0.6, 1.0]])
    v = np.array([0.7, 0.4])
    expected = []
    for j in range(2):
        a11, a12, a21, a22 = g[0, j] + 1 / r, -1 / r, -1 / r, g[1, j] + 2 / r
        f1, f2 = g[0, j] * v[0], g[1, j] * v[1]
        b1 = (a11 * f2 - a21 * f1) / (a11 * a22 - a12 * a21)
        expected.append(b1 / r)
    got = column_currents(torch.tensor(g), torch.tensor(v[None]), Parasitics(r_wordline=0.0, r_bitline=r,
                                                                            mode="exact"))[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    got_t = solve_torch(torch.tensor(g), torch.tensor(v[None]), 0.0, r, 0.0)[0].numpy()
    np.testing.assert_allclose(got_t, expected, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------- independent dense assembly
def dense_kcl_currents(g: np.ndarray, v: np.ndarray, r_wl: float, r_bl: float, r_d: float) -> np.ndarray:
    """Node-by-node KCL of a tile with every resistance > 0, dense matrix, numpy solve; currents [B, cols]."""
    rows, cols = g.shape
    n = 2 * rows * cols

    def w(i, j):
        return i * cols + j

    def b(i, j):
        return rows * cols + i * cols + j

    A = np.zeros((n, n))
    F = np.zeros((n, rows))
    for i in range(rows):
        for j in range(cols):
            # word-line node (i, j): its cell, its left neighbour (or the driver), its right neighbour
            A[w(i, j), w(i, j)] += g[i, j]
            A[w(i, j), b(i, j)] -= g[i, j]
            if j == 0:
                A[w(i, j), w(i, j)] += 1 / (r_d + r_wl)
                F[w(i, j), i] += 1 / (r_d + r_wl)
            else:
                A[w(i, j), w(i, j)] += 1 / r_wl
                A[w(i, j), w(i, j - 1)] -= 1 / r_wl
            if j < cols - 1:
                A[w(i, j), w(i, j)] += 1 / r_wl
                A[w(i, j), w(i, j + 1)] -= 1 / r_wl
            # bit-line node (i, j): its cell, the node above, the node below (or the amplifier at 0 V)
            A[b(i, j), b(i, j)] += g[i, j]
            A[b(i, j), w(i, j)] -= g[i, j]
            if i > 0:
                A[b(i, j), b(i, j)] += 1 / r_bl
                A[b(i, j), b(i - 1, j)] -= 1 / r_bl
            A[b(i, j), b(i, j)] += 1 / r_bl
            if i < rows - 1:
                A[b(i, j), b(i + 1, j)] -= 1 / r_bl
    x = np.linalg.solve(A, F @ v.T)                                   # [n, B]
    return (x[[b(rows - 1, j) for j in range(cols)]] / r_bl).T


@pytest.mark.parametrize("r_wl,r_bl,r_d", [(1e-3, 1e-3, 0.0), (2e-3, 5e-4, 1e-2), (1e-2, 1e-2, 0.1)])
def test_16x16_random_tiles_match_a_dense_node_by_node_assembly(r_wl, r_bl, r_d):
    rng = np.random.default_rng(1)
    for _ in range(2):
        g = rng.uniform(0.0, 1.0, (16, 16))
        v = rng.normal(size=(3, 16))
        expected = dense_kcl_currents(g, v, r_wl, r_bl, r_d)
        scale = np.abs(expected).max()
        np.testing.assert_allclose(solve_scipy(g, v, r_wl, r_bl, r_d), expected, rtol=0, atol=1e-12 * scale)
        got = solve_torch(torch.tensor(g), torch.tensor(v), r_wl, r_bl, r_d).numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * scale)
        p = Parasitics(r_wordline=r_wl, r_bitline=r_bl, r_driver=r_d, mode="exact")
        got = column_currents(torch.tensor(g), torch.tensor(v), p).numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * scale)
        assert np.abs(expected - v @ g).max() > 1e-3 * scale            # IR drop is visible


@pytest.mark.parametrize("res", RESISTANCES)
def test_batched_torch_solver_equals_scipy(res):
    rng = np.random.default_rng(2)
    g = rng.uniform(0.0, 1.0, (3, 7, 12))
    v = rng.normal(size=(3, 5, 7))
    expected = solve_scipy(g, v, *res)
    assert expected.shape == (3, 5, 12)
    got = solve_torch(torch.tensor(g), torch.tensor(v), *res).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * np.abs(expected).max())
    # one input batch shared by the K tiles, and one tile for K input batches
    shared = solve_torch(torch.tensor(g), torch.tensor(v[0]), *res).numpy()
    np.testing.assert_allclose(shared, solve_scipy(g, v[0], *res), rtol=0, atol=1e-12)
    one_tile = solve_torch(torch.tensor(g[0]), torch.tensor(v), *res).numpy()
    np.testing.assert_allclose(one_tile, solve_scipy(g[0], v, *res), rtol=0, atol=1e-12)


def test_effective_conductance_reproduces_every_input():
    """The circuit is linear: ``v @ G_eff`` is the exact solution for any input, in both modes' definition."""
    rng = np.random.default_rng(3)
    g = torch.tensor(rng.uniform(0.0, 1.0, (2, 9, 6)))
    v = torch.tensor(rng.normal(size=(2, 4, 9)))
    p = Parasitics(r_wire=5e-3, r_driver=2e-2, mode="exact")
    geff = effective_conductance(g, p)
    assert geff.shape == g.shape and geff.dtype == g.dtype
    np.testing.assert_allclose((v @ geff).numpy(), solve_scipy(g.numpy(), v.numpy(), 5e-3, 5e-3, 2e-2),
                               rtol=0, atol=1e-12)
    g32 = g.float()
    assert effective_conductance(g32, p).dtype == torch.float32


# ------------------------------------------------------------------------------------- ideal = no wires
@pytest.mark.parametrize("mode", ["exact", "first_order"])
def test_zero_resistance_is_the_ideal_product_bitwise(mode):
    gen = torch.Generator().manual_seed(4)
    g = torch.rand(3, 20, 10, generator=gen)
    v = torch.randn(3, 8, 20, generator=gen)
    p = Parasitics(r_wire=0.0, r_driver=0.0, mode=mode, max_exact_size=1)
    assert p.is_ideal
    assert effective_conductance(g, p) is g
    assert torch.equal(column_currents(g, v, p), v @ g)
    assert torch.equal(column_currents(g[0], v[0], p), v[0] @ g[0])


def test_first_order_formula_is_one_linearisation_step_of_kcl():
    """The closed form equals its definition: ideal cell currents through the wires, the node voltages they
    leave, the cell currents again at those voltages (computed here with explicit loops)."""
    rng = np.random.default_rng(5)
    rows, cols, r_wl, r_bl, r_d = 5, 4, 0.01, 0.02, 0.05
    g = rng.uniform(0, 1, (rows, cols))
    v = rng.normal(size=rows)
    c = g * v[:, None]                                                # ideal cell currents
    vw = np.zeros((rows, cols))
    vb = np.zeros((rows, cols))
    for i in range(rows):
        for j in range(cols):
            drop = r_d * c[i].sum()
            for k in range(j + 1):                                    # word-line segment k carries c[i, k:]
                drop += r_wl * c[i, k:].sum()
            vw[i, j] = v[i] - drop
            vb[i, j] = sum(r_bl * c[: k + 1, j].sum() for k in range(i, rows))   # segment below row k
    expected = (g * (vw - vb)).sum(0)
    got = v @ first_order_conductance(torch.tensor(g), r_wl, r_bl, r_d).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-13)


# ---------------------------------------------------------------------------------- first order vs exact
def first_order_error(n: int, r: float, seed: int = 6, driver: float = 0.0, **kw) -> tuple[float, float]:
    """(max |G_first - G_exact|, max |G_exact - G|) on a uniform random n x n tile, ``r_driver = driver * r``."""
    g = torch.tensor(np.random.default_rng(seed).uniform(0.0, 1.0, (n, n)))
    kw["r_driver"] = driver * r
    exact = effective_conductance(g, Parasitics(r_wire=r, mode="exact", **kw))
    first = effective_conductance(g, Parasitics(r_wire=r, mode="first_order", **kw))
    return float((first - exact).abs().max()), float((exact - g).abs().max())


@pytest.mark.parametrize("n", [8, 16, 32])
@pytest.mark.parametrize("kw", [{}, {"r_wordline": 0.0}, {"driver": 3.0}])
def test_first_order_error_is_second_order_in_r(n, kw):
    """err / deviation grows like r (so err like r^2) and stays below the bound r * n^2 (G <= 1)."""
    r1 = 1e-3 / n ** 2                                                # r n^2 = 1e-3 and 1e-2
    e1, d1 = first_order_error(n, r1, **kw)
    e2, d2 = first_order_error(n, 10 * r1, **kw)
    assert e1 / d1 <= r1 * n ** 2 and e2 / d2 <= 10 * r1 * n ** 2
    assert e2 / d2 == pytest.approx(10 * e1 / d1, rel=0.05)          # linear in r: second-order error
    assert d2 == pytest.approx(10 * d1, rel=0.05)                      # while the effect is first order


def test_first_order_breaks_down_when_r_n2_approaches_one():
    """Relative error of first order vs exact as r * n^2 grows: small, then as large as the effect itself."""
    n = 16
    table = {x: first_order_error(n, x / n ** 2) for x in (0.01, 0.1, 1.0, 4.0)}
    rel = {x: e / d for x, (e, d) in table.items()}
    assert rel[0.01] < 0.01 and rel[0.1] < 0.1
    assert rel[1.0] > 0.2 and rel[4.0] > 1.0                           # unusable past r n^2 ~ 1
    assert rel[0.01] < rel[0.1] < rel[1.0] < rel[4.0]


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("field", ["r_wire", "r_wordline", "r_bitline", "r_driver"])
@pytest.mark.parametrize("value", [-1e-3, math.nan, math.inf, "0.1", True])
def test_bad_resistances_are_refused_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=f"Parasitics.{field}=") as err:
        Parasitics(**{field: value})
    assert "finite number" in str(err.value)


@pytest.mark.parametrize("kw,field", [({"mode": "spice"}, "Parasitics.mode"),
                                      ({"max_exact_size": 0}, "Parasitics.max_exact_size"),
                                      ({"max_exact_size": 2.5}, "Parasitics.max_exact_size"),
                                      ({"max_exact_size": 1 << 21}, "Parasitics.max_exact_size")])
def test_bad_mode_and_size_are_refused(kw, field):
    with pytest.raises(ConfigError, match=field):
        Parasitics(**kw)


def test_exact_mode_refuses_a_tile_over_max_exact_size():
    p = Parasitics(r_wire=1e-3, mode="exact", max_exact_size=100)
    p.check_tile(10, 10)
    with pytest.raises(ConfigError, match=r"Parasitics.mode='exact'.*'first_order'.*11x10 tile.*max_exact_size"):
        p.check_tile(11, 10)
    with pytest.raises(ConfigError, match="Parasitics.mode"):
        effective_conductance(torch.rand(11, 10), p)
    Parasitics(r_wire=1e-3, mode="first_order", max_exact_size=100).check_tile(1000, 1000)


def test_bad_conductances_and_inputs_are_refused():
    p = Parasitics(r_wire=1e-3)
    with pytest.raises(ConfigError, match="conductances=-0.5"):
        effective_conductance(torch.tensor([[1.0, -0.5]]), p)
    with pytest.raises(ConfigError, match="conductances=nan"):
        effective_conductance(torch.tensor([[1.0, math.nan]]), p)
    with pytest.raises(ConfigError, match="inputs"):
        column_currents(torch.rand(4, 3), torch.rand(2, 5), p)
    with pytest.raises(ConfigError, match="inputs.shape"):
        column_currents(torch.rand(2, 4, 3), torch.rand(3, 2, 4), p)
    with pytest.raises(ConfigError, match="parasitics"):
        effective_conductance(torch.rand(4, 3), {"r_wire": 1e-3})


def test_round_trip_and_knob():
    p = Parasitics(r_wire=1e-3, r_bitline=2e-3, mode="exact")
    assert Parasitics.from_dict(p.to_dict()) == p
    assert p.segment_resistances == (1e-3, 2e-3)
    assert p.with_knob("r_wire", 5e-3).segment_resistances == (5e-3, 2e-3)
    assert p.with_knob("noise_level", 0.1) is None
    with pytest.raises(ConfigError, match="parasitics.r_wires"):
        Parasitics.from_dict({"r_wires": 1e-3})
    with pytest.raises(ConfigError, match="parasitics.r_driver=-1"):
        Parasitics.from_dict({"r_driver": -1})


def test_cg_that_does_not_converge_raises():
    g = torch.rand(16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    with pytest.raises(RuntimeError, match="did not converge in 1 iterations"):
        solve_torch(g, torch.ones(2, 16, dtype=torch.float64), 0.1, 0.1, 0.0, max_iter=1)


def test_accuracy_table_rows():
    """The tabulation behind reports/ir_drop_accuracy: one row per (size, r_wire), error relative to the effect
    growing with r_wire n^2."""
    from benchmarks.ir_drop_accuracy import tabulate, to_markdown

    rows = tabulate(sizes=(8, 16), r_wires=(1e-4, 1e-3), batch=4)
    assert [(r["size"], r["r_wire"]) for r in rows] == [(8, 1e-4), (8, 1e-3), (16, 1e-4), (16, 1e-3)]
    for r in rows:
        assert r["r_n2"] == pytest.approx(r["r_wire"] * r["size"] ** 2)
        assert 0 < r["first_order_error"] < r["effect"] < 1
    assert rows[0]["relative_to_effect"] < rows[1]["relative_to_effect"] < rows[3]["relative_to_effect"]
    assert to_markdown(rows).count("\n") == 2 + len(rows)


def test_first_order_is_differentiable_in_the_conductances():
    g = torch.rand(2, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(8), requires_grad=True)
    p = Parasitics(r_wire=1e-2, r_bitline=3e-2, r_driver=2e-2)
    assert torch.autograd.gradcheck(lambda x: effective_conductance(x, p), (g,))
