"""anvm_stats.sampler: the generator and counter samplers under one base draw the same distribution, per-forward
noise from counters is chunk-invariant, the default sampler follows the device."""

import warnings

import numpy as np
import pytest
import torch
from scipy import stats

import anvm_stats as av
import anvm_stats.sampler as sampler_mod
from anvm_stats.counter_rng import fill_counter, run_key
from anvm_stats.errors import ConfigError
from anvm_stats.rng import Stream
from anvm_stats.sampler import ChipSampler
from tests.helpers import make_data, make_mlp


from tests.helpers import assert_one_line_error, tiny_data10, tiny_mlp10



ALPHA = 1e-5   # false-failure rate of each statistical assertion


@pytest.fixture()
def counter_on_cpu(monkeypatch):
    monkeypatch.setattr(sampler_mod, "counter_draws_default", lambda device: True)


def test_sampler_draws_from_counters_and_records_it(counter_on_cpu):
    net = make_mlp()
    x, y = make_data()
    spec = av.devices.paper1(0.1)
    program = av.prepare(net, spec)
    s = ChipSampler(program, seed=4)
    assert s.counter and s.kind == "philox4x32-counter"
    d = s.draw([5, 1])[0]["z"]
    want = fill_counter("normal", torch.empty(2, program.n_devices), run_key(s.root), [5, 1], Stream.PROGRAM)
    assert torch.equal(d, want)
    ds = av.sweep(net, spec, (x, y), grid={"noise_level": [0.05, 0.2]}, n_instances=7, seed=4, progress=False)
    assert ds.attrs["sampler"] == "philox4x32-counter"
    # the run option picks the same sampler explicitly; "generator" draws other chips
    chosen = av.sweep(net, spec, (x, y), grid={"noise_level": [0.05, 0.2]}, n_instances=7, seed=4,
                      progress=False, options=av.RunOptions(sampler="counter"))
    np.testing.assert_array_equal(chosen.loss.values, ds.loss.values)
    other = av.sweep(net, spec, (x, y), grid={"noise_level": [0.05, 0.2]}, n_instances=7, seed=4,
                     progress=False, options=av.RunOptions(sampler="generator"))
    assert other.attrs["sampler"] == "per-instance-generator"
    assert not np.array_equal(other.loss.values, ds.loss.values)
    for chunk in (1, 3):
        again = av.sweep(net, spec, (x, y), grid={"noise_level": [0.05, 0.2]}, n_instances=7, seed=4,
                         progress=False, options=av.RunOptions(instances_per_chunk=chunk))
        np.testing.assert_array_equal(again.accuracy.values, ds.accuracy.values)
    part = av.sweep(net, spec, (x, y), grid={"noise_level": [0.05, 0.2]}, instances=[6, 2], seed=4, progress=False)
    np.testing.assert_array_equal(part.accuracy.values, ds.accuracy.sel(instance=[6, 2]).values)


@pytest.mark.parametrize("net_kind", ["mlp", "resnet"])
def test_per_forward_noise_from_counters_is_chunk_invariant(net_kind):
    """Read noise and ADC output noise drawn from a CounterStream: the same whatever the chunking, and fresh
    per forward (two batches of the same samples score differently)."""
    from tests.helpers import make_resnet

    net = make_mlp() if net_kind == "mlp" else make_resnet()
    x, y = make_data(n=16) if net_kind == "mlp" else make_data(n=8, shape=(1, 8, 8))
    spec = av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.05), av.ReadNoise(sigma=0.1)),
                           periphery=av.Periphery(output_noise=0.05))
    twice = [(x, y), (x, y)]
    kw = dict(grid={"noise_level": [0.05, 0.1]}, n_instances=5, seed=2, progress=False)
    ds = av.sweep(net, spec, twice, options=av.RunOptions(sampler="counter"), **kw)
    for chunk in (1, 2):
        chunked = av.RunOptions(sampler="counter", instances_per_chunk=chunk)
        np.testing.assert_array_equal(av.sweep(net, spec, twice, options=chunked, **kw).loss.values,
                                      ds.loss.values)
    # were the noise the same at every forward, the two-batch mean would equal the one-batch loss
    once = av.sweep(net, spec, [(x, y)], options=av.RunOptions(sampler="counter"), **kw).loss.values
    assert not np.allclose(ds.loss.values, once)
    # the third forward's loss (3 x mean of three - 2 x mean of two: runs repeat their first forwards) is not
    # the first forward's
    three = av.sweep(net, spec, [(x, y)] * 3, options=av.RunOptions(sampler="counter"), **kw).loss.values
    assert np.abs(3 * three - 2 * ds.loss.values - once).max() > 1e-4


def test_counter_and_generator_samplers_draw_the_same_distribution(counter_on_cpu):
    net = make_mlp()
    program = av.prepare(net, av.devices.paper1(0.1))
    counter = ChipSampler(program, seed=0).draw(range(64))[0]["z"]
    generator = ChipSampler(program, seed=0, counter=False).draw(range(64))[0]["z"]
    assert not torch.equal(counter, generator)
    assert stats.ks_2samp(counter.flatten().numpy(), generator.flatten().numpy()).pvalue > ALPHA


def test_default_sampler_by_device_and_a_bad_choice():
    program = av.prepare(make_mlp(), av.devices.paper1(0.1))
    assert ChipSampler(program, seed=0).kind == "per-instance-generator"
    with pytest.raises(ConfigError, match="RunOptions.sampler"):
        av.evaluate(make_mlp(), av.devices.paper1(0.1), make_data(), n_instances=2, seed=0,
                    options=av.RunOptions(sampler="philox"))


def test_two_samplers_under_one_base():
    """ChipSampler builds the device's sampler (generators on CPU) or the one named; each class draws its way."""
    from anvm_stats.sampler import CounterSampler, GeneratorSampler

    program = av.prepare(make_mlp(), av.devices.paper1(0.1))
    default = ChipSampler(program, seed=3)
    assert type(default) is GeneratorSampler and default.kind == "per-instance-generator" and not default.counter
    named = ChipSampler(program, seed=3, counter=True)
    assert type(named) is CounterSampler and isinstance(named, ChipSampler)
    assert torch.equal(named.draw([4, 0])[0]["z"], CounterSampler(program, 3).draw([4, 0])[0]["z"])
    assert torch.equal(default.draw([4, 0])[0]["z"], GeneratorSampler(program, 3).draw([4, 0])[0]["z"])
    assert not torch.equal(named.draw([4])[0]["z"], default.draw([4])[0]["z"])
    with pytest.raises(ValueError, match="GeneratorSampler"):
        GeneratorSampler(program, 3, counter=True)


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
        av.evaluate(tiny_mlp10(), av.devices.paper1(0.1), tiny_data10(), progress=False, **kw)
    assert_one_line_error(err.value, field, words)


def test_memory_bound_counts_grid_points():
    """A count that fits for one point is refused when the grid multiplies the results past the memory."""
    from anvm_stats.checks import RESULT_BYTES_PER_CELL, memory_bytes
    from anvm_stats.sampler import instance_indices

    n = memory_bytes() // RESULT_BYTES_PER_CELL // 2
    with pytest.raises(ConfigError, match="n_instances.*x 4 grid point"):
        instance_indices(n, None, points=4)
    assert instance_indices(5, None, points=4).tolist() == [0, 1, 2, 3, 4]
    assert instance_indices(None, np.array([7, 2**63 - 1], dtype=np.uint64), points=4).tolist() == [7, 2**63 - 1]


def test_draw_buffers_can_start_every_row_at_an_aligned_stride():
    """CUDA draw blocks (``CUDA_ROW_ALIGN``): rows of ``[K, n]`` views start at multiples of 16 floats, so every chip
    of a chunk is equally aligned whatever its row."""
    bufs = sampler_mod._buffers([{"z": "normal"}], 5, 37, torch.float32, "cpu", None, row_align=16)
    z = bufs[0]["z"]
    assert z.shape == (5, 37) and z.stride() == (48, 1)
    assert sampler_mod._buffers([{"z": "normal"}], 5, 37, torch.float32, "cpu", bufs, row_align=16) is bufs
    assert sampler_mod._buffers([{"z": "normal"}], 5, 37, torch.float32, "cpu", None)[0]["z"].is_contiguous()


def test_torch_cpu_generators_key_32_bits_of_their_seed_and_large_generator_runs_warn(monkeypatch):
    """The fact behind the warning (it would fail, and the warning become stale, if torch keyed all 64 bits),
    and the warning itself: above GENERATOR_WARN_INSTANCES chips from CPU generators, never with counters."""
    a = torch.randn(4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, torch.randn(4, generator=torch.Generator().manual_seed(7 + (1 << 32))))
    monkeypatch.setattr(sampler_mod, "GENERATOR_WARN_INSTANCES", 3)
    net, data = make_mlp(sizes=(8, 16, 4)), make_data(n=10, n_classes=4)
    spec = av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.05),))
    with pytest.warns(RuntimeWarning, match="sampler='counter'"):
        av.sweep(net, spec, data, n_instances=4, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        av.sweep(net, spec, data, n_instances=3, progress=False)
        av.sweep(net, spec, data, n_instances=4, progress=False, options=av.RunOptions(sampler="counter"))
