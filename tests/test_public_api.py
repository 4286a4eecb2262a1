"""The public API: one vocabulary across entry points and one name per idea."""


import inspect

import numpy as np
import pytest

import anvm_stats as av
from anvm_stats import dims
from anvm_stats.calibration import drift_sweep
from anvm_stats.errors import ConfigError
from tests.helpers import small_drift_spec, tiny_data10, tiny_mlp10


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

    x, y = tiny_data10()
    opts = RunOptions(samples_per_batch=5, instances_per_chunk=2)
    ref = av.sweep(tiny_mlp10(), small_drift_spec(), (x, y), grid={"t_inference": [1.0, 100.0]}, n_instances=3, options=opts,
                   progress=False)
    ds = drift_sweep(tiny_mlp10(), small_drift_spec(), (x, y), times=[1.0, 100.0], n_instances=3, options=opts, progress=False)
    np.testing.assert_array_equal(ds[dims.LOSS].values, ref[dims.LOSS].values)
    with pytest.raises(ConfigError, match="options"):
        drift_sweep(tiny_mlp10(), small_drift_spec(), (x, y), times=[1.0, 100.0], n_instances=3, compensation="global",
                    options={"samples_per_batch": 5}, progress=False)
    until, _ = av.evaluate_until(tiny_mlp10(), av.devices.paper1(0.2), (x, y), target_width=1e-9, instances_per_round=3,
                                 max_instances=3, options=opts, progress=False)
    same = av.evaluate(tiny_mlp10(), av.devices.paper1(0.2), (x, y), n_instances=3, options=opts, progress=False)
    np.testing.assert_array_equal(until[dims.LOSS].values, same[dims.LOSS].values)
