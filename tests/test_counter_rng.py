"""Counter-based draws (anvm_stats.counter_rng): Philox4x32-10 against Random123's known answers, per-instance
streams independent of the chunking, distributions against scipy at a 1e-5 false-failure rate, the sampler and the
Monte Carlo engine on this path, and the CUDA Triton kernel against the torch reference (on a GPU only)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import anvm_stats as av
import anvm_stats.sampler as sampler_mod
from anvm_stats.counter_rng import fill_counter, philox4x32, run_key
from anvm_stats.errors import ConfigError
from anvm_stats.rng import Stream, root_sequence
from anvm_stats.sampler import ChipSampler
from tests.helpers import make_data, make_mlp

ALPHA = 1e-5   # false-failure rate of each statistical assertion

# Random123 kat_vectors, "philox4x32 10": counter (4 words), key (2 words) -> output (4 words)
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,want", KAT)
def test_philox_matches_random123_known_answers(ctr, key, want):
    out = philox4x32(*[torch.tensor(c, dtype=torch.int64) for c in ctr], *key)
    assert tuple(int(o) for o in out) == want


def test_a_row_depends_only_on_key_instance_stream_and_slot():
    key = (12345, 678)
    full = fill_counter("normal", torch.empty(9, 103), key, range(9), Stream.PROGRAM)
    picked = fill_counter("normal", torch.empty(3, 103), key, [7, 2, 5], Stream.PROGRAM)
    assert torch.equal(picked, full[[7, 2, 5]])
    # the first elements do not depend on how many are drawn (n not a multiple of 4 included)
    short = fill_counter("normal", torch.empty(9, 10), key, range(9), Stream.PROGRAM)
    assert torch.equal(short, full[:, :10])
    for other in (dict(key=(12346, 678)), dict(stream=Stream.READ), dict(slot=1)):
        kw = dict(key=key, stream=Stream.PROGRAM, slot=0) | other
        alt = fill_counter("normal", torch.empty(9, 103), kw["key"], range(9), kw["stream"], kw["slot"])
        assert not torch.isclose(alt, full).any(dim=1).all()
    # large indices use both counter words
    big = fill_counter("uniform", torch.empty(2, 8), key, [3, 3 + (1 << 32)], Stream.PROGRAM)
    assert not torch.equal(big[0], big[1])


def test_run_key_is_a_pure_function_of_the_seed():
    assert run_key(root_sequence(3)) == run_key(root_sequence(3)) != run_key(root_sequence(4))


@pytest.mark.parametrize("kind,dist", [("normal", stats.norm), ("uniform", stats.uniform),
                                       ("centered_uniform", stats.uniform(-math.sqrt(3), 2 * math.sqrt(3)))])
def test_distributions_pass_kolmogorov_smirnov(kind, dist):
    x = fill_counter(kind, torch.empty(16, 25_000), run_key(root_sequence(0)), range(16), Stream.PROGRAM)
    assert stats.kstest(x.flatten().numpy(), dist.cdf).pvalue > ALPHA
    if kind == "uniform":
        assert 0.0 <= float(x.min()) and float(x.max()) < 1.0


def test_normal_moments_and_independence_between_instances_and_slots():
    n = 400_000
    key = run_key(root_sequence(1))
    a = fill_counter("normal", torch.empty(2, n), key, [0, 1], Stream.PROGRAM).double()
    b = fill_counter("normal", torch.empty(1, n), key, [0], Stream.PROGRAM, slot=1).double()
    z = stats.norm.isf(ALPHA / 2)
    for x in (a[0], a[1], b[0]):
        assert abs(float(x.mean())) < z / math.sqrt(n)
        # var of the sample variance of N(0,1) is 2/n; of the 4th moment's estimate, (105 - 9)/n
        assert abs(float(x.var()) - 1) < z * math.sqrt(2 / n)
        assert abs(float((x ** 4).mean()) - 3) < z * math.sqrt(96 / n)
    for u, v in ((a[0], a[1]), (a[0], b[0])):
        r = float(torch.corrcoef(torch.stack([u, v]))[0, 1])
        assert abs(r) < z / math.sqrt(n)
    # consecutive elements (the two halves of a Box-Muller pair, and neighbouring blocks) are uncorrelated
    x = a[0]
    for lag in (1, 2, 4):
        r = float(torch.corrcoef(torch.stack([x[:-lag], x[lag:]]))[0, 1])
        assert abs(r) < z / math.sqrt(n)


@pytest.mark.parametrize("kw,field", [
    (dict(kind="gamma"), "kind"), (dict(out=torch.empty(2, 3, dtype=torch.float64)), "out"),
    (dict(out=torch.empty(3)), "out"), (dict(indices=[0]), "indices"), (dict(indices=[0, -1]), "indices"), (dict(slot=1 << 30), "slot"),
    (dict(slot=-1), "slot")])
def test_bad_arguments_name_the_field(kw, field):
    args = dict(kind="normal", out=torch.empty(2, 3), key=(1, 2), indices=[0, 1], stream=Stream.PROGRAM, slot=0)
    args |= kw
    with pytest.raises(ConfigError) as err:
        fill_counter(**args)
    assert field in str(err.value)


def test_triton_backend_off_cuda_is_the_reference():
    key = (5, 6)
    ref = fill_counter("normal", torch.empty(3, 50), key, range(3), Stream.PROGRAM, backend="torch")
    assert torch.equal(fill_counter("normal", torch.empty(3, 50), key, range(3), Stream.PROGRAM,
                                    backend="triton"), ref)


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


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("join", [True, False])
@pytest.mark.parametrize("kind", ["normal", "uniform", "centered_uniform"])
def test_triton_kernel_matches_the_reference(kind, join, monkeypatch):
    import anvm_stats.counter_rng_triton as tr
    monkeypatch.setattr(tr, "_NO_JOIN", [] if join else ["strided stores"])
    key = run_key(root_sequence(9))
    idx = [0, 1, 2, 77, 5 + (1 << 33)]
    for n in (1, 7, 4096 + 3):
        ref = fill_counter(kind, torch.empty(len(idx), n), key, idx, Stream.READ, 3, backend="torch")
        got = fill_counter(kind, torch.empty(len(idx), n, device="cuda"), key, idx, Stream.READ, 3).cpu()
        assert not tr._BROKEN and len(tr._NO_JOIN) == (0 if join else 1), (tr._BROKEN, tr._NO_JOIN)
        if kind == "uniform":
            assert torch.equal(got, ref)
        else:
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=2e-5)


@cuda
def test_a_failing_triton_kernel_falls_back_to_the_reference(monkeypatch):
    import anvm_stats.counter_rng_triton as tr

    def broken():
        raise RuntimeError("no compiler")

    monkeypatch.setattr(tr, "_kernel", broken)
    monkeypatch.setattr(tr, "_BROKEN", [])
    key = (1, 2)
    with pytest.warns(RuntimeWarning, match="Triton sampler failed"):
        got = fill_counter("uniform", torch.empty(2, 9, device="cuda"), key, [0, 1], Stream.PROGRAM)
    ref = fill_counter("uniform", torch.empty(2, 9), key, [0, 1], Stream.PROGRAM, backend="torch")
    assert torch.equal(got.cpu(), ref) and not tr.triton_available()


def test_counter_stream_checks_its_indices_once_and_advances_per_call():
    from anvm_stats.counter_rng import CounterStream

    with pytest.raises(ConfigError, match="indices"):
        CounterStream((1, 2), torch.tensor([0, -3]), Stream.READ)
    s = CounterStream((1, 2), torch.tensor([4, 0]), Stream.READ)
    a, b = s.normal((3,)), s.normal((3,))
    assert s.calls == 2 and not torch.equal(a, b)
    want = fill_counter("normal", torch.empty(2, 3), (1, 2), [4, 0], Stream.READ, slot=1)
    assert torch.equal(b, want)


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
