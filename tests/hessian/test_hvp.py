"""HessianOperator: HVPs, gradients and losses equal torch.autograd.functional.hessian / autograd on tiny float64
nets; batching never changes them; the user's model is never modified. Exact comparisons (float64 round-off)."""

import pytest
import torch

from anvm_stats.errors import ConfigError
from anvm_stats.hessian import HessianOperator, default_layers
from tests.helpers import assert_unchanged, exact_hessian, snapshot, tiny_conv, tiny_data, tiny_mlp

TOL = dict(rtol=1e-9, atol=1e-11)
# torch's forward-AD decompositions are built with torch.jit.script on first use (a torch-internal warning)
pytestmark = pytest.mark.usefixtures("one_thread")   # tiny problems: one thread, restored afterwards


CASES = [
    ("mlp", tiny_mlp, dict(n=10, shape=(3,), n_classes=3)),
    ("conv", tiny_conv, dict(n=7, shape=(1, 5, 5), n_classes=3)),
]


@pytest.mark.parametrize("name,make,shape", CASES)
def test_hvp_equals_exact_hessian_times_vector(name, make, shape):
    model = make()
    x, y = tiny_data(**shape)
    snap = snapshot(model)
    op = HessianOperator(model, (x, y))
    assert op.layers == default_layers(model)
    h, g, loss = exact_hessian(model, x, y, op.names)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(op.numel(), generator=gen, dtype=torch.float64)
        hv = op.hvp(op.unflatten(v))
        assert set(hv) == set(op.names)
        torch.testing.assert_close(op.flatten(hv), h @ v, **TOL)
    torch.testing.assert_close(op.dense(), h, **TOL)
    torch.testing.assert_close(op.dense(chunk=5), h, **TOL)
    stacked = torch.randn(4, op.numel(), generator=gen, dtype=torch.float64)
    parts = [op.unflatten(row) for row in stacked]
    hv4 = op.hvp_batch({n: torch.stack([p[n] for p in parts]) for n in op.names})
    torch.testing.assert_close(torch.cat([hv4[n].reshape(4, -1) for n in op.names], 1), stacked @ h, **TOL)
    torch.testing.assert_close(op.flatten(op.gradient()), g, **TOL)
    assert op.loss() == pytest.approx(loss, rel=1e-12)
    hv, g2 = op.hvp_and_gradient(op.unflatten(v))
    torch.testing.assert_close(op.flatten(g2), g, **TOL)
    assert_unchanged(model, snap)


def test_subset_of_parameters_gives_the_block():
    model = tiny_mlp()
    x, y = tiny_data()
    names = ["2.weight", "0.bias"]
    op = HessianOperator(model, (x, y), param_names={"a": ["2.weight"], "b": ["0.bias"]})
    h, _, _ = exact_hessian(model, x, y, names)
    torch.testing.assert_close(op.dense(), h, **TOL)
    full = HessianOperator(model, (x, y))
    hf = full.dense()
    i = full.names.index("2.weight")
    start = sum(full.shapes[n].numel() for n in full.names[:i])
    block = hf[start:start + 15, start:start + 15]                # layer "2": weight (3x4) and bias (3)
    torch.testing.assert_close(full.subset("2").dense(), block, **TOL)
    torch.testing.assert_close(full.dense("2"), block, **TOL)
    # missing vector entries count as zero
    v = {"2.weight": torch.ones(3, 4, dtype=torch.float64)}
    torch.testing.assert_close(full.flatten(full.hvp(v)), hf[:, start:start + 12].sum(1), **TOL)


def test_batching_never_changes_the_result():
    model = tiny_conv()
    x, y = tiny_data(n=11, shape=(1, 5, 5))
    whole = HessianOperator(model, (x, y))
    cuts = [(0, 2), (2, 7), (7, 8), (8, 11)]                       # unequal batches
    batches = [(x[a:b], y[a:b]) for a, b in cuts]
    ops = [HessianOperator(model, batches), HessianOperator(model, (x, y), batch_size=4),
           HessianOperator(model, iter(batches))]                  # a one-shot iterator is kept
    v = whole.unflatten(torch.randn(whole.numel(), generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    ref = whole.flatten(whole.hvp(v))
    for op in ops:
        for _ in range(2):
            torch.testing.assert_close(op.flatten(op.hvp(v)), ref, **TOL)
        torch.testing.assert_close(op.flatten(op.gradient()), whole.flatten(whole.gradient()), **TOL)
        assert op.loss() == pytest.approx(whole.loss(), rel=1e-12)


def test_model_is_never_modified_and_modes_are_restored():
    model = tiny_conv()
    model.train()
    model.fc.eval()                                                # mixed flags must come back as they were
    x, y = tiny_data(n=6, shape=(1, 5, 5))
    snap = snapshot(model)
    op = HessianOperator(model, (x, y))
    op.hvp(op.unflatten(torch.ones(op.numel(), dtype=torch.float64)))
    op.gradient()
    op.loss()
    assert_unchanged(model, snap)
    # the operator uses eval mode (BN running stats), whatever the model's mode
    model.eval()
    h, _, _ = exact_hessian(model, x, y, op.names)
    model.train()
    model.fc.eval()
    torch.testing.assert_close(op.dense(), h, **TOL)


def test_operator_snapshots_parameters():
    model = tiny_mlp()
    x, y = tiny_data()
    op = HessianOperator(model, (x, y))
    before = op.flatten(op.gradient())
    with torch.no_grad():
        model[0].weight.add_(1.0)
    torch.testing.assert_close(op.flatten(op.gradient()), before, rtol=0, atol=0)


def test_errors_name_the_field():
    model = tiny_mlp()
    data = tiny_data()
    with pytest.raises(ConfigError, match="param_names"):
        HessianOperator(model, data, param_names={"a": ["nope.weight"]})
    with pytest.raises(ConfigError, match="param_names"):
        HessianOperator(model, data, param_names={"a": ["0.weight"], "b": ["0.weight"]})
    with pytest.raises(ConfigError, match="layers"):
        HessianOperator(model, data, param_names=["nope"])
    with pytest.raises(ConfigError, match="batch_size"):
        HessianOperator(model, data, batch_size=0)
    op = HessianOperator(model, data)
    with pytest.raises(ConfigError, match="vectors"):
        op.hvp({"0.weight": torch.ones(3)})
    with pytest.raises(ConfigError, match="vectors"):
        op.hvp({"zz": torch.ones(3)})
    with pytest.raises(ConfigError, match="data"):
        HessianOperator(model, []).loss()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model = tiny_conv()
    x, y = tiny_data(n=7, shape=(1, 5, 5))
    cpu = HessianOperator(model, (x, y))
    gpu = HessianOperator(model.cuda(), (x, y))
    assert gpu.device.type == "cuda"
    v = torch.randn(cpu.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(gpu.flatten(gpu.hvp(gpu.unflatten(v))).cpu(), cpu.flatten(cpu.hvp(cpu.unflatten(v))),
                               rtol=1e-8, atol=1e-10)


class _TinyAttention(torch.nn.Module):
    """Self-attention over 3 tokens of 4 features (fused SDPA kernel by default), mean-pooled, a linear head."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.attn = torch.nn.MultiheadAttention(4, 2, batch_first=True)
            self.head = torch.nn.Linear(4, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        h, _ = self.attn(x, x, x, need_weights=False)
        return self.head(h.mean(1))


def test_attention_layers_hvp_equals_exact_hessian():
    """nn.MultiheadAttention is a default layer (its packed q/k/v projection; out_proj is a Linear of its own), and
    its HVPs work although the fused attention kernels have no forward-mode AD (the math kernel is used)."""
    model = _TinyAttention().double()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(6, 3, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g)
    op = HessianOperator(model, (x, y))
    assert list(op.layers) == ["attn", "attn.out_proj", "head"]
    assert op.layers["attn"] == ["attn.in_proj_weight", "attn.in_proj_bias"]
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.MATH):
        h, _, _ = exact_hessian(model, x, y, op.names)
    torch.testing.assert_close(op.dense(), h, **TOL)
