"""Counter-based draws (anvm_stats.counter_rng): Philox4x32-10 against Random123's known answers, per-instance
streams independent of the chunking, distributions against scipy at a 1e-5 false-failure rate."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from anvm_stats.counter_rng import fill_counter, philox4x32, run_key
from anvm_stats.errors import ConfigError
from anvm_stats.rng import Stream, root_sequence


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
    (dict(out=torch.empty(3)), "out"), (dict(out=torch.empty(3, 2).t()), "out"),
    (dict(out=torch.empty(2, 6)[:, ::2]), "out"), (dict(indices=[0]), "indices"), (dict(indices=[0, -1]), "indices"), (dict(slot=1 << 30), "slot"),
    (dict(slot=-1), "slot")])
def test_bad_arguments_name_the_field(kw, field):
    args = dict(kind="normal", out=torch.empty(2, 3), key=(1, 2), indices=[0, 1], stream=Stream.PROGRAM, slot=0)
    args |= kw
    with pytest.raises(ConfigError) as err:
        fill_counter(**args)
    assert field in str(err.value)


def test_counter_stream_checks_its_indices_once_and_advances_per_call():
    from anvm_stats.counter_rng import CounterStream

    with pytest.raises(ConfigError, match="indices"):
        CounterStream((1, 2), torch.tensor([0, -3]), Stream.READ)
    s = CounterStream((1, 2), torch.tensor([4, 0]), Stream.READ)
    a, b = s.normal((3,)), s.normal((3,))
    assert s.calls == 2 and not torch.equal(a, b)
    want = fill_counter("normal", torch.empty(2, 3), (1, 2), [4, 0], Stream.READ, slot=1)
    assert torch.equal(b, want)


def test_rows_with_a_padded_stride_get_the_same_draws():
    """The sampler pads CUDA draw rows to aligned strides: a ``[K, n]`` view of a ``[K, n']`` block gets exactly
    the draws of a contiguous ``[K, n]`` tensor, and the padding is left alone."""
    block = torch.full((3, 16), 7.0)
    for kind in ("normal", "uniform", "centered_uniform"):
        got = fill_counter(kind, block[:, :13], (5, 6), [2, 0, 9], Stream.PROGRAM, slot=3)
        want = fill_counter(kind, torch.empty(3, 13), (5, 6), [2, 0, 9], Stream.PROGRAM, slot=3)
        assert torch.equal(got, want) and got.data_ptr() == block.data_ptr()
        assert torch.equal(block[:, 13:], torch.full((3, 3), 7.0))


def test_counter_stream_from_host_indices_checks_them_there():
    from anvm_stats.counter_rng import CounterStream

    with pytest.raises(ConfigError, match="indices"):
        CounterStream.from_host((1, 2), np.array([0, -3]), Stream.READ, "cpu")
    s = CounterStream.from_host((1, 2), np.array([4, 0]), Stream.READ, "cpu")
    assert torch.equal(s.normal((3,)), CounterStream((1, 2), torch.tensor([4, 0]), Stream.READ).normal((3,)))
