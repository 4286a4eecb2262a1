"""anvm_stats.analog.affine_gemm: one fused call per linear layer of affine chips.

The layer wiring is checked on the CPU with a kernel whose fused call is written in plain torch; the Triton kernel
under Triton's interpreter (where Triton is installed) and on a GPU (where one is present)."""

from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch

import anvm_stats as av
from anvm_stats.analog.kernels import GenericKernel
from tests.helpers import HAVE_TRITON, make_mlp, run_triton_interpreted

SPEC = av.devices.paper1(0.05)       # one array per layer, unclipped additive noise: affine in its draws


def reference(x, w0, coef, z, bias, *, shared, K, B, relu):
    """The fused call in plain torch: program, multiply, add the bias, clamp."""
    w = torch.addcmul(w0, z, coef.reshape(-1, 1))
    xk = x.expand(K, *x.shape) if shared else x.view(K, B, -1)
    y = torch.bmm(xk, w.transpose(1, 2))
    if bias is not None:
        y = y + bias[:, None, :]
    return y.relu() if relu else y


@dataclass(frozen=True)
class TorchFusedKernel(GenericKernel):
    """The generic kernel with a fused affine call written in torch; counts its calls."""

    calls: list = None

    def affine_linear(self, x, w0, coef, z, bias, *, shared, K, B, relu):
        self.calls.append((tuple(z.shape), shared, relu, bias is not None))
        return reference(x, w0, coef, z, bias, shared=shared, K=K, B=B, relu=relu)


def _run(kernel, data, spec=SPEC, **kw):
    net = make_mlp(sizes=(8, 16, 16, 7))
    program = av.prepare(net, spec, kernel=kernel, fuse_relu=True)
    return av.sweep(net, spec, data, n_instances=5, seed=3, progress=False, program=program, **kw)


def test_affine_chips_take_the_fused_call_and_agree_with_programmed_weights():
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(30, 8, generator=g), torch.randint(0, 7, (30,), generator=g))
    calls = []
    fused = _run(TorchFusedKernel(calls=calls), data)
    plain = _run(GenericKernel(), data)
    # every linear layer after the first (on CPU the first reads the network input, shared by all chips, and
    # takes the shared-input products of anvm_stats.analog.lazy), hidden layers with their ReLU
    assert calls == [((5, 16, 16), False, True, True), ((5, 7, 16), False, False, True)]
    np.testing.assert_allclose(fused.loss.values, plain.loss.values, rtol=1e-5, atol=1e-6)
    assert np.abs(fused.correct_count.values - plain.correct_count.values).max() <= 1


def test_chips_that_are_not_affine_never_take_the_fused_call():
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(30, 8, generator=g), torch.randint(0, 7, (30,), generator=g))
    calls = []
    spec = replace(SPEC, effects=SPEC.effects + (av.ReadNoise(sigma=0.01),))
    _run(TorchFusedKernel(calls=calls), data, spec)
    clipped = replace(SPEC, effects=(av.ProgrammingNoise(sigma=0.05, clip=True),))
    _run(TorchFusedKernel(calls=calls), data, clipped)
    assert calls == []


INTERPRETED = """
import torch
from anvm_stats.analog.affine_gemm import launch
from tests.analog.test_affine_gemm import reference
g = torch.Generator().manual_seed(0)
for K, B, IN, O, shared, relu, bias in [(3, 50, 20, 37, False, True, True), (2, 40, 64, 10, True, False, True),
                                        (2, 33, 40, 70, False, True, False)]:
    x = torch.randn(B if shared else K * B, IN, generator=g)
    w0, coef = torch.randn(O, IN, generator=g), torch.rand(O, 1, generator=g)
    block = torch.randn(K, O * IN + 9, generator=g)              # draws as a strided view of a draw block
    z = block[:, 2:2 + O * IN].view(K, O, IN)
    b = torch.randn(K, O, generator=g) if bias else None
    cfg = {"BM": 16, "BN": 16, "BK": 16, "num_warps": 4, "num_stages": 1}
    got = launch(x, w0, coef, z, b, shared=shared, K=K, B=B, relu=relu, config=cfg)
    want = reference(x, w0, coef, z, b, shared=shared, K=K, B=B, relu=relu)
    err = float((got - want).abs().max())
    assert err < 1e-4 * float(want.abs().max()), (K, B, IN, O, err)
    # a chip's outputs do not depend on the chips beside it
    one = launch(x if shared else x[B:2 * B], w0, coef, z[1:2], None if b is None else b[1:2], shared=shared,
                 K=1, B=B, relu=relu, config=cfg)
    assert torch.equal(one[0], got[1])
print("ok")
"""


@pytest.mark.skipif(not HAVE_TRITON, reason="needs Triton (its interpreter runs on CPU)")
def test_triton_kernel_under_the_interpreter_matches_torch():
    proc = run_triton_interpreted(INTERPRETED)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fused_kernels_agree_with_the_library_path_and_are_chunk_invariant(monkeypatch):
    """The digits MLP on CUDA: the whole network as one kernel (analog.chain), one fused call per layer, and the
    library calls (programmed weights, cuBLAS, fused bias + ReLU) score the same chips; correct counts do not
    depend on the chunking (losses to float32 round-off: CUDA reductions pick their order by shape)."""
    from anvm_stats.analog import affine_gemm
    from anvm_stats.data import digits

    te = digits("test")
    net = av.models.build_model("mlp", seed=0).cuda().eval()
    data = (te.x.cuda(), te.y.cuda())
    launches = []
    launch_mlp3 = affine_gemm.launch_mlp3
    monkeypatch.setattr(affine_gemm, "launch_mlp3", lambda *a, **k: launches.append(1) or launch_mlp3(*a, **k))

    def run(**opts):
        return av.sweep(net, SPEC, data, n_instances=40, seed=2, progress=False, device="cuda",
                        options=av.RunOptions(**opts))

    fused = run()
    n_one = len(launches)                          # one per forward: one chunk of 40 chips per batch
    chunked = run(instances_per_chunk=7)
    assert not affine_gemm._BROKEN + affine_gemm._BROKEN_MLP3, affine_gemm._BROKEN + affine_gemm._BROKEN_MLP3
    assert n_one >= 1 and len(launches) == 7 * n_one          # then 6 chunks (5 x 7 + 5)
    assert np.array_equal(fused.correct_count.values, chunked.correct_count.values)
    np.testing.assert_allclose(fused.loss.values, chunked.loss.values, rtol=1e-6)
    monkeypatch.setattr(affine_gemm, "mlp3_fits", lambda *a: False)
    per_layer = run()
    monkeypatch.setattr(affine_gemm, "_BROKEN", ["library path for this test"])
    plain = run()
    for other in (per_layer, plain):
        np.testing.assert_allclose(fused.loss.values, other.loss.values, rtol=2e-3, atol=1e-4)
        assert np.abs(fused.correct_count.values - other.correct_count.values).max() <= 1
