"""studies/hasgd_modes.py: the comparison logic (differences to the plain net of the same optimizer, paired within
seeds, two-level interval across seeds; findings) on synthetic accuracies, and one tiny end-to-end run."""

import json

import numpy as np
import pytest
import xarray as xr
from scipy import stats as sps

from anvm_stats import dims
from tests.helpers import load_study_script


@pytest.fixture(scope="module")
def hm():
    return load_study_script("hasgd_modes")


def _accuracies(hm, gain_of):
    """config x seed x sigma x chip accuracies: plain nets vary by seed; an HA-SGD config = its plain net of the
    same seed plus ``gain_of[config]`` plus chip noise."""
    rng = np.random.default_rng(0)
    configs = ["plain/sgd", "split/sgd", "plain/adam", "split/adam"]
    S, n = 5, 40
    plain = 0.9 + rng.normal(0, 0.01, (S, 1, 1)) + rng.normal(0, 0.005, (S, len(hm.TEST_SIGMAS), n))
    acc = np.stack([plain + gain_of.get(c, 0.0) + rng.normal(0, 0.002, plain.shape) for c in configs])
    return xr.DataArray(acc, dims=("config", dims.TRAIN_SEED, dims.NOISE_LEVEL, dims.INSTANCE),
                        coords={"config": configs, dims.TRAIN_SEED: np.arange(S),
                                dims.NOISE_LEVEL: list(hm.TEST_SIGMAS)})


def test_differences_are_paired_within_seeds_against_the_same_optimizer(hm):
    da = _accuracies(hm, {"split/sgd": 0.02, "split/adam": -0.02})
    rows = hm.differences(da)
    assert {(r["config"], r["vs"]) for r in rows} == {("split/sgd", "plain/sgd"), ("split/adam", "plain/adam")}
    for r in rows:
        k = hm.TEST_SIGMAS.index(r["sigma_test"])
        d = (da.sel(config=r["config"]) - da.sel(config=r["vs"])).values[:, k].mean(1)   # per-seed means
        ci = sps.ttest_1samp(d, 0).confidence_interval(0.95)
        assert r["per_seed"] == pytest.approx(list(d)) and r["ci95"] == pytest.approx([ci.low, ci.high])
        assert r["verdict"] == ("gain" if r["config"] == "split/sgd" else "loss")
    text = " ".join(hm.findings({"mlp": {"differences": rows}}))
    assert "test sigma 0.15: gain across seeds for ['split/sgd']; loss for ['split/adam']" in text


@pytest.mark.slow
def test_tiny_run_writes_a_report(hm, tmp_path):
    hm.main(["--seeds", "2", "--epochs", "1", "--chips", "4", "--lenet-seeds", "0", "--wide-seeds", "0",
             "--resnet-steps", "0", "--grad-steps", "4", "--out", str(tmp_path)])
    rep = json.loads((tmp_path / "hasgd_modes.json").read_text())
    assert rep["mlp_time"]["epochs"]["split/sgd"] == 1
    assert len(rep["mlp"]["differences"]) == 6 * len(hm.TEST_SIGMAS)
    assert "two-level interval" in (tmp_path / "report.md").read_text()
    assert xr.open_dataset(tmp_path / "results.nc")["accuracy_mlp"].sizes["train_seed_mlp"] == 2
    (tmp_path / "report.md").unlink()
    hm.main(["--render", str(tmp_path / "hasgd_modes.json")])
    assert "## Findings" in (tmp_path / "report.md").read_text()
