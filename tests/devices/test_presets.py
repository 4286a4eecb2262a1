"""anvm_stats.devices.presets: NeuRRAM interpolation, every preset keeps the device contract and runs through
evaluate, time knobs sweep, one registry reaches Python, TOML and the CLI."""

import math

import numpy as np
import pytest
import torch

import anvm_stats as av
from anvm_stats.devices import PRESETS, NeuRRAMNoise, neurram_rram, pcm_joshi2020
from anvm_stats.hardware import Bounds, HardwareSpec
from anvm_stats.testing import check_device
from tests.helpers import make_data, make_mlp


def test_neurram_sigma_and_time_interpolation():
    eff = NeuRRAMNoise()
    g = torch.tensor([0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(eff.sigma(g), torch.tensor([0.348, 1.103], dtype=torch.float64) / 40.0)
    day = NeuRRAMNoise(t_inference=86400.0).sigma(g)
    half = NeuRRAMNoise(t_inference=math.sqrt(86400.0)).sigma(g)   # halfway in log t between 1 s and 1 day
    torch.testing.assert_close(half, 0.5 * (eff.sigma(g) + day))
    check_device(eff, declared_mean=lambda x: x, declared_std=eff.sigma, zero_noise={"noise_level": 0.0},
                 levels=(0.2, 0.5), n=20_000)


def declared(spec):
    """Closed-form moments of the presets' single Gaussian effects (else None: contract only)."""
    e = spec.effects[0]
    if isinstance(e, av.ProgrammingNoise) and len(spec.effects) == 1 and e.relative_to == "half_range":
        return dict(declared_mean=lambda g: g + 0.45 * e.mu, declared_std=0.45 * e.sigma)
    return {}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_keep_the_device_contract(name):
    spec = PRESETS[name]()
    bounds = Bounds(g_min=0.1)
    for e in spec.effects:
        kw = declared(spec) if e is spec.effects[0] else {}
        check_device(e, n=5000, bounds=bounds, **kw)
    assert HardwareSpec.from_dict(spec.to_dict()) == spec
    assert PRESETS[name].factory.__doc__ and PRESETS[name].source and PRESETS[name].name == name


@pytest.fixture(scope="module")
def tiny():
    return make_mlp(sizes=(8, 12, 5)), make_data(n=32, n_classes=5)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_runs_through_evaluate(name, tiny):
    net, data = tiny
    spec = PRESETS[name]()
    a = av.evaluate(net, spec, data, n_instances=6, seed=3, progress=False)
    b = av.evaluate(net, spec, data, n_instances=6, seed=3, progress=False)
    assert a.sizes["instance"] == 6
    assert np.all((a.accuracy.values >= 0) & (a.accuracy.values <= 1)) and np.all(np.isfinite(a.loss.values))
    np.testing.assert_array_equal(a.correct_count.values, b.correct_count.values)


def test_time_knobs_sweep_through_pcm_and_neurram(tiny):
    net, data = tiny
    for spec, times in ((pcm_joshi2020(), [20.0, 3600.0, 1e6]), (neurram_rram(), [1.0, 86400.0])):
        ds = av.sweep(net, spec, data, grid={"t_inference": times}, n_instances=4, seed=0, progress=False)
        assert ds.sizes == {"t_inference": len(times), "instance": 4}


def test_one_registry_reaches_python_toml_and_the_cli(tmp_path, capsys):
    """Every preset by name from Python, from a study file's [hardware] table (PCM and NeuRRAM included), and in
    ``anvm-stats presets``; an unknown name is refused naming the known ones."""
    from anvm_stats.cli import main
    from anvm_stats.errors import ConfigError
    from anvm_stats.study import load_study

    assert av.devices.preset("paper1", sigma=0.07) == av.devices.paper1(0.07)
    assert av.devices.preset("pcm_joshi2020", t_inference=20.0) == pcm_joshi2020(t_inference=20.0)
    with pytest.raises(ConfigError) as err:
        av.devices.preset("charan_rram")
    assert err.value.field == "preset" and "rram_charan" in str(err.value)
    for name, args in (("pcm_joshi2020", "{ t_inference = 86400.0 }"), ("neurram_rram", "{ t_inference = 1.0 }"),
                       ("rram_charan", "{ levels = 8 }")):
        path = tmp_path / f"{name}.toml"
        path.write_text(f"""[study]\nname = "p"\n[model]\nname = "mlp"\n[data]\nname = "digits"\n[training]
method = "plain"\nepochs = 1\n[hardware]\npreset = "{name}"\nargs = {args}\n[sweep]\nn_instances = 2\n""")
        (spec,) = load_study(path).hardware.values()
        import tomllib
        assert spec == av.devices.preset(name, **tomllib.loads(f"a = {args}")["a"])
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == list(PRESETS)
    assert all(PRESETS[ln.split()[0]].source in ln for ln in lines)
