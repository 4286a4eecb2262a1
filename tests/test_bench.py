"""The shipped benchmarks run end to end at tiny sizes and report sane, JSON-able numbers (never timing asserts)."""

import json
import math

import pytest

import benchmarks as bench
from anvm_stats.errors import ConfigError
from benchmarks import engine
from benchmarks.common import digits_mlp
from benchmarks.tiles import PerForwardReadNoise, bench_tiles


def finite_positive(d, keys):
    for k in keys:
        assert isinstance(d[k], float) and math.isfinite(d[k]) and d[k] > 0, k


@pytest.fixture
def small_references(monkeypatch):
    """The strict references at test sizes: GEMMs of 128 and 256, a 1 MiB sampling buffer, vmap chunks 2 and 4."""
    monkeypatch.setattr(engine, "GEMM_SIZES", {"cpu": (128, 256), "cuda": (128, 256)})
    monkeypatch.setattr(engine, "SAMPLING_BUFFER", 1 << 18)
    monkeypatch.setattr(engine, "VMAP_CHUNKS", {"cpu": (2, 4), "cuda": (2, 4)})


def test_gemm_rate_is_the_best_over_sizes(monkeypatch):
    """The limit's rate is the best of every size (a rate measured at one small size would be an easy limit)."""
    seen = []
    monkeypatch.setattr(engine, "best_time", lambda fn, device, repeats: (fn(), seen.append(1), 1.0)[2])
    rates = engine.measure_gemm_rates(engine.torch.device("cpu"), sizes=(64, 128))
    assert rates["torch_matmul"] == 2 * 128 ** 3 and rates["onednn_conv1x1"] == 2 * 128 ** 3
    assert len(seen) == 4


@pytest.mark.slow
def test_engine_and_sweep_benchmarks_agree_with_the_simple_loop(small_references):
    e = engine.bench_engine(n_instances=8)
    finite_positive(e, ["limit_instances_per_s", "engine_instances_per_s", "simple_loop_instances_per_s",
                        "engine_fraction_of_limit", "engine_vs_simple_loop", "engine_vs_tuned_vmap"])
    assert e["vmap_best_chunk"] in (2, 4)
    assert e["max_accuracy_difference_vs_simple_loop"] < 1e-6     # same draws, same chips
    s = engine.bench_sweep(n_instances=4)
    finite_positive(s, ["limit_s", "sweep_s", "per_point_simple_loop_s", "sweep_fraction_of_limit",
                       "simple_loop_vs_sweep_limit"])
    assert s["simple_loop_vs_sweep_limit"] == pytest.approx(s["per_point_simple_loop_s"] / s["limit_s"])
    json.dumps([e, s])


@pytest.mark.slow
def test_engine_benchmark_with_counter_draws_matches_its_loop(monkeypatch, small_references):
    """The GPU configuration (counter-based draws in the engine and in the loops), exercised on the CPU."""
    import anvm_stats.sampler as sampler_mod
    monkeypatch.setattr(sampler_mod, "counter_draws_default", lambda device: True)
    monkeypatch.setattr(engine, "counter_draws_default", lambda device: True)
    e = engine.bench_engine(n_instances=6)
    assert e["max_accuracy_difference_vs_simple_loop"] < 1e-6
    assert engine.vmap_loop(*digits_mlp("cpu"), 0.05, 3, 0).shape == (3,)


@pytest.mark.slow
def test_convnet_benchmark_and_registry(small_references):
    c = engine.bench_convnet(depth=10, widen=1, n_inputs=16, n_instances=1, batch_size=16, bf16=True)
    finite_positive(c, ["limit_s_per_instance", "engine_s_per_instance", "simple_loop_s_per_instance",
                        "plain_evaluation_s_per_instance", "engine_vs_plain_evaluation", "bf16_gemm_gflops",
                        "engine_bf16_fraction_of_bf16_limit"])
    with pytest.raises(ConfigError, match="benchmark"):
        bench.run_benchmarks(which=("nonsense",))


@pytest.mark.slow
def test_hasgd_benchmark_reports_ratios_for_both_regimes():
    from benchmarks.training import bench_hasgd

    r = bench_hasgd(("mlp", "resnet20-cifar"), modes=("plain", "local"), repeats=1)
    for name in ("mlp", "resnet20-cifar"):
        m = r["models"][name]
        finite_positive(m["epoch_s"], ["plain", "local"])
        assert m["ratio"]["local"] == pytest.approx(m["epoch_s"]["local"] / m["epoch_s"]["plain"])
    assert r["models"]["resnet20-cifar"]["data"].startswith("random CIFAR-shaped")
    json.dumps(r)


def test_run_benchmarks_passes_the_device_where_taken_and_reports_missing_packages(monkeypatch):
    import sys
    import types

    fake = types.ModuleType("fake_bench")

    def on_device(device="cpu"):
        return {"ran_on": device}

    def cpu_only():
        return {"value": 1.0}

    def needs_package():
        raise ImportError("No module named 'distributed'")

    fake.on_device, fake.cpu_only, fake.needs_package = on_device, cpu_only, needs_package
    monkeypatch.setitem(sys.modules, "fake_bench", fake)
    monkeypatch.setattr(bench, "BENCHMARKS", {k: ("fake_bench", k) for k in ("on_device", "cpu_only",
                                                                             "needs_package")})
    out = bench.run_benchmarks(device="cuda")
    assert out["on_device"] == {"ran_on": "cuda"}
    assert out["cpu_only"] == {"value": 1.0, "device": "cpu"}
    assert "distributed" in out["needs_package"]["skipped"]


def test_the_library_ships_no_benchmarks_and_the_cli_says_so_outside_a_checkout(monkeypatch, tmp_path, capsys):
    """``anvm_stats`` imports no benchmark module; ``anvm-stats bench`` without the checkout's package exits 1
    with a message naming the checkout."""
    import pkgutil

    import anvm_stats
    from anvm_stats import cli

    names = [m.name for m in pkgutil.walk_packages(anvm_stats.__path__, "anvm_stats.")]
    assert not [n for n in names if n.rsplit(".", 1)[-1] == "bench"]
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "anvm_stats" / "cli.py"))   # an installed copy
    assert cli.main(["bench"]) == 1
    assert "source checkout" in capsys.readouterr().err


def test_one_digits_mlp_for_every_benchmark():
    """The engine, Hessian and distributed benchmarks time the same job (the zoo MLP seeded as asked)."""
    import torch

    from anvm_stats.models import build_model

    net, x, y = digits_mlp("cpu", seed=3)
    ref = build_model("mlp", seed=3)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), ref.state_dict().values()))
    assert x.shape == (360, 64) and y.shape == (360,)


@pytest.mark.slow
def test_tiles_benchmark_reports_both_ratios_for_both_networks():
    r = bench_tiles(n_instances=2, repeats=1)
    for net in ("mlp", "lenet5"):
        secs, ratios = r["seconds"][net], r["ratios"][net]
        assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in secs.values())
        assert ratios["tiled_vs_untiled"] == pytest.approx(secs["tiled32_adc6"] / secs["untiled_adc6"])
        assert ratios["per_mvm_read_noise_vs_per_batch"] == pytest.approx(
            secs["read_noise_per_mvm"] / secs["read_noise_per_batch"])
        assert ratios["first_order_ir_drop_vs_ideal_wires"] == pytest.approx(
            secs["tiled32_adc6_ir_drop"] / secs["tiled32_adc6"])
    json.dumps(r)
    assert "tiles" in bench.BENCHMARKS


def test_per_batch_baseline_takes_the_weight_domain_path():
    """The baseline must not be drawn per MVM: it has no read_sd (the engine's per-forward path)."""
    assert not callable(getattr(PerForwardReadNoise(sigma=0.1), "read_sd", None))


@pytest.mark.slow
def test_transformer_benchmark_runs_and_is_registered():
    from benchmarks.transformer import bench_transformer

    t = bench_transformer(n_instances=2, n_samples=8, depth=1, repeats=1)
    finite_positive(t, ["engine_s_per_chip", "simple_loop_s_per_chip", "engine_vs_simple_loop"])
    assert t["analog_layers"] == 5 and t["max_accuracy_difference_vs_simple_loop"] <= 1 / 8
    assert "transformer" in bench.BENCHMARKS
    json.dumps(t)
