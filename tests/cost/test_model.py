"""Energy, latency and area from the counts: closed forms by hand on a tiny network, the ADC term doubling per
bit below the thermal knee and quadrupling above it, and sweep(cost=True) along the grid dims."""

import math

import numpy as np
import pytest
import torch
import xarray as xr

import anvm_stats as av
from anvm_stats import dims
from anvm_stats.cost import CostConstants, adc_energy, adc_knee_bits, cost
from anvm_stats.errors import ConfigError
from tests.cost.test_counts import X, tiny_net

K = CostConstants.load()


def _spec(adc_bits=4, dac_bits=2, **kw):
    return av.HardwareSpec(periphery=av.Periphery(adc=av.Quantizer(bits=adc_bits), dac=av.Quantizer(bits=dac_bits)),
                           **kw)


def test_energy_latency_area_by_hand():
    ds = cost(tiny_net(), _spec(), X)
    e = ds[dims.ENERGY].sel({dims.LAYER: "0"})
    # layer 0 (untiled differential, counts in tests/cost/test_counts.py): 4 DAC conversions of 2 bits, 4 bit
    # lines, 2 ADC conversions of 16 levels, summed conductance 6 read at the full read voltage
    assert float(e.sel(component="dac")) == pytest.approx(4 * 2 * K["dac_energy_per_bit"], rel=1e-12)
    assert float(e.sel(component="bitlines")) == pytest.approx(4 * K["column_read_energy"], rel=1e-12)
    assert float(e.sel(component="adc")) == pytest.approx(2 * K["adc_walden_fom"] * 16, rel=1e-12)
    read = K["read_voltage"] ** 2 * K["g_on"] * K["read_time"]
    assert float(e.sel(component="cells")) == pytest.approx(read * 6.0, rel=1e-6)
    assert float(e.sel(component="shift_add")) == float(e.sel(component="accumulate")) == 0.0
    assert float(ds[dims.ENERGY_PER_INFERENCE]) == pytest.approx(float(ds[dims.ENERGY].sum()), rel=1e-12)
    # one MVM: 10 ns read + min(8 columns per ADC, 2 signals) x 4 bits x 0.1 ns, no adder stage
    t_mvm = K["read_time"] + 2 * 4 * K["adc_time_per_bit"]
    assert float(ds[dims.LATENCY].sel({dims.LAYER: "0"})) == pytest.approx(t_mvm, rel=1e-12)
    a = ds[dims.AREA].sel({dims.LAYER: "0"})
    assert float(a.sel(area_component="cells")) == pytest.approx(16 * K.cell_area("rram_1t1r"), rel=1e-12)
    assert float(a.sel(area_component="adc")) == pytest.approx(1 * K["adc_area_8bit"] * 16 / 256, rel=1e-12)
    assert float(a.sel(area_component="dac")) == pytest.approx(4 * 2 * K["dac_area_per_bit"], rel=1e-12)
    assert int(ds["adc_conversions"].sel({dims.LAYER: "2"})) == 4 and ds.attrs["cost_assumed_converters"] == ""
    assert ds[dims.ENERGY].attrs["units"] == "J" and ds[dims.CHIP_AREA].attrs["units"] == "m^2"


def test_tiles_add_accumulations_and_whole_tiles_of_area():
    flat = cost(tiny_net(), _spec(), X)
    tiled = cost(tiny_net(), _spec(tile=av.Tile(rows=2, cols=3)), X)
    acc = tiled[dims.ENERGY].sel(component="accumulate")
    assert float(acc.sel({dims.LAYER: "0"})) == pytest.approx(2 * K["digital_add_energy"])   # 2 outputs x 1 block
    assert float(tiled[dims.AREA].sel({dims.LAYER: "0", dims.AREA_COMPONENT: "cells"})) == pytest.approx(
        24 * K.cell_area("rram_1t1r"))                                                      # 2 arrays x 2 tiles x 2x3
    # the cells' read energy depends on the conductances only, not on how they are tiled
    assert float(tiled[dims.ENERGY].sel(component="cells").sum()) == pytest.approx(
        float(flat[dims.ENERGY].sel(component="cells").sum()), rel=1e-6)


def test_adc_energy_doubles_per_bit_below_the_knee_and_quadruples_above():
    knee = adc_knee_bits(K)
    assert 13 < knee < 14.5
    for b in range(1, int(knee) - 1):
        assert adc_energy(2 ** (b + 1), K) / adc_energy(2 ** b, K) == pytest.approx(2.0, rel=1e-12)
    for b in range(math.ceil(knee) + 1, 22):
        # SNDR grows 20 log10(2) dB per bit: 10^(20 log10(2) / 10) = 4
        assert adc_energy(2 ** (b + 1), K) / adc_energy(2 ** b, K) == pytest.approx(4.0, rel=1e-12)
    # the two terms meet at the knee
    lv = 2 ** knee
    assert K["adc_walden_fom"] * lv == pytest.approx(0.5 * 10 ** ((20 * math.log10(lv) + 1.76 - 180) / 10), rel=1e-9)
    # the cost Dataset's ADC term doubles from 5 to 6 bits; nothing else changes energy
    e5, e6 = (cost(tiny_net(), _spec(adc_bits=b), X)[dims.ENERGY].sum(dims.LAYER) for b in (5, 6))
    assert float(e6.sel(component="adc") / e5.sel(component="adc")) == pytest.approx(2.0, rel=1e-12)
    np.testing.assert_allclose(e6.drop_sel(component="adc").values, e5.drop_sel(component="adc").values)
    with pytest.raises(ConfigError, match="adc levels"):
        adc_energy(1, K)


def test_missing_converters_use_the_table_defaults_and_cells_are_checked():
    ds = cost(tiny_net(), av.HardwareSpec(), X)
    assert ds.attrs["cost_assumed_converters"] == "adc,dac" and ds.attrs["cost_adc_levels"] == 256
    adc = ds[dims.ENERGY].sel({dims.LAYER: "0", dims.COMPONENT: "adc"})
    assert float(adc) == pytest.approx(2 * K["adc_walden_fom"] * 256)
    sram = cost(tiny_net(), av.HardwareSpec(), X, cell="sram_6t")
    assert float(sram[dims.AREA].sel(area_component="cells").sum()) / float(
        ds[dims.AREA].sel(area_component="cells").sum()) == pytest.approx(150 / 12)
    with pytest.raises(ConfigError, match="cell='flash'"):
        cost(tiny_net(), av.HardwareSpec(), X, cell="flash")


def test_sweep_cost_adds_variables_along_the_grid_dims():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(24, 8, generator=g), torch.randint(0, 4, (24,), generator=g))
    spec = _spec(adc_bits=6, dac_bits=8, effects=(av.ProgrammingNoise(sigma=0.05),))
    grid = {"adc_bits": [3, 6], "noise_level": [0.01, 0.05, 0.1]}
    plain = av.sweep(net, spec, data, grid=grid, n_instances=3, progress=False)
    ds = av.sweep(net, spec, data, grid=grid, n_instances=3, progress=False, cost=True)
    acc_dims = tuple(d for d in ds[dims.ACCURACY].dims if d != dims.INSTANCE)
    for v in (dims.ENERGY_PER_INFERENCE, dims.LATENCY_PER_INFERENCE, dims.CHIP_AREA):
        assert ds[v].dims == acc_dims
    assert ds[dims.ENERGY].dims == acc_dims + (dims.COMPONENT,)
    xr.testing.assert_equal(ds[list(plain.data_vars)], plain)          # results unchanged (attrs: + cost_*)
    for b in (3, 6):
        want = float(cost(net, spec.with_knobs(adc_bits=b), data)[dims.ENERGY_PER_INFERENCE])
        got = ds[dims.ENERGY_PER_INFERENCE].sel(adc_bits=b).values
        np.testing.assert_allclose(got, want, rtol=1e-12)       # the noise level changes no cost
    assert ds.attrs["cost_cell"] == "rram_1t1r" and ds.attrs["cost_assumed_converters"] == ""
    bare = av.sweep(net, av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.01),)), data, n_instances=1,
                    progress=False, cost=True)
    assert bare.attrs["cost_assumed_converters"] == "adc,dac"
    with pytest.raises(ConfigError, match="cost"):
        av.sweep(net, spec, data, n_instances=2, progress=False, cost="yes")
