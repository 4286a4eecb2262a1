"""Mappings: noise off -> exact weights back; conductances inside the device window; proportionality."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anvm_stats.errors import ConfigError
from anvm_stats.hardware import BitSlicedMapping, Bounds, DifferentialMapping, OffsetMapping

MAPPINGS = [DifferentialMapping(), DifferentialMapping(granularity="column"), OffsetMapping(),
            OffsetMapping(granularity="column"), OffsetMapping(symmetric=False),
            OffsetMapping(symmetric=False, granularity="column")]


def weights(seed, out=6, inp=9, dtype=torch.float64):
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2 ** 31), g_min=st.floats(0, 0.5), scale=st.floats(1e-3, 1e3),
       idx=st.integers(0, len(MAPPINGS) - 1))
def test_round_trip_is_exact(seed, g_min, scale, idx):
    w = weights(seed) * scale
    enc = MAPPINGS[idx].encode(w, Bounds(g_min=g_min))
    assert torch.allclose(enc.decode(enc.g), w, rtol=1e-10, atol=1e-12 * scale)
    assert float(enc.g.min()) >= g_min - 1e-12 and float(enc.g.max()) <= 1 + 1e-12


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2 ** 31), n=st.integers(1, 4), b=st.integers(1, 4))
def test_bit_sliced_round_trip_on_grid(seed, n, b):
    m = BitSlicedMapping(n_slices=n, bits_per_slice=b)
    levels = m.total_levels
    q = torch.randint(-levels, levels + 1, (5, 7), generator=torch.Generator().manual_seed(seed)).double()
    q[0, 0] = levels   # make max|w| hit the top code
    w = q / levels * 0.37
    enc = m.encode(w, Bounds(g_min=0.1))
    assert enc.g.shape == (2 * n, 5, 7) and enc.n_signals == n
    assert torch.allclose(enc.decode(enc.g), w, atol=1e-12)


def test_bit_sliced_quantises_off_grid_weights():
    w = weights(1)
    m = BitSlicedMapping(n_slices=2, bits_per_slice=2)
    enc = m.encode(w, Bounds())
    step = w.abs().max() / m.total_levels
    assert (enc.decode(enc.g) - w).abs().max() <= step / 2 + 1e-12


def test_differential_is_proportional_offset_is_not():
    w = torch.zeros(3, 4, dtype=torch.float64)
    w[0, 0] = 1.0
    diff = DifferentialMapping().encode(w, Bounds(g_min=0.0))
    off = OffsetMapping().encode(w, Bounds(g_min=0.0))
    assert float(diff.g[:, 1:, :].abs().max()) == 0.0          # zero weight -> both devices at g_min
    assert torch.allclose(off.g[0, 1:, :], torch.full((2, 4), 0.5, dtype=torch.float64))  # zero sits mid-range


def test_column_scale_uses_each_columns_range():
    w = torch.tensor([[1.0, -0.5], [10.0, 2.0]], dtype=torch.float64)
    enc = DifferentialMapping(granularity="column").encode(w, Bounds())
    assert float(enc.g[0, 0, 0]) == 1.0 and float(enc.g[0, 1, 0]) == 1.0   # each column reaches g_max
    enc_l = DifferentialMapping(granularity="layer").encode(w, Bounds())
    assert float(enc_l.g[0, 0, 0]) == pytest.approx(0.1)


def test_zero_layer_does_not_divide_by_zero():
    w = torch.zeros(2, 3)
    for m in MAPPINGS + [BitSlicedMapping()]:
        enc = m.encode(w, Bounds())
        assert torch.isfinite(enc.g).all() and torch.allclose(enc.decode(enc.g), w)


@pytest.mark.parametrize("make,field", [
    (lambda: DifferentialMapping(granularity="row"), "DifferentialMapping.granularity"),
    (lambda: BitSlicedMapping(n_slices=0), "BitSlicedMapping.n_slices"),
    (lambda: BitSlicedMapping(n_slices=8, bits_per_slice=4), "BitSlicedMapping.n_slices * bits_per_slice"),
    (lambda: OffsetMapping(symmetric="yes"), "OffsetMapping.symmetric"),
])
def test_bad_mapping_parameters(make, field):
    with pytest.raises(ConfigError, match=field.replace("*", r"\*")):
        make()
