"""Study files: every shipped study validates; broken ones fail with the key, value and line named."""

from pathlib import Path

import numpy as np
import pytest

from anvm_stats import devices
from anvm_stats.cli import main
from anvm_stats.errors import ConfigError
from anvm_stats.hardware import HardwareSpec
from anvm_stats.study import StudyError, builtin_study, load_study
from anvm_stats.study.lines import find_line, key_lines
from tests.helpers import TINY_STUDY

ROOT = Path(__file__).resolve().parents[2]
STUDIES = sorted((ROOT / "studies").glob("*.toml"))

GOOD = TINY_STUDY


def test_studies_folder_is_not_empty():
    names = {p.stem for p in STUDIES}
    for required in ("quickstart", "paper1_fig7_digits", "paper1_fig8_digits", "paper1_fig9_digits",
                     "paper1_fig7_wrn_cifar100", "paper1_fig8_wrn_cifar100", "paper1_fig9_wrn_cifar100",
                     "rram_charan", "mapping_xiao"):
        assert required in names


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_shipped_study_validates(path):
    study = load_study(path)
    assert study.name == path.stem
    assert study.training or study.model.weights
    assert study.sweep.grid


def test_builtin_quickstart_is_the_shipped_one():
    assert Path(str(builtin_study("quickstart"))).read_text() == (ROOT / "studies" / "quickstart.toml").read_text()


def test_paper_studies_have_the_required_shape():
    fig7 = load_study(ROOT / "studies" / "paper1_fig7_digits.toml")
    assert 0.0 in [t.sigma_train for t in fig7.training] and len(fig7.training) >= 3
    assert set(fig7.sweep.grid["noise_level"]) == {0.02, 0.05, 0.08, 0.1, 0.12, 0.15, 0.18, 0.2}
    assert fig7.sweep.n_instances >= 100
    fig9 = load_study(ROOT / "studies" / "paper1_fig9_digits.toml")
    assert list(fig9.sweep.grid["adc_levels"]) == list(range(2, 19))
    xiao = load_study(ROOT / "studies" / "mapping_xiao.toml")
    assert {s.mapping.kind for s in xiao.hardware.values()} == {"differential", "offset", "bit_sliced"}
    assert list(xiao.sweep.grid["adc_bits"]) == list(range(4, 11))
    rram = load_study(ROOT / "studies" / "rram_charan.toml")
    assert rram.recovery is not None
    assert {e.kind for e in rram.hardware["base"].effects} >= {"levels", "stuck_at", "programming_noise"}


def test_training_seeds_default_to_five_for_comparisons_and_one_otherwise(tmp_path):
    one = tmp_path / "one.toml"
    one.write_text(GOOD)
    assert load_study(one).seeds == (1,)                     # one trained model: the single-seed study
    pair = tmp_path / "pair.toml"
    pair.write_text(GOOD.replace("epochs = 1", "epochs = 1\n[training.variants.a]\n[training.variants.b]\nepochs = 2"))
    assert load_study(pair).seeds == (1, 2, 3, 4, 5)         # a comparison: 5 seeds from study.seed
    counted = tmp_path / "counted.toml"
    counted.write_text(GOOD.replace("epochs = 1", "epochs = 1\nseeds = 3"))
    assert load_study(counted).seeds == (1, 2, 3)
    listed = tmp_path / "listed.toml"
    listed.write_text(GOOD.replace("epochs = 1", "epochs = 1\nseeds = [7, 0]"))
    assert load_study(listed).seeds == (7, 0)
    with pytest.raises(StudyError, match="training.variants.b.seeds"):      # seeds are the study's, not a variant's
        pair.write_text(GOOD.replace("epochs = 1", "epochs = 1\n[training.variants.a]\n[training.variants.b]\n"
                                                   "seeds = 2"))
        load_study(pair)


def test_training_comparisons_train_at_least_five_seeds():
    for name in ("paper1_fig7_digits", "paper1_fig8_digits", "paper1_fig9_digits", "rram_charan",
                 "paper1_fig7_wrn_cifar100", "paper1_fig8_wrn_cifar100", "paper1_fig9_wrn_cifar100"):
        study = load_study(ROOT / "studies" / f"{name}.toml")
        assert len(study.training) >= 2 and len(study.seeds) >= 5, name


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# (replace this, with this, the key the message must name, the text on the offending line)
BROKEN = [
    ("n_instances = 4", "n_instance = 4", "sweep.n_instance", "n_instance = 4"),
    ("epochs = 1", 'epochs = "one"', "training.epochs", 'epochs = "one"'),
    ("noise_level = [0.05, 0.1]", "noise_level = [-0.05, 0.1]", "sweep.grid.noise_level[0]", "noise_level = [-0.05"),
    ("noise_level = [0.05, 0.1]", "stuck_at_rate = [0.5, 1.5]", "sweep.grid.stuck_at_rate[1]", "stuck_at_rate"),
    ('args = { sigma = 0.05 }', 'args = { sigma = -0.05 }', "hardware.args", "args = { sigma = -0.05 }"),
    ('name = "digits"', 'name = "imagenet"', "data.name", 'name = "imagenet"'),
    ('method = "plain"', 'method = "adam"', "training.method", 'method = "adam"'),
    ('name = "mlp"', 'name = "vgg"', "model.name", 'name = "vgg"'),
    ("seed = 1", "seed = -1", "study.seed", "seed = -1"),
    ("[sweep]", "[sweep]\nyield_threshold = 0.9", "sweep.yield_threshold", "yield_threshold"),
    ("n_instances = 4", 'n_instances = 4\ncost = "yes"', "sweep.cost", 'cost = "yes"'),
    ("epochs = 1", "epochs = 1\nseeds = 0", "training.seeds", "seeds = 0"),
    ("epochs = 1", "epochs = 1\nseeds = 2.5", "training.seeds", "seeds = 2.5"),
    ("epochs = 1", 'epochs = 1\nseeds = "five"', "training.seeds", 'seeds = "five"'),
    ("epochs = 1", "epochs = 1\nseeds = []", "training.seeds", "seeds = []"),
    ("epochs = 1", "epochs = 1\nseeds = [3, -1]", "training.seeds[1]", "seeds = [3, -1]"),
    ("epochs = 1", "epochs = 1\nseeds = [3, 3]", "training.seeds[1]", "seeds = [3, 3]"),
    ("n_instances = 4", ("target_ci_width = 0.1\n[training.variants.a]\nepochs = 1\n[training.variants.b]\n"
     "epochs = 2"), "sweep.target_ci_width", "target_ci_width"),
]


@pytest.mark.parametrize("old,new,key,line_text", BROKEN, ids=[b[2] for b in BROKEN])
def test_broken_study_exits_2_naming_key_and_line(tmp_path, capsys, old, new, key, line_text):
    text = GOOD.replace(old, new, 1)
    assert text != GOOD
    path = tmp_path / "broken.toml"
    path.write_text(text)
    rc = main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert key in err
    assert f":{_line_of(text, line_text)}:" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(StudyError) as exc:
        load_study(path)
    assert isinstance(exc.value, ConfigError)
    assert exc.value.line == _line_of(text, line_text)


def test_missing_model_and_probability_above_one(tmp_path, capsys):
    path = tmp_path / "nomodel.toml"
    path.write_text(GOOD.replace('[model]\nname = "mlp"\nargs = { in_features = 64, hidden = [8], n_classes = 10 }\n',
                                 ""))
    assert main(["run", str(path), "--quiet"]) == 2
    assert "model" in capsys.readouterr().err
    text = GOOD.replace('preset = "paper1"\nargs = { sigma = 0.05 }',
                        'preset = "rram_charan"\nargs = { p_stuck_off = 1.5 }').replace(
        "noise_level = [0.05, 0.1]", "stuck_at_rate = [0.01]")
    path.write_text(text)
    assert main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "p_off" in err and "1.5" in err and f":{_line_of(text, 'p_stuck_off')}:" in err


def test_array_of_tables_error_points_at_the_entry(tmp_path):
    text = GOOD.replace('preset = "paper1"\nargs = { sigma = 0.05 }\n',
                        '[[hardware.effects]]\nkind = "programming_noise"\nsigma = 0.05\n\n'
                        '[[hardware.effects]]\nkind = "stuck_at"\np_off = 2.0\n')
    path = tmp_path / "aot.toml"
    path.write_text(text)
    with pytest.raises(StudyError) as exc:
        load_study(path)
    assert "hardware.effects[1]" in exc.value.field
    assert exc.value.line in (_line_of(text, "p_off = 2.0"), _line_of(text, 'kind = "stuck_at"') - 1)


def test_invalid_toml_and_missing_file(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(GOOD + "\n[sweep\n")
    assert main(["run", str(path), "--quiet"]) == 2
    assert "TOML" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "nope.toml"), "--quiet"]) == 2
    assert "nope.toml" in capsys.readouterr().err


def test_unknown_knob_for_the_chip_is_rejected(tmp_path):
    path = tmp_path / "knob.toml"
    path.write_text(GOOD.replace("noise_level = [0.05, 0.1]", "adc_bits = [4, 6]"))
    with pytest.raises(StudyError, match="sweep.grid.adc_bits"):
        load_study(path)


def test_training_variants_and_sigma_list(tmp_path):
    text = GOOD.replace('method = "plain"\nepochs = 1', 'method = "hasgd"\nepochs = 1\nsigma_train = [0.0, 0.1]')
    path = tmp_path / "s.toml"
    path.write_text(text)
    st = load_study(path)
    assert [t.label for t in st.training] == ["sigma_train=0", "sigma_train=0.1"]
    assert [t.q.effects[0].sigma for t in st.training] == [0.0, 0.1]
    # plain training with a training noise is a contradiction
    path.write_text(GOOD.replace('method = "plain"', 'method = "plain"\nsigma_train = 0.1'))
    with pytest.raises(StudyError, match="training.sigma_train"):
        load_study(path)


def test_key_lines_scans_tables_inline_and_arrays():
    text = '[a]\nx = 1\ny = { p = 2, q = 3 }\n\n[[a.e]]\nk = 1\n[[a.e]]\nk = 2\n[a.v.one]\nz = "s"\n'
    lines = key_lines(text)
    assert lines["a"] == 1 and lines["a.x"] == 2 and lines["a.y.q"] == 3
    assert lines["a.e[0].k"] == 6 and lines["a.e[1].k"] == 8 and lines["a.v.one.z"] == 10
    assert find_line(lines, "a.e[1].k.sub") == 8
    assert find_line(lines, "a.missing") == 1
    assert find_line(lines, "nothing") is None


def test_with_knobs_extra_axes():
    spec = HardwareSpec.from_dict({**devices.paper1(0.1).to_dict(), "periphery": {"adc": {"bits": 4}}})
    s = spec.with_knobs(adc_levels=7, mean_shift=0.02, noise_level=0.2)
    assert s.periphery.adc.n_levels == 7
    assert s.effects[0].mu == 0.02 and s.effects[0].sigma == 0.2
    with pytest.raises(ConfigError, match="adc_levels"):
        devices.paper1(0.1).with_knobs(adc_levels=4)
    with pytest.raises(ConfigError, match="mean_shift"):
        devices.ideal().with_knobs(mean_shift=0.1)


# --- issue 15 item 9 + issue 16: study keys use the engine's names --------------------------------------------------
STUDY = TINY_STUDY.replace("seed = 1\n", "").replace("n_instances = 4\n", "")   # keys appended by tests


@pytest.mark.parametrize("old, new, value", [("eval_batch_size", "samples_per_batch", 500),
                                             ("chunk_size", "instances_per_chunk", 8),
                                             ("batch_instances", "instances_per_round", 4)])
def test_old_sweep_keys_are_refused_naming_the_new_key(tmp_path, old, new, value):
    from anvm_stats.study import StudyError, load_study

    extra = "target_ci_width = 0.5\n" if new == "instances_per_round" else "n_instances = 4\n"
    path = tmp_path / "s.toml"
    path.write_text(STUDY + extra + f"{old} = {value}\n")
    with pytest.raises(StudyError) as err:
        load_study(path)
    msg = str(err.value)
    assert f"sweep.{old}" in msg and f"sweep.{new}" in msg and msg.split(": ")[0].endswith("s.toml:22") and "\n" not in msg, msg
    path.write_text(STUDY + extra + f"{new} = {value}\n")
    assert getattr(load_study(path).sweep, new) == value


def test_study_sweep_passes_the_engine_options_through(monkeypatch):
    """The study's samples_per_batch / instances_per_chunk reach the engine's RunOptions."""
    import tomllib

    import anvm_stats.study.runner as runner
    from anvm_stats.study.schema import parse_study

    text = STUDY + "n_instances = 3\nsamples_per_batch = 7\ninstances_per_chunk = 2\n"
    study = parse_study(tomllib.loads(text), text=text)
    seen = []
    monkeypatch.setattr(runner, "sweep", lambda *a, options, **k: seen.append(options))

    class Ctx:
        def __init__(self):
            self.study, self.test, self.device, self.progress, self.calibration = study, None, None, False, None
            self.seed = study.seed

        def grids(self):
            return {}, {}

        def executor(self, *a):
            return None

        def over_all(self, fn):
            return fn(None, None)

    runner._sweep_instances(Ctx(), np.arange(3))
    assert [(o.samples_per_batch, o.instances_per_chunk) for o in seen] == [(7, 2)]


def test_shipped_studies_use_no_old_sweep_key():
    from anvm_stats.study.schema import RENAMED_SWEEP_KEYS

    files = STUDIES + sorted(ROOT.glob("anvm_stats/study/builtin/*.toml"))
    assert files
    for f in files:
        for old in RENAMED_SWEEP_KEYS:
            assert f"\n{old} =" not in f.read_text(), (f, old)


def test_sweep_cost_option_parses_and_defaults_to_off():
    """Issue 20: ``sweep.cost = true`` asks the runner for cost variables; absent, it is off."""
    import tomllib

    from anvm_stats.study.schema import parse_study

    on = GOOD.replace("n_instances = 4", "n_instances = 4\ncost = true")
    assert parse_study(tomllib.loads(on), text=on).sweep.cost is True
    assert parse_study(tomllib.loads(GOOD), text=GOOD).sweep.cost is False
