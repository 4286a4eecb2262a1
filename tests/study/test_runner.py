"""Issue 15 items 3, 4, 5, 6, 10 in study runs: everything that can be checked is checked before training and
before the sweep (exit 2, one line naming the option or key, with the study file's line); non-finite results
are flagged; converter ranges are calibrated on the training split."""

import types
import warnings

import pytest
import torch

from anvm_stats import dims
from anvm_stats.cli import main
from anvm_stats.study import load_results, load_study, parse_study, run_study
from anvm_stats.study.config import StudyError

STUDY = """\
[study]
name = "{name}"
seed = {seed}

[model]
name = "mlp"
args = {{ in_features = {features}, hidden = [8], n_classes = {classes} }}

[data]
name = "digits"
n_train = 200
n_test = 60

[hardware]
preset = "paper1"
args = {{ sigma = {sigma} }}

[sweep]
grid = {grid}
n_instances = {n}

[training]
method = "plain"
epochs = 1
lr = 0.01
"""


def _write(tmp_path, name="safe", seed=0, features=64, classes=10, sigma=0.05, grid="{ noise_level = [0.05] }",
           n=4, raw=None):
    path = tmp_path / "s.toml"
    text = raw if raw is not None else STUDY.format(name=name, seed=seed, features=features, classes=classes,
                                                    sigma=sigma, grid=grid, n=n)
    path.write_text(text) if isinstance(text, str) else path.write_bytes(text)
    return path


@pytest.fixture
def trainer(monkeypatch):
    """Counts training calls (a run refused up front must never reach the trainer)."""
    calls = []

    def train_hasgd(model, spec, data, *, epochs=1, seed=0, **kw):
        calls.append(epochs)
        return types.SimpleNamespace(model=model.eval(), history={})

    import anvm_stats.study.train
    monkeypatch.setattr(anvm_stats.study.train, "train_hasgd", train_hasgd)
    return calls


def _refused(capsys, argv, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


# --- item 3: paths, grids, sizes, before training ---------------------------------------------------------
def test_out_and_cache_that_are_files_are_refused_before_training(tmp_path, capsys, trainer):
    path = _write(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("x")
    _refused(capsys, ["run", str(path), "--quiet", "--out", str(afile)], "--out", "file")
    _refused(capsys, ["run", str(path), "--quiet", "--out", str(afile / "sub")], "--out", "is a file")
    _refused(capsys, ["run", str(path), "--quiet", "--out", str(tmp_path / "o"), "--cache", str(afile)],
             "--cache", "file")
    _refused(capsys, ["run", str(path), "--quiet", "--out", str(tmp_path / "o"), "--store", str(afile)],
             "--store")
    assert trainer == [] and not (tmp_path / "o").exists()


def test_unwritable_out_is_refused(tmp_path, capsys, trainer, monkeypatch):
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p) == str(locked) else real(p, mode, **k))
    _refused(capsys, ["run", str(_write(tmp_path)), "--quiet", "--out", str(locked / "o")], "--out", "writable")
    assert trainer == []


def test_every_grid_value_is_applied_before_training(tmp_path, capsys, trainer):
    # drift from t0 = 1 s: a t_inference of 0.5 in the middle of the list used to pass (ends only)
    text = STUDY.format(name="s", seed=0, features=64, classes=10, sigma=0.05,
                        grid="{ t_inference = [10.0, 0.5, 100.0] }", n=4)
    text = text.replace("args = { sigma = 0.05 }", 'args = { sigma = 0.05 }\neffects = [{ kind = "programming_noise", '
                                                   'sigma = 0.05 }, { kind = "drift", t0 = 1.0 }]')
    _refused(capsys, ["run", str(_write(tmp_path, raw=text)), "--quiet", "--out", str(tmp_path / "o")],
             "sweep.grid.t_inference[1]=0.5", "[1.0, inf]", "s.toml:20")
    assert trainer == []


@pytest.mark.parametrize("values, bad", [("[1, 1.0]", "[1]"), ("[0.0, -0.0]", "[1]"), ("[0.1, 0.2, 0.1]", "[2]")])
def test_duplicate_grid_values_after_normalisation(tmp_path, values, bad):
    path = _write(tmp_path, grid=f"{{ noise_level = {values} }}")
    with pytest.raises(StudyError, match=rf"sweep\.grid\.noise_level\{bad}.*distinct") as err:
        load_study(path)
    assert err.value.line == 19


def test_duplicate_sigma_train_after_normalisation(tmp_path):
    text = STUDY.format(name="s", seed=0, features=64, classes=10, sigma=0.05, grid="{ noise_level = [0.05] }",
                        n=4).replace('method = "plain"', 'method = "hasgd"\nsigma_train = [1, 1.0]')
    with pytest.raises(StudyError, match=r"training\.sigma_train\[1\].*distinct"):
        load_study(_write(tmp_path, raw=text))


def test_instance_counts_that_cannot_fit_are_refused_before_training(tmp_path, capsys, trainer):
    path = _write(tmp_path, n=10**12)
    _refused(capsys, ["run", str(path), "--quiet", "--out", str(tmp_path / "o")], "sweep.n_instances",
             "1000000000000", "GiB", "s.toml:20")
    _refused(capsys, ["run", str(_write(tmp_path)), "--quiet", "--out", str(tmp_path / "o"), "--instances",
                      str(2**64)], "sweep.n_instances", str(2**64))
    assert trainer == []


def test_check_size_bound_is_exact():
    from anvm_stats.study.preflight import RESULT_BYTES_PER_CELL, check_size

    study = load_study_text(STUDY.format(name="s", seed=0, features=64, classes=10, sigma=0.05,
                                         grid="{ noise_level = [0.05, 0.1, 0.2] }", n=100))
    need = 100 * 3 * RESULT_BYTES_PER_CELL
    check_size(study, 1, memory=need)                 # exactly fits
    with pytest.raises(StudyError, match="at most 99 chips"):
        check_size(study, 1, memory=need - 1)


def load_study_text(text):
    import tomllib

    return parse_study(tomllib.loads(text), text=text, source="t.toml")


# --- item 4: unclear errors -> one line naming the field -----------------------------------------------------
def test_non_utf8_study_file(tmp_path, capsys):
    raw = STUDY.format(name="s", seed=0, features=64, classes=10, sigma=0.05, grid="{ noise_level = [0.05] }",
                       n=4).encode().replace(b'name = "s"', b'name = "s\xe9"')
    path = _write(tmp_path, raw=raw)
    _refused(capsys, ["run", str(path), "--quiet"], "UTF-8", "0xe9", "s.toml:2")
    with pytest.raises(StudyError, match="UTF-8"):
        load_study(path)


def test_deeply_nested_toml(tmp_path, capsys):
    path = _write(tmp_path, raw="x = " + "[" * 5000 + "]" * 5000 + "\n")
    _refused(capsys, ["run", str(path), "--quiet"], "nested", "s.toml")
    with pytest.raises(StudyError, match="nested"):
        load_study(path)
    _refused(capsys, ["run", str(_write(tmp_path)), "--quiet", "--set", "study.seed=" + "[" * 5000 + "]" * 5000],
             "--set", "nested")


@pytest.mark.parametrize("key", ["study.seed", "model.seed", "data.split_seed"])
def test_seeds_beyond_int64(tmp_path, capsys, key):
    _refused(capsys, ["run", str(_write(tmp_path)), "--quiet", "--set", f"{key}={2**64}"], key, str(2**64),
             str(2**63 - 1))


def test_cli_seed_beyond_int64(tmp_path, capsys):
    _refused(capsys, ["run", str(_write(tmp_path)), "--quiet", "--seed", str(2**63)], "study.seed")


def test_wrong_input_size_and_labels_outside_outputs_refused_before_training(tmp_path, capsys, trainer):
    _refused(capsys, ["run", str(_write(tmp_path, features=32)), "--quiet", "--out", str(tmp_path / "o")],
             "data.x", "[64]", "model.args")
    _refused(capsys, ["run", str(_write(tmp_path, classes=5)), "--quiet", "--out", str(tmp_path / "o")],
             "data.y", "[0, 9]", "[0, 4]", "5 outputs")
    assert trainer == []


# --- item 6: names -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["..", ".", "a/b", "..\\\\x", ".hidden", "-rf"])
def test_study_name_must_be_one_safe_path_component(tmp_path, capsys, name):
    _refused(capsys, ["run", str(_write(tmp_path, name=name)), "--quiet"], "study.name", "s.toml:2")


def test_run_study_refuses_unsafe_name_of_a_study_built_in_code(tmp_path, trainer, monkeypatch):
    import dataclasses

    monkeypatch.chdir(tmp_path)
    study = dataclasses.replace(load_study(_write(tmp_path)), name="..")
    with pytest.raises(StudyError, match="study.name"):
        run_study(study, progress=False, log=lambda s: None, cache_dir=None)
    assert trainer == [] and list(tmp_path.iterdir()) == [tmp_path / "s.toml"]


# --- items 5 and 10: after the sweep ------------------------------------------------------------------------
def test_nonfinite_loss_is_flagged_and_calibration_is_the_training_split(tmp_path, trainer):
    study = load_study(_write(tmp_path, sigma=1e300, grid="{ noise_level = [1e300] }"))
    with pytest.warns(RuntimeWarning, match="non-finite"):
        res = run_study(study, out=tmp_path / "o", progress=False, log=lambda s: None, cache_dir=None)
    ds = load_results(res.results_path)
    n = ds[dims.LOSS].size
    assert ds.attrs["nonfinite_cells"][dims.LOSS] == int((~torch.isfinite(torch.as_tensor(ds[dims.LOSS].values)))
                                                        .sum()) > 0
    assert ds.attrs["nonfinite_cells"][dims.LOSS] <= n
    assert ds.attrs["calibration_data"] == "digits-train-subset200-seed0"


def test_finite_results_carry_no_flag_and_no_warning(tmp_path, trainer):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = run_study(load_study(_write(tmp_path)), out=tmp_path / "o", progress=False, log=lambda s: None,
                        cache_dir=None)
    assert "nonfinite_cells" not in res.dataset.attrs


def test_sweep_is_calibrated_on_the_training_split(tmp_path, trainer, monkeypatch):
    import anvm_stats.study.runner as runner

    seen = []
    real = runner.sweep

    def spy(model, spec, data, **kw):
        seen.append((data.name, getattr(kw.get("calibration_data"), "name", None)))
        return real(model, spec, data, **kw)

    monkeypatch.setattr(runner, "sweep", spy)
    run_study(load_study(_write(tmp_path)), out=tmp_path / "o", progress=False, log=lambda s: None, cache_dir=None)
    assert seen == [("digits-test-subset60-seed0", "digits-train-subset200-seed0")]


def test_huge_values_are_cut_so_the_message_stays_short(tmp_path, capsys):
    text = STUDY.format(name="s", seed=0, features=64, classes=10, sigma=0.05, grid="{ noise_level = [0.05] }",
                        n=4).replace('seed = 0', 'seed = 0\ndescription = ' + "[" * 300 + "]" * 300)
    err = _refused(capsys, ["run", str(_write(tmp_path, raw=text)), "--quiet"], "study.description", "characters")
    assert len(err) < 600


# --- issue 20: sweep.cost adds energy, latency and area along the grid, fixed and sequential instance counts -----
@pytest.mark.parametrize("count", ["n_instances = 4",
                                   "target_ci_width = 0.5\nmax_instances = 8\ninstances_per_round = 4"])
def test_cost_option_adds_cost_variables_and_the_front_section(tmp_path, trainer, count):
    text = STUDY.format(name="c", seed=0, features=64, classes=10, sigma=0.05, grid="{ noise_level = [0.02, 0.05] }",
                        n=4).replace("n_instances = 4", count + "\ncost = true")
    res = run_study(load_study(_write(tmp_path, raw=text)), out=tmp_path / "o", progress=False, log=lambda s: None,
                    cache_dir=None)
    ds = load_results(res.results_path)
    assert ds[dims.ENERGY_PER_INFERENCE].dims == (dims.NOISE_LEVEL,)       # per point, no instance dim
    assert ds[dims.ENERGY].dims == (dims.NOISE_LEVEL, dims.COMPONENT) and float(ds[dims.CHIP_AREA][0]) > 0
    assert dims.INSTANCE in ds[dims.ACCURACY].dims
    assert "accuracy vs energy per inference" in res.report["markdown"].read_text()


# --- issue 19 item 1: training seeds -----------------------------------------------------------------------------
def _two_models(tmp_path, name, seed, seeds):
    text = STUDY.format(name=name, seed=seed, features=64, classes=10, sigma=0.1, grid="{ noise_level = [0.1] }",
                        n=6)
    text = text.replace('method = "plain"\n', 'method = "hasgd"\nsigma_train = [0.0, 0.1]\nsamples = 2\n'
                        f"seeds = {seeds}\n")
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return load_study(path)


def test_each_training_seed_is_the_single_seed_study_of_that_seed(tmp_path):
    """seeds = [0, 1]: a train_seed dim; seed 1's models and chips are exactly those of the one-seed study with
    study.seed = 1 (trained from seed 1, chips drawn from seed 1), so seeds = 1 is the old study, and the report
    gives the two-level interval across seeds beside the first seed's chips-only interval."""
    kw = dict(cache_dir=tmp_path / "cache", progress=False, log=lambda s: None)
    both = run_study(_two_models(tmp_path, "both", 0, "[0, 1]"), out=tmp_path / "both", **kw).dataset
    one = run_study(_two_models(tmp_path, "one", 1, 1), out=tmp_path / "one", **kw).dataset
    assert dims.TRAIN_SEED not in one.dims and "train_seeds" not in one.attrs
    assert list(both[dims.TRAIN_SEED].values) == [0, 1] and both.attrs["train_seeds"] == [0, 1]
    for var in (dims.ACCURACY, dims.LOSS, "float_accuracy"):
        assert both[var].sel({dims.TRAIN_SEED: 1}, drop=True).identical(one[var]), var
    assert not both[dims.ACCURACY].sel({dims.TRAIN_SEED: 0}).equals(both[dims.ACCURACY].sel({dims.TRAIN_SEED: 1}))
    assert both["sigma_train"].dims == ("model",)
    md = (tmp_path / "both" / "report.md").read_text()
    assert "95% CI across seeds" in md and "seed 0 chips-only 95% CI" in md and "Accuracy across training seeds" in md
    assert "CI across seeds" not in (tmp_path / "one" / "report.md").read_text()
