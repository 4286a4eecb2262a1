"""The anvm-stats command in-process: quickstart end to end at a reduced size, show, report, cache, exit codes."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from anvm_stats import dims
from anvm_stats.cli import main
from anvm_stats.models import build_model
from anvm_stats.study import load_results

SMALL = """\
[study]
name = "small"
seed = 3

[model]
name = "mlp"
args = {{ in_features = 64, hidden = [16], n_classes = 10 }}
{weights}
[data]
name = "digits"
n_test = 120

[hardware]
preset = "paper1"
args = {{ sigma = 0.05 }}

[sweep]
grid = {{ noise_level = [0.05, 0.2] }}
{sweep}
"""


@dataclass
class _Result:
    model: torch.nn.Module
    history: dict


@pytest.fixture
def fake_trainer(monkeypatch):
    """A counting stand-in for anvm_stats.training.train_hasgd (plain Adam, seeded), to keep the tests fast and
    independent of the HA-SGD implementation; records every call."""
    calls = []

    def train_hasgd(model, spec, data, *, samples=8, epochs=1, lr=0.01, batch_size=64, seed=0, progress=False,
                    **kw):
        calls.append(dict(spec=spec, epochs=epochs, seed=seed, **kw))
        g = torch.Generator().manual_seed(int(seed))
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        hist = {"train_loss": []}
        for _ in range(epochs):
            perm = torch.randperm(data.n, generator=g)
            total = 0.0
            for i in range(0, data.n, batch_size):
                idx = perm[i:i + batch_size]
                loss = torch.nn.functional.cross_entropy(model(data.x[idx]), data.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            hist["train_loss"].append(total / data.n)
        return _Result(model.eval(), hist)

    import anvm_stats.study.train
    monkeypatch.setattr(anvm_stats.study.train, "train_hasgd", train_hasgd)
    return calls


@pytest.mark.slow
def test_quickstart_end_to_end_reduced(tmp_path, capsys, fake_trainer, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["quickstart", "--instances", "8", "--epochs", "1", "--quiet", "--set", "training.lr=0.01"])
    assert rc == 0, capsys.readouterr().err
    out = tmp_path / "reports" / "quickstart"
    for name in ("results.nc", "report.md", "report.html", "accuracy_distribution.png", "accuracy_bands.png",
                 "yield.png", "layer_sensitivity.png", "training_curves.png"):
        assert (out / name).is_file(), name
    assert len(fake_trainer) == 1 and fake_trainer[0]["spec"] is None and fake_trainer[0]["epochs"] == 1
    ds = load_results(out / "results.nc")
    assert ds.sizes[dims.INSTANCE] == 8 and ds.sizes[dims.NOISE_LEVEL] == 6
    assert ds.attrs["study"] == "quickstart" and "sensitivity_trace" in ds and "history_train_loss" in ds
    assert float(ds[dims.ACCURACY].min()) >= 0 and float(ds[dims.ACCURACY].max()) <= 1
    capsys.readouterr()

    assert main(["show", str(out / "results.nc")]) == 0
    shown = capsys.readouterr().out
    assert "noise_level" in shown and "yield" in shown
    for level in ds[dims.NOISE_LEVEL].values:
        assert f"{level:g}" in shown
    mean_first = float(ds[dims.ACCURACY].isel(noise_level=0).mean())
    assert f"{mean_first:.3f}" in shown

    (out / "report.md").unlink()
    (out / "yield.png").unlink()
    assert main(["report", str(out / "results.nc"), "--quiet"]) == 0
    assert (out / "report.md").is_file() and (out / "yield.png").is_file()
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 5
    other = tmp_path / "elsewhere"
    assert main(["report", str(out / "results.nc"), "--out", str(other), "--quiet"]) == 0
    assert (other / "report.md").read_text() == (out / "report.md").read_text()


def _small(tmp_path, *, weights="", sweep="n_instances = 6", training=True) -> Path:
    text = SMALL.format(weights=weights, sweep=sweep)
    if training:
        text += '\n[training]\nmethod = "plain"\nepochs = 1\nlr = 0.01\n'
    path = tmp_path / "small.toml"
    path.write_text(text)
    return path


def test_trained_weights_are_cached_by_content(tmp_path, fake_trainer, capsys):
    path = _small(tmp_path)
    cache = tmp_path / "cache"
    args = ["run", str(path), "--quiet", "--cache", str(cache)]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert len(fake_trainer) == 1 and len(list(cache.glob("*.pt"))) == 1
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    assert len(fake_trainer) == 1                              # second run: weights from the cache
    a = load_results(tmp_path / "a" / "results.nc")
    b = load_results(tmp_path / "b" / "results.nc")
    xr.testing.assert_equal(a[dims.ACCURACY], b[dims.ACCURACY])
    assert main(args + ["--out", str(tmp_path / "c"), "--epochs", "2"]) == 0
    assert len(fake_trainer) == 2 and len(list(cache.glob("*.pt"))) == 2   # new training config -> new key
    assert main(args + ["--out", str(tmp_path / "d"), "--no-cache"]) == 0
    assert len(fake_trainer) == 3


def test_weights_file_and_sequential_stopping(tmp_path, capsys):
    net = build_model("mlp", seed=0, in_features=64, hidden=[16], n_classes=10)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    wide = _small(tmp_path, weights=f'weights = "{tmp_path / "w.pt"}"',
                  sweep="target_ci_width = 0.9\ninstances_per_round = 4\nmax_instances = 12", training=False)
    assert main(["run", str(wide), "--quiet", "--out", str(tmp_path / "w")]) == 0
    ds = load_results(tmp_path / "w" / "results.nc")
    assert ds.sizes[dims.INSTANCE] == 4 and ds.attrs["sequential_stopped_by"] == "width"
    # a width no interval can reach stops at the cap, and instance i is the same chip in both runs
    narrow = _small(tmp_path, weights=f'weights = "{tmp_path / "w.pt"}"',
                    sweep="target_ci_width = 1e-9\ninstances_per_round = 4\nmax_instances = 12", training=False)
    assert main(["run", str(narrow), "--quiet", "--out", str(tmp_path / "n")]) == 0
    dn = load_results(tmp_path / "n" / "results.nc")
    assert dn.sizes[dims.INSTANCE] == 12 and dn.attrs["sequential_stopped_by"] == "cap"
    np.testing.assert_array_equal(dn[dims.ACCURACY].isel(instance=slice(0, 4)).values, ds[dims.ACCURACY].values)


def test_missing_data_is_bad_input(tmp_path, capsys):
    path = _small(tmp_path)
    text = path.read_text().replace('name = "digits"\nn_test = 120', f'name = "cifar10"\nroot = "{tmp_path}"')
    path.write_text(text)
    assert main(["run", str(path), "--quiet", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cifar" in err.lower() and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_failure_exits_1_with_one_line(tmp_path, capsys, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("trainer exploded")

    import anvm_stats.study.train
    monkeypatch.setattr(anvm_stats.study.train, "train_hasgd", boom)
    path = _small(tmp_path)
    assert main(["run", str(path), "--quiet", "--no-cache", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert "trainer exploded" in err and len(err.splitlines()) == 1


def test_bad_cli_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["run", "x.toml", "--device", "tpu"])
    assert exc.value.code == 2
    assert main(["show", "does_not_exist.nc"]) == 2


def test_bench_prints_json(monkeypatch, capsys):
    import benchmarks as bench

    monkeypatch.setattr(bench, "run_benchmarks", lambda device="cpu", **kw: {"device": device, "ok": 1})
    assert main(["bench"]) == 0
    assert json.loads(capsys.readouterr().out) == {"device": "cpu", "ok": 1}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "--device", "cuda"]) == 2
    assert "--device cuda" in capsys.readouterr().err


@pytest.mark.slow
def test_run_on_a_local_dask_cluster_matches_in_process(tmp_path, fake_trainer):
    """`--workers 2` runs the sweep on a loopback LocalCluster; the results equal the in-process run."""
    study = _small(tmp_path)
    n = torch.get_num_threads()
    torch.set_num_threads(1)     # as on the workers: oneDNN's round-off depends on the thread count
    try:
        assert main(["run", str(study), "--out", str(tmp_path / "a"), "--quiet", "--no-cache"]) == 0
        assert main(["run", str(study), "--out", str(tmp_path / "b"), "--quiet", "--no-cache", "--workers", "2"]) == 0
    finally:
        torch.set_num_threads(n)
    a = load_results(next((tmp_path / "a").glob("results.*")))
    b = load_results(next((tmp_path / "b").glob("results.*")))
    for v in (dims.ACCURACY, dims.LOSS, dims.CORRECT_COUNT):
        np.testing.assert_array_equal(a[v].values, b[v].values)
    assert main(["run", str(study), "--out", str(tmp_path / "c"), "--quiet", "--workers", "0"]) == 2


@pytest.mark.slow
def test_store_makes_a_rerun_resume_from_zarr(tmp_path, fake_trainer):
    """`--store DIR`: each sweep streams into a zarr store there; a re-run finds every task done and returns the
    identical results (the Python-level resume of a killed run is tested in test_parallel.py)."""
    study = _small(tmp_path)
    stores = tmp_path / "stores"
    args = ["run", str(study), "--quiet", "--no-cache", "--store", str(stores)]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    made = sorted(stores.glob("sweep-*.zarr"))
    assert len(made) == 1
    stamp = {p: p.stat().st_mtime_ns for p in made[0].rglob("*") if p.is_file()}
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    assert {p: p.stat().st_mtime_ns for p in made[0].rglob("*") if p.is_file()} == stamp   # nothing recomputed
    a = load_results(tmp_path / "a" / "results.nc")
    b = load_results(tmp_path / "b" / "results.nc")
    np.testing.assert_array_equal(a[dims.CORRECT_COUNT].values, b[dims.CORRECT_COUNT].values)


def test_show_prints_results_of_several_training_seeds(tmp_path, capsys):
    """`show` on a study trained with several seeds: float accuracy as the mean over seeds with its range, the first
    seed's chip table (said so) and the across-seed table (it used to fail converting a [seed, model] array)."""
    import xarray as xr
    from anvm_stats import dims
    from anvm_stats.hardware.spec import HardwareSpec
    from anvm_stats.io import save
    from anvm_stats.provenance import provenance
    from tests.helpers import synthetic
    parts = [synthetic(s) for s in (0, 1, 2)]
    ds = xr.concat(parts, dim=dims.TRAIN_SEED, data_vars="all").assign_coords({dims.TRAIN_SEED: [0, 1, 2]})
    ds["float_accuracy"] = ((dims.TRAIN_SEED, "model"), [[0.95, 0.94], [0.97, 0.93], [0.96, 0.95]])
    ds.attrs.update(parts[0].attrs)
    ds.attrs.update(provenance(model=build_model("mlp", seed=0, in_features=4, hidden=[4], n_classes=2),
                               spec=HardwareSpec(), dataset="synthetic", seed_entropy="0", device="cpu"))
    path = save(ds, tmp_path / "results.nc")
    assert main(["show", str(path)]) == 0
    shown = capsys.readouterr().out
    assert "mean over 3 training seeds (min..max)" in shown and "0.9600 (0.9500..0.9700)" in shown
    assert "training seed 0, the first of 3" in shown and "across training seeds" in shown
