"""Leftovers of issues 15 and 16 in the engine: the entry points refuse data the model cannot score and instance
indices that are not int64 (or whose results cannot fit in memory) before any work, and flag non-finite results;
one vocabulary (evaluate_until's ``calibration_data`` and seed default)."""

import dataclasses
import inspect
import warnings

import numpy as np
import pytest
import torch

import anvm_stats as av
from anvm_stats import dims
from anvm_stats.calibration import calibrate, drift_sweep
from anvm_stats.checks import NONFINITE_ATTR
from anvm_stats.errors import ConfigError
from anvm_stats.hardware import DifferentialMapping, Drift, HardwareSpec, Periphery, ProgrammingNoise, Quantizer
from anvm_stats.models import build_model

N_CLASSES = 10


def _net():
    return build_model("mlp", seed=0, in_features=6, hidden=[5], n_classes=N_CLASSES)


def _data(n=12):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 6, generator=g), torch.randint(0, N_CLASSES, (n,), generator=g)


def _drift_spec():
    return HardwareSpec(mapping=DifferentialMapping(), effects=(ProgrammingNoise(sigma=0.05),
                                                               Drift(nu_mean=0.05, nu_std=0.01)))


def _bad_data():
    """(x, y, field, words in the message) for each kind of data the model cannot score."""
    x, y = _data()
    nan_x = x.clone()
    nan_x[3, 2] = float("nan")
    inf_x = x.clone()
    inf_x[0, 0] = float("inf")
    label10 = y.clone()
    label10[5] = N_CLASSES                                     # label 10 on a 10-output net
    return [
        pytest.param(x, label10, "data.y", ["[0, 9]", "10 outputs"], id="label-out-of-range"),
        pytest.param(x, y - 20, "data.y", ["[0, 9]"], id="negative-labels"),
        pytest.param(torch.randn(12, 7), y, "data.x", ["[7]", "shape the model takes"], id="feature-size"),
        pytest.param(nan_x, y, "data.x", ["1 NaN/inf"], id="nan-input"),
        pytest.param(inf_x, y, "data.x", ["1 NaN/inf"], id="inf-input"),
        pytest.param(x, y.float() + 0.5, "data.y", ["float32", "not truncated"], id="float-labels"),
    ]


def _one_line(err: ConfigError, field: str, words) -> None:
    msg = str(err)
    assert err.field == field and "\n" not in msg and "not allowed" in msg, msg
    for w in words:
        assert w in msg, (w, msg)


# --- item 4/5: data the model cannot score, refused before any work by every entry point ---------------------------
@pytest.mark.parametrize("x, y, field, words", _bad_data())
def test_sweep_and_evaluate_refuse_bad_data_naming_the_field(x, y, field, words, monkeypatch):
    import anvm_stats.montecarlo as mc

    def no_work(*a, **k):                                       # nothing may be prepared before the check
        raise AssertionError("the program was prepared before the data was checked")

    monkeypatch.setattr(mc, "prepare", no_work)
    for run in (lambda: av.evaluate(_net(), av.devices.paper1(0.1), (x, y), n_instances=2, progress=False),
                lambda: av.sweep(_net(), av.devices.paper1(0.1), (x, y), grid={"noise_level": [0.5, 1.0]},
                                 n_instances=2, progress=False)):
        with pytest.raises(ConfigError) as err:
            run()
        _one_line(err.value, field, words)


@pytest.mark.parametrize("x, y, field, words", _bad_data())
def test_evaluate_until_drift_sweep_and_calibrate_refuse_bad_data(x, y, field, words, monkeypatch):
    import anvm_stats.adaptive as adaptive
    import anvm_stats.calibration.adapt as adapt
    import anvm_stats.calibration.drift as drift

    def no_work(*a, **k):
        raise AssertionError("the program was prepared before the data was checked")

    for mod in (adaptive, adapt, drift):
        monkeypatch.setattr(mod, "prepare", no_work)
    spec = av.devices.paper1(0.1)
    runs = {
        "evaluate_until": lambda: av.evaluate_until(_net(), spec, (x, y), target_width=0.1, progress=False),
        "drift_sweep": lambda: drift_sweep(_net(), _drift_spec(), (x, y), times=[1.0, 10.0], n_instances=2,
                                           compensation="global", progress=False),
        "calibrate": lambda: calibrate(_net(), spec, (x, y), recovery_data=_data(), n_instances=2, steps=1,
                                       progress=False),
    }
    for name, run in runs.items():
        with pytest.raises(ConfigError) as err:
            run()
        _one_line(err.value, field, words)


def test_calibrate_checks_its_recovery_data_too():
    x, y = _data()
    with pytest.raises(ConfigError) as err:
        calibrate(_net(), av.devices.paper1(0.1), (x, y), recovery_data=(x, y + N_CLASSES), n_instances=2, steps=1,
                  progress=False)
    _one_line(err.value, "recovery_data.y", ["[0, 9]"])


def test_valid_data_still_runs_unchanged():
    """The checks refuse nothing valid: a sweep over batches and over tensors gives the same numbers."""
    x, y = _data()
    spec = av.devices.paper1(0.2)
    a = av.evaluate(_net(), spec, (x, y), n_instances=3, progress=False)
    b = av.evaluate(_net(), spec, [(x[:5], y[:5]), (x[5:], y[5:])], n_instances=3, progress=False)
    np.testing.assert_array_equal(a[dims.CORRECT_COUNT].values, b[dims.CORRECT_COUNT].values)
    assert NONFINITE_ATTR not in a.attrs


# --- item 5: non-finite results are warned about and counted in attrs ----------------------------------------------
def test_overflowing_noise_warns_and_records_the_count():
    x, y = _data()
    with pytest.warns(RuntimeWarning, match=r"non-finite.*loss \(3 of 3 cells\)"):
        ds = av.evaluate(_net(), av.devices.paper1(1e300), (x, y), n_instances=3, progress=False)
    n_bad = int((~np.isfinite(ds[dims.LOSS].values)).sum())
    assert n_bad == 3 and ds.attrs[NONFINITE_ATTR] == {dims.LOSS: n_bad}


def test_evaluate_until_counts_nonfinite_cells_over_all_rounds():
    x, y = _data()
    with pytest.warns(RuntimeWarning, match="non-finite"):
        ds, res = av.evaluate_until(_net(), av.devices.paper1(1e300), (x, y), target_width=1e-9,
                                    instances_per_round=4, max_instances=12, variable=dims.ACCURACY, progress=False)
    assert ds.sizes[dims.INSTANCE] == 12 and res.stopped_by == "cap"
    assert ds.attrs[NONFINITE_ATTR] == {dims.LOSS: int((~np.isfinite(ds[dims.LOSS].values)).sum())} \
        == {dims.LOSS: 12}                                      # all rounds, not the first round's 4


# --- item 4: instance indices ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, field, words", [
    pytest.param({"instances": [2**64]}, "instances", ["2**63"], id="instance-2**64"),
    pytest.param({"instances": [2**63]}, "instances", ["2**63"], id="instance-2**63"),
    pytest.param({"instances": [3, -1]}, "instances", ["[0,"], id="negative-instance"),
    pytest.param({"instances": [0, 1.5]}, "instances", ["integers"], id="float-instance"),
    pytest.param({"instances": [1, 1]}, "instances", ["distinct"], id="duplicate-instance"),
    pytest.param({"instances": []}, "instances", ["non-empty"], id="no-instance"),
    pytest.param({"n_instances": 2**64}, "n_instances", ["9223372036854775807"], id="n-beyond-int64"),
    pytest.param({"n_instances": 10**15}, "n_instances", ["at most", "GiB"], id="n-beyond-memory"),
    pytest.param({"n_instances": 0}, "n_instances", ["[1,"], id="n-zero"),
])
def test_instance_indices_are_refused_with_one_line(kw, field, words, monkeypatch):
    import anvm_stats.montecarlo as mc

    monkeypatch.setattr(mc, "prepare", lambda *a, **k: pytest.fail("work started before the check"))
    kw = {"n_instances": None, **kw} if "instances" in kw else kw
    with pytest.raises(ConfigError) as err:
        av.evaluate(_net(), av.devices.paper1(0.1), _data(), progress=False, **kw)
    _one_line(err.value, field, words)


def test_memory_bound_counts_grid_points():
    """A count that fits for one point is refused when the grid multiplies the results past the memory."""
    from anvm_stats.checks import RESULT_BYTES_PER_CELL, memory_bytes
    from anvm_stats.sampler import instance_indices

    n = memory_bytes() // RESULT_BYTES_PER_CELL // 2
    with pytest.raises(ConfigError, match="n_instances.*x 4 grid point"):
        instance_indices(n, None, points=4)
    assert instance_indices(5, None, points=4).tolist() == [0, 1, 2, 3, 4]
    assert instance_indices(None, np.array([7, 2**63 - 1], dtype=np.uint64), points=4).tolist() == [7, 2**63 - 1]


# --- issue 16 vocabulary: evaluate_until ----------------------------------------------------------------------------
def test_evaluate_until_takes_calibration_data_and_seed_0_by_default():
    sig = inspect.signature(av.evaluate_until)
    assert "calibration" not in sig.parameters
    assert sig.parameters["seed"].default == 0 == inspect.signature(av.evaluate).parameters["seed"].default
    x, y = _data()
    cal = (x * 3, y)
    spec = dataclasses.replace(av.devices.paper1(0.2), periphery=Periphery(dac=Quantizer(bits=4),
                                                                           adc=Quantizer(bits=4)))
    kw = dict(target_width=1e-9, instances_per_round=2, max_instances=4, progress=False)
    ds, _ = av.evaluate_until(_net(), spec, (x, y), calibration_data=cal, **kw)
    ref = av.evaluate(_net(), spec, (x, y), n_instances=4, calibration_data=cal, progress=False)
    np.testing.assert_array_equal(ds[dims.LOSS].values, ref[dims.LOSS].values)    # same chips, same ranges
    assert ds.attrs["seed_entropy"] == ref.attrs["seed_entropy"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        other = av.evaluate(_net(), spec, (x, y), n_instances=4, progress=False)
    assert not np.array_equal(other[dims.LOSS].values, ref[dims.LOSS].values)   # calibration_data was used


# --- issue 15 item 9 + issue 16: study keys use the engine's names --------------------------------------------------
STUDY = """\
[study]
name = "tiny"

[model]
name = "mlp"
args = { in_features = 64, hidden = [8], n_classes = 10 }

[data]
name = "digits"

[training]
method = "plain"
epochs = 1

[hardware]
preset = "paper1"
args = { sigma = 0.05 }

[sweep]
grid = { noise_level = [0.05, 0.1] }
"""


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

        def grids(self):
            return {}, {}

        def executor(self, *a):
            return None

        def over_all(self, fn):
            return fn(None, None)

    runner._sweep_instances(Ctx(), np.arange(3))
    assert [(o.samples_per_batch, o.instances_per_chunk) for o in seen] == [(7, 2)]


def test_shipped_studies_use_no_old_sweep_key():
    from pathlib import Path

    from anvm_stats.study.schema import RENAMED_SWEEP_KEYS

    root = Path(__file__).resolve().parents[1]
    files = sorted(root.glob("studies/*.toml")) + sorted(root.glob("anvm_stats/study/builtin/*.toml"))
    assert files
    for f in files:
        for old in RENAMED_SWEEP_KEYS:
            assert f"\n{old} =" not in f.read_text(), (f, old)


# --- issue 16: one name per idea ------------------------------------------------------------------------------------
def test_report_figure_and_hessian_computation_have_different_names():
    import anvm_stats.hessian as hessian
    import anvm_stats.report as report

    assert not hasattr(report, "layer_sensitivity") and "layer_sensitivity" not in report.__all__
    assert report.FIGURES["sensitivity"][0] is report.layer_sensitivity_bars
    assert report.FIGURES["sensitivity"][1] == "layer_sensitivity.png"        # report files keep their names
    assert "model" in inspect.signature(hessian.layer_sensitivity).parameters    # the computation


ENTRY_POINTS = ["evaluate", "sweep", "evaluate_until", "drift_sweep", "sensitivity", "calibrate", "train_hasgd",
                "train_distilled"]


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_points_share_one_signature(name):
    """``(model, spec, data, *, ..., seed=0, ...)``; engine options as ``options=RunOptions`` (no ``**kw``); no
    ``calib``/``test``/``calibration``/``chunk_size``/``eval_batch_size`` keywords."""
    fn = getattr(av, name)
    params = inspect.signature(fn).parameters
    assert list(params)[:3] == ["model", "spec", "data"], (name, list(params)[:3])
    assert params["seed"].default == 0 and params["seed"].kind is inspect.Parameter.KEYWORD_ONLY
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in list(params.values())[3:]), name
    assert not {"calib", "test", "calibration", "chunk_size", "eval_batch_size"} & set(params), name


def test_drift_sweep_and_evaluate_until_take_run_options():
    from anvm_stats.montecarlo import RunOptions

    x, y = _data()
    opts = RunOptions(samples_per_batch=5, instances_per_chunk=2)
    ref = av.sweep(_net(), _drift_spec(), (x, y), grid={"t_inference": [1.0, 100.0]}, n_instances=3, options=opts,
                   progress=False)
    ds = drift_sweep(_net(), _drift_spec(), (x, y), times=[1.0, 100.0], n_instances=3, options=opts, progress=False)
    np.testing.assert_array_equal(ds[dims.LOSS].values, ref[dims.LOSS].values)
    with pytest.raises(ConfigError, match="options"):
        drift_sweep(_net(), _drift_spec(), (x, y), times=[1.0, 100.0], n_instances=3, compensation="global",
                    options={"samples_per_batch": 5}, progress=False)
    until, _ = av.evaluate_until(_net(), av.devices.paper1(0.2), (x, y), target_width=1e-9, instances_per_round=3,
                                 max_instances=3, options=opts, progress=False)
    same = av.evaluate(_net(), av.devices.paper1(0.2), (x, y), n_instances=3, options=opts, progress=False)
    np.testing.assert_array_equal(until[dims.LOSS].values, same[dims.LOSS].values)


def test_dask_task_planning_says_task_size():
    from anvm_stats.parallel import plan_tasks
    from anvm_stats.parallel.store import ZarrSink, fingerprint

    assert "task_size" in inspect.signature(plan_tasks).parameters
    assert "task_size" in inspect.signature(fingerprint).parameters
    assert "task_size" in inspect.signature(ZarrSink).parameters
    tasks = plan_tasks([np.array([0.1, 0.2])], 5, task_size=2, split_grid=False)
    assert [(t.start, t.stop) for t in tasks] == [(0, 2), (2, 4), (4, 5)]
