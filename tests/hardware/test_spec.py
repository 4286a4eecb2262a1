"""HardwareSpec: validation, knobs, dict/TOML round trips, presets."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import anvm_stats as av
from anvm_stats.errors import ConfigError


def test_presets_round_trip_through_dict_and_toml():
    for spec in (av.devices.ideal(), av.devices.paper1(0.05, 0.01), av.devices.xiao_state_independent(0.1),
                 av.devices.rram_charan(),
                 av.HardwareSpec(mapping=av.BitSlicedMapping(n_slices=2), g_min=0.1, bias="digital",
                                 effects=(av.Drift(nu_mean=0.05, nu_std=0.01, t_inference=100.0),
                                          av.ReadNoise(sigma=0.01)),
                                 periphery=av.Periphery(dac=av.Quantizer(bits=8), adc=av.Quantizer(levels=12),
                                                        output_noise=0.01))):
        assert av.HardwareSpec.from_dict(spec.to_dict()) == spec
        assert av.HardwareSpec.from_toml(spec.to_toml()) == spec
        assert av.HardwareSpec.from_dict(json.loads(spec.to_json())) == spec


def test_toml_file(tmp_path):
    path = tmp_path / "chip.toml"
    path.write_text(av.devices.paper1(0.1).to_toml())
    assert av.HardwareSpec.from_toml(path) == av.devices.paper1(0.1)


@settings(max_examples=30, deadline=None)
@given(sigma=st.floats(0, 1), p=st.floats(0, 0.5), bits=st.integers(1, 12), t=st.floats(1, 1e8))
def test_knobs_set_the_right_fields(sigma, p, bits, t):
    spec = av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.3), av.StuckAt(p_off=0.01, p_on=0.03),
                                    av.Drift(t_inference=1.0)),
                           periphery=av.Periphery(adc=av.Quantizer(bits=8)))
    new = spec.with_knobs(noise_level=sigma, stuck_at_rate=p, adc_bits=bits, t_inference=t)
    assert new.effects[0].sigma == sigma
    assert new.effects[1].p_off + new.effects[1].p_on == pytest.approx(p)
    assert new.effects[2].t_inference == t
    assert new.periphery.adc.n_levels == 2 ** bits
    assert spec.effects[0].sigma == 0.3    # frozen original untouched


def test_unknown_knob_is_refused():
    with pytest.raises(ConfigError, match="noise_level"):
        av.devices.ideal().with_knobs(noise_level=0.1)
    with pytest.raises(ConfigError, match="adc_bits"):
        av.devices.paper1().with_knobs(adc_bits=4)


@pytest.mark.parametrize("data,field", [
    ({"effects": [{"kind": "programming_noise", "sigma": -1}]}, "effects[0].ProgrammingNoise.sigma"),
    ({"effects": [{"kind": "nonsense"}]}, "effects[0].kind"),
    ({"effects": [{"kind": "stuck_at", "p_of": 0.1}]}, "effects[0].p_of"),
    ({"mapping": {"kind": "differential", "granularity": "tile"}}, "mapping.DifferentialMapping.granularity"),
    ({"g_min": 1.5}, "g_min"),
    ({"bias": "analog"}, "bias"),
    ({"colour": "red"}, "colour"),
    ({"periphery": {"adc": {"bits": 0}}}, "periphery.adc.Quantizer.bits"),
    ({"periphery": {"adc": {"bits": 4, "levels": 3}}}, "periphery.adc.Quantizer.bits/levels"),
    ({"periphery": {"adc": {"bits": 4}, "gain": 2}}, "periphery.gain"),
])
def test_bad_spec_data_names_the_key(data, field):
    with pytest.raises(ConfigError) as info:
        av.HardwareSpec.from_dict(data)
    assert info.value.field == field


def test_spec_rejects_non_effects():
    with pytest.raises(ConfigError, match="effects\\[0\\]"):
        av.HardwareSpec(effects=("noise",))
