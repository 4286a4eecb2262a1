"""anvm_stats.counter_rng_triton: the Triton kernel equals the torch reference (on a GPU only), and off CUDA or
on failure the reference is used."""

import pytest
import torch

from anvm_stats.counter_rng import fill_counter, run_key
from anvm_stats.rng import Stream, root_sequence


def test_triton_backend_off_cuda_is_the_reference():
    key = (5, 6)
    ref = fill_counter("normal", torch.empty(3, 50), key, range(3), Stream.PROGRAM, backend="torch")
    assert torch.equal(fill_counter("normal", torch.empty(3, 50), key, range(3), Stream.PROGRAM,
                                    backend="triton"), ref)


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
