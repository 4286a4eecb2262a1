"""anvm_stats.analog.chain: only a forward that is exactly layer3(layer2(layer1(x))) runs as one fused call.

The fused call is written in plain torch here (a kernel subclass); the Triton kernel is checked under Triton's
interpreter (where Triton is installed) and on a GPU (tests/analog/test_affine_gemm.py)."""

from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
from torch import nn

import anvm_stats as av
from anvm_stats.analog.kernels import GenericKernel
from tests.helpers import HAVE_TRITON, make_mlp, run_triton_interpreted

SPEC = av.devices.paper1(0.05)


def reference_mlp3(x, layers, *, shared, K, B):
    """Three affine layers, ReLU after the first two, in plain torch."""
    h = x.expand(K, *x.shape) if shared else x.view(K, B, -1)
    for j, (w0, coef, z, bias) in enumerate(layers):
        h = torch.bmm(h, torch.addcmul(w0, z, coef).transpose(1, 2)) + bias[:, None, :]
        h = h.relu() if j < 2 else h
    return h


@dataclass(frozen=True)
class TorchChainKernel(GenericKernel):
    calls: list = None

    def affine_mlp3(self, x, layers, *, shared, K, B):
        self.calls.append((tuple(x.shape), shared, K, B))
        return reference_mlp3(x, layers, shared=shared, K=K, B=B)


class Scaled(nn.Module):
    """Three linear layers with something between them (``between`` ``(x) -> x``) or around the output."""

    def __init__(self, between=None, after=None):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.l1, self.l2, self.l3 = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 7)
        self.r1, self.r2 = nn.ReLU(), nn.ReLU()
        self.between, self.after = between, after

    def forward(self, x):
        h = self.r1(self.l1(x))
        if self.between is not None:
            h = self.between(h)
        out = self.l3(self.r2(self.l2(h)))
        return self.after(out) if self.after is not None else out


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(30, 8, generator=g), torch.randint(0, 7, (30,), generator=g)


def _run(net, kernel, spec=SPEC):
    program = av.prepare(net, spec, kernel=kernel, fuse_relu=True)
    ds = av.sweep(net, spec, _data(), n_instances=5, seed=3, progress=False, program=program)
    return program, ds


def test_a_plain_mlp_runs_as_one_fused_call_with_the_same_results():
    calls = []
    program, fused = _run(make_mlp(sizes=(8, 16, 16, 7)), TorchChainKernel(calls=calls))
    assert program.chain and calls == [((30, 8), True, 5, 30)]           # BatchNorm folded, ReLUs fused
    _, plain = _run(make_mlp(sizes=(8, 16, 16, 7)), GenericKernel())
    np.testing.assert_allclose(fused.loss.values, plain.loss.values, rtol=1e-5, atol=1e-6)
    assert np.abs(fused.correct_count.values - plain.correct_count.values).max() <= 1


@pytest.mark.parametrize("between,after", [
    (lambda h: h * 2, None),                        # a new tensor between the layers
    (lambda h: h.mul_(2), None),                     # the same storage, written in place
    (None, lambda out: out + 1),                     # the network changes the last layer's output
    (None, lambda out: out.add_(1)),
], ids=["scaled", "in_place", "output_changed", "output_in_place"])
def test_anything_between_or_after_the_layers_keeps_them_separate(between, after):
    calls = []
    program, _ = _run(Scaled(between, after), TorchChainKernel(calls=calls))
    assert not program.chain and calls == []


def test_the_same_chain_without_anything_between_is_fused():
    calls = []
    program, _ = _run(Scaled(), TorchChainKernel(calls=calls))
    assert program.chain and len(calls) == 1


def test_chips_that_are_not_affine_or_read_noise_run_layer_by_layer():
    for spec in (replace(SPEC, effects=SPEC.effects + (av.ReadNoise(sigma=0.01),)),
                 replace(SPEC, effects=(av.ProgrammingNoise(sigma=0.05, clip=True),))):
        calls = []
        _run(make_mlp(sizes=(8, 16, 16, 7)), TorchChainKernel(calls=calls), spec)
        assert calls == []


INTERPRETED = """
import torch
from anvm_stats.analog.affine_gemm import launch_mlp3
from tests.analog.test_chain import reference_mlp3
g = torch.Generator().manual_seed(0)
for K, B, IN, H1, H2, O, shared in [(3, 50, 20, 40, 37, 10, True), (2, 33, 64, 64, 48, 7, False)]:
    x = torch.randn(B if shared else K * B, IN, generator=g)
    block = torch.randn(K, H1 * IN + H2 * H1 + O * H2 + 11, generator=g)     # one draw block, three views
    offs, layers = [3, 3 + H1 * IN, 3 + H1 * IN + H2 * H1], []
    for (o, i), off in zip([(H1, IN), (H2, H1), (O, H2)], offs):
        layers.append((0.3 * torch.randn(o, i, generator=g), 0.1 * torch.rand(o, 1, generator=g),
                       block[:, off:off + o * i].view(K, o, i), 0.1 * torch.randn(K, o, generator=g)))
    cfg = {"BM": 16, "BH": 16, "num_warps": 4, "num_stages": 1}
    got = launch_mlp3(x, layers, shared=shared, K=K, B=B, config=cfg)
    want = reference_mlp3(x, layers, shared=shared, K=K, B=B)
    err = float((got - want).abs().max())
    assert err < 1e-4 * float(want.abs().max()), (K, B, err)
print("ok")
"""


@pytest.mark.skipif(not HAVE_TRITON, reason="needs Triton (its interpreter runs on CPU)")
def test_three_layer_kernel_under_the_interpreter_matches_torch():
    proc = run_triton_interpreted(INTERPRETED)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
