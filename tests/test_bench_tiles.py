"""The tiles benchmark runs end to end at a tiny size and reports its ratios (never timing asserts)."""

import json
import math

import pytest

import benchmarks as bench
from benchmarks.tiles import PerForwardReadNoise, bench_tiles


@pytest.mark.slow
def test_tiles_benchmark_reports_both_ratios_for_both_networks():
    r = bench_tiles(n_instances=2, repeats=1)
    for net in ("mlp", "lenet5"):
        secs, ratios = r["seconds"][net], r["ratios"][net]
        assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in secs.values())
        assert ratios["tiled_vs_untiled"] == pytest.approx(secs["tiled32_adc6"] / secs["untiled_adc6"])
        assert ratios["per_mvm_read_noise_vs_per_batch"] == pytest.approx(
            secs["read_noise_per_mvm"] / secs["read_noise_per_batch"])
    json.dumps(r)
    assert "tiles" in bench.BENCHMARKS


def test_per_batch_baseline_takes_the_weight_domain_path():
    """The baseline must not be drawn per MVM: it has no read_sd (the engine's per-forward path)."""
    assert not callable(getattr(PerForwardReadNoise(sigma=0.1), "read_sd", None))
