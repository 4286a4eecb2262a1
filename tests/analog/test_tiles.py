"""Crossbar tiles (HardwareSpec.tile): validation, serialisation, exact ideal chips, per-tile ADCs against a plain
reference loop, n_tiles, the parasitics hook, and study files."""


import numpy as np
import pytest
import torch
from torch import nn

import anvm_stats as av
from anvm_stats.analog.tiles import tile_mvm
from anvm_stats.cli import main
from anvm_stats.errors import ConfigError, UnsupportedLayerError
from anvm_stats.study import StudyError, load_study

from tests.helpers import TINY_STUDY, make_data, make_mlp


def _conv_net(seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(2, 5, 3, padding=1, stride=2), nn.ReLU(), nn.Conv2d(5, 4, 2), nn.ReLU(),
                             nn.Flatten(), nn.Linear(4 * 3 * 3, 3)).eval()


# ---------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw,field", [
    (dict(rows=0, cols=8), "Tile.rows"),
    (dict(rows=2.5, cols=8), "Tile.rows"),
    (dict(rows="32", cols=8), "Tile.rows"),
    (dict(rows=32, cols=-1), "Tile.cols"),
    (dict(rows=32, cols=float("nan")), "Tile.cols"),
    (dict(rows=1 << 20, cols=8), "Tile.rows"),
    (dict(rows=32, cols=8, scale="column"), "Tile.scale"),
    (dict(rows=32, cols=8, adc_ranges="chip"), "Tile.adc_ranges"),
    (dict(rows=32, cols=8, adc_calibration="mean"), "Tile.adc_calibration"),
])
def test_bad_tile_names_the_field_and_allowed_values(kw, field):
    with pytest.raises(ConfigError) as info:
        av.Tile(**kw)
    assert info.value.field == field
    assert "expected" in str(info.value)


def test_integral_float_sides_become_ints():
    t = av.Tile(rows=32.0, cols=16)
    assert t.rows == 32 and isinstance(t.rows, int)


@pytest.mark.parametrize("data,field", [
    ({"rows": 32}, "tile.cols"),
    ({"rows": 32, "cols": 8, "size": 3}, "tile.size"),
    ({"rows": 0, "cols": 8}, "tile.rows"),
    ("32x32", "tile"),
])
def test_bad_tile_table(data, field):
    with pytest.raises(ConfigError) as info:
        av.HardwareSpec.from_dict({"tile": data})
    assert info.value.field == field


def test_spec_rejects_a_non_tile():
    with pytest.raises(ConfigError, match="tile"):
        av.HardwareSpec(tile=(32, 32))


# ---------------------------------------------------------------------------------------------------- serialisation
def test_tile_round_trips_and_untiled_specs_serialise_as_before():
    spec = av.HardwareSpec(tile=av.Tile(rows=64, cols=32, scale="tile", adc_ranges="column",
                                        adc_calibration="minmax"))
    assert av.HardwareSpec.from_dict(spec.to_dict()) == spec
    assert av.HardwareSpec.from_toml(spec.to_toml()) == spec
    assert "tile" not in av.HardwareSpec().to_dict()


# ---------------------------------------------------------------------------------------------------- ideal chips
@pytest.mark.parametrize("mapping", [av.DifferentialMapping(), av.DifferentialMapping(granularity="column"),
                                     av.OffsetMapping(), av.OffsetMapping(symmetric=False, granularity="column")],
                         ids=lambda m: f"{m.kind}-{m.granularity}")
@pytest.mark.parametrize("scale", ["layer", "tile"])
@pytest.mark.parametrize("bias", ["column", "digital"])
@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_ideal_tiled_chip_is_the_network(mapping, scale, bias, net):
    model = make_mlp(bn=False) if net == "mlp" else _conv_net()
    x = torch.randn(6, 8) if net == "mlp" else torch.randn(6, 2, 7, 7)
    spec = av.HardwareSpec(mapping=mapping, bias=bias, tile=av.Tile(rows=5, cols=3, scale=scale))
    prog = av.prepare(model, spec)
    prog.load(prog.g0[None].repeat(2, 1), B=6)
    y = prog.module(x).view(2, 6, -1)
    ref = model(x)
    torch.testing.assert_close(y[0], ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(y[1], ref, atol=2e-5, rtol=1e-5)
    w = prog.weights(prog.g0[None])
    first = prog.plans[0]
    nominal = model[0].weight.detach().reshape(first.out_features, -1)
    torch.testing.assert_close(w[first.name][0, :, :first.in_features], nominal, atol=1e-6, rtol=1e-5)


def test_bit_slices_compose_with_tiles():
    model = make_mlp()
    x = torch.randn(16, 8)
    spec = av.HardwareSpec(mapping=av.BitSlicedMapping(n_slices=4, bits_per_slice=3), tile=av.Tile(rows=4, cols=4))
    prog = av.prepare(model, spec)
    prog.load(prog.g0[None], B=16)
    assert (prog.module(x) - model(x)).abs().max() < 0.02
    plan = prog.plans[0]
    assert plan.tiles.gain.shape == (4, 3, 16)       # 4 slices, ceil(9 / 4) = 3 row blocks, 16 outputs


def test_n_tiles_in_program_and_results():
    model = make_mlp(sizes=(8, 16, 16, 4))
    x, y = make_data(n=12, shape=(8,), n_classes=4)
    spec = av.HardwareSpec(tile=av.Tile(rows=4, cols=5))
    ds = av.evaluate(model, spec, (x, y), n_instances=2, progress=False)
    # augmented rows (in + bias row) / 4 x outputs / 5: (9 -> 3) x (16 -> 4), (17 -> 5) x 4, (17 -> 5) x 1
    assert ds.attrs["n_tiles"] == 12 + 20 + 5
    assert ds.attrs["n_tiles_per_layer"].split(",")[0].endswith(":12")
    assert "n_tiles" not in av.evaluate(model, av.HardwareSpec(), (x, y), n_instances=2, progress=False).attrs


# ---------------------------------------------------------------------------------------------------- per-tile ADC
def _reference_tiled_adc(w_aug, x_aug, rows, cols, bits, ranges):
    """Plain loop: each tile's differential partial sums quantised with their own (min-max) range, then added."""
    O, n = w_aug.shape
    s = w_aug.abs().max()
    m = w_aug / s
    gp, gm = m.clamp(min=0), (-m).clamp(min=0)
    y = torch.zeros(x_aug.shape[0], O, dtype=torch.float64)
    levels = 2 ** bits
    for r0 in range(0, n, rows):
        for c0 in range(0, O, cols):
            part = x_aug[:, r0:r0 + rows] @ (gp - gm)[c0:c0 + cols, r0:r0 + rows].T
            if ranges == "column":
                hi, vmin = part.max(0).values, part.min(0).values
            else:
                hi, vmin = part.max(), part.min()
            lo = torch.where(vmin >= 0, torch.zeros_like(vmin), vmin)
            step = (hi - lo) / (levels - 1)
            q = torch.round((torch.minimum(torch.maximum(part, lo), hi) - lo) / step) * step + lo
            y[:, c0:c0 + cols] += q * s
    return y


@pytest.mark.parametrize("ranges", ["tile", "column"])
def test_each_tile_is_digitised_before_the_digital_sum(ranges):
    torch.manual_seed(1)
    lin = nn.Sequential(nn.Linear(11, 7)).eval()
    x = torch.randn(40, 11)
    spec = av.HardwareSpec(bias="digital", periphery=av.Periphery(adc=av.Quantizer(bits=3)),
                           tile=av.Tile(rows=4, cols=3, adc_ranges=ranges, adc_calibration="minmax"))
    prog = av.prepare(lin, spec, calibration_data=x)
    prog.load(prog.g0[None], B=40, adc_levels=8)
    y = prog.module(x)
    ref = _reference_tiled_adc(lin[0].weight.detach().double(), x.double(), 4, 3, 3, ranges) + lin[0].bias.detach().double()
    torch.testing.assert_close(y.double(), ref, atol=1e-4, rtol=1e-4)
    # one ADC per layer would give other numbers: the tiles' partial sums really are digitised on their own
    untiled = av.prepare(lin, av.HardwareSpec(bias="digital", periphery=av.Periphery(adc=av.Quantizer(
        bits=3, percentile=100.0))), calibration_data=x)
    untiled.load(untiled.g0[None], B=40, adc_levels=8)
    assert (untiled.module(x).double() - ref).abs().max() > 1e-2


def test_tiles_need_plain_convolutions():
    net = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)).eval()
    with pytest.raises(UnsupportedLayerError, match="groups"):
        av.prepare(net, av.HardwareSpec(tile=av.Tile(rows=8, cols=8)))


# ---------------------------------------------------------------------------------------------------- parasitics hook
def test_ideal_wires_take_the_per_array_route_and_equal_the_fast_one():
    """With ``parasitics`` set, every array's tiles are multiplied on their own and combined into ADC signals
    afterwards; with ideal wires that equals the fast route through the combined signals."""
    model = _conv_net()
    x = torch.randn(5, 2, 7, 7)
    prog = av.prepare(model, av.HardwareSpec(mapping=av.OffsetMapping(), tile=av.Tile(rows=8, cols=2)))
    g = prog.g0[None]
    prog.load(g, B=5)
    fast = prog.module(x)
    prog.load(g, B=5, parasitics=av.Parasitics(r_wire=0.0))
    torch.testing.assert_close(prog.module(x), fast, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["first_order", "exact"])
def test_tile_mvm_with_wires_equals_each_crossbars_column_currents(mode):
    """Every crossbar of ``cols`` columns (the last one narrower) is solved as its own circuit: equal to
    :func:`column_currents` of each tile (crossbar orientation, inputs as rows) in a plain loop."""
    from anvm_stats.hardware.parasitics import column_currents

    gen = torch.Generator().manual_seed(3)
    R, O, rows, N, cols = 2, 6, 4, 3, 4
    g = torch.rand(R, O, rows, generator=gen, dtype=torch.float64)
    v = torch.rand(R, rows, N, generator=gen, dtype=torch.float64)
    par = av.Parasitics(r_wire=0.05, r_driver=0.02, mode=mode)
    got = tile_mvm(g, v, par, cols)
    ref = torch.empty(R, O, N, dtype=torch.float64)
    for r in range(R):
        for c0 in range(0, O, cols):
            tile = g[r, c0:c0 + cols].T                                     # [rows, cols]: word x bit lines
            ref[r, c0:c0 + cols] = column_currents(tile, v[r].T, par).T     # [cols, N]
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    assert (got - g @ v).abs().max() > 1e-3                                 # the wires do change the currents


def test_tile_mvm_without_parasitics_is_the_product():
    g, v = torch.randn(2, 3, 4, 5), torch.randn(1, 3, 5, 6)
    torch.testing.assert_close(tile_mvm(g, v), g @ v)


# ---------------------------------------------------------------------------------------------------- study files
STUDY = TINY_STUDY.replace("args = { sigma = 0.05 }\n", "args = { sigma = 0.05 }\ntile = { rows = 32, cols = 16 }\n")


def test_study_reads_a_tile(tmp_path):
    path = tmp_path / "tiled.toml"
    path.write_text(STUDY)
    study = load_study(path)
    assert study.hardware["base"].tile == av.Tile(rows=32, cols=16)


@pytest.mark.parametrize("bad,key", [("rows = 32", "rows = 0"), ("rows = 32", "rows = 2.5"),
                                     ("cols = 16", 'cols = "wide"'), ("cols = 16", "cols = 16, shape = 1")])
def test_bad_tile_in_a_study_exits_2_with_the_line(tmp_path, capsys, bad, key):
    text = STUDY.replace(bad, key, 1)
    path = tmp_path / "broken.toml"
    path.write_text(text)
    rc = main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "hardware" in err and "tile" in err
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith("tile ="))
    assert f":{line}:" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(StudyError):
        load_study(path)


def test_tiled_output_noise_from_per_forward_sources():
    """Callers that pass per-forward noise sources (per-chip calibration) keep their output noise on tiles."""
    net = make_mlp()
    x = torch.randn(10, 8)
    spec = av.HardwareSpec(periphery=av.Periphery(adc=av.Quantizer(bits=8), output_noise=0.05),
                           tile=av.Tile(rows=4, cols=4))
    prog = av.prepare(net, spec, calibration_data=x)
    s = av.ChipSampler(prog, seed=0)
    g = prog.g0[None].repeat(2, 1)
    prog.load(g, B=10, adc_levels=256, output_noise=0.05, noise_sources=s.read_generators([0, 1]))
    a, b = prog.module(x), prog.module(x)
    assert not torch.equal(a, b)
    prog.load(g, B=10, adc_levels=256, output_noise=0.05, noise_sources=s.read_generators([0, 1]))
    assert torch.equal(prog.module(x), a)


def test_engine_runs_spec_parasitics_and_r_wire_is_a_knob():
    """``HardwareSpec(parasitics=...)`` reaches every tile: ideal wires give the spec without them (counts
    exactly); resistive wires change the chips; ``r_wire`` sweeps like any knob and the spec round-trips."""
    model = make_mlp()
    x, y = make_data(n=12, shape=(8,), n_classes=4)
    kw = dict(effects=(av.ProgrammingNoise(sigma=0.05),), periphery=av.Periphery(adc=av.Quantizer(bits=6)),
              tile=av.Tile(rows=4, cols=4))
    run = dict(n_instances=3, progress=False, calibration_data=x)
    plain = av.evaluate(model, av.HardwareSpec(**kw), (x, y), **run)
    wired = av.HardwareSpec(parasitics=av.Parasitics(r_wire=0.0), **kw)
    ideal = av.evaluate(model, wired, (x, y), **run)
    np.testing.assert_array_equal(ideal.correct_count.values, plain.correct_count.values)
    np.testing.assert_allclose(ideal.loss.values, plain.loss.values, rtol=1e-5)
    swept = av.sweep(model, wired, (x, y), grid={"r_wire": [0.0, 0.05]}, **run)
    np.testing.assert_array_equal(swept.correct_count.sel(r_wire=0.0).values, plain.correct_count.values)
    assert not np.allclose(swept.loss.sel(r_wire=0.05).values, plain.loss.values, rtol=1e-3)
    assert av.HardwareSpec.from_dict(wired.with_knobs(r_wire=0.05).to_dict()).parasitics.r_wire == 0.05
    with pytest.raises(ConfigError, match="r_wire"):
        av.HardwareSpec(**kw).with_knobs(r_wire=0.1)
