"""Read noise and ADC output noise per MVM: fresh for every input vector, keyed by (seed, instance, layer, tile,
sample index), so a chip's result never depends on batch size, chunking or order; the spread matches exact
references. Statistical tests use fixed seeds and a false-failure rate of 1e-5 per test."""

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import anvm_stats as av
import anvm_stats.sample_rng as sr
from anvm_stats.sample_rng import SampleNoise

from tests.helpers import make_data, make_mlp

ALPHA = 1e-5


def _conv_net(seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(2, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 3, 3, stride=2), nn.ReLU(),
                             nn.Flatten(), nn.Linear(3 * 2 * 2, 4)).eval()


def _run(net, spec, data, **kw):
    opts = {k: kw.pop(k) for k in ("samples_per_batch", "instances_per_chunk", "sampler") if k in kw}
    return av.evaluate(net, spec, data, options=av.RunOptions(**opts), progress=False, **kw)


SPECS = {
    "read": av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.03), av.ReadNoise(sigma=0.05))),
    "read-state-adc": av.HardwareSpec(effects=(av.ReadNoise(sigma=0.1, relative_to="state"),),
                                      periphery=av.Periphery(adc=av.Quantizer(bits=8), output_noise=0.01)),
    "tiled-output": av.HardwareSpec(mapping=av.OffsetMapping(), effects=(av.ProgrammingNoise(sigma=0.03),),
                                    periphery=av.Periphery(adc=av.Quantizer(bits=6), output_noise=0.02),
                                    tile=av.Tile(rows=7, cols=3)),
    "bitsliced-read": av.HardwareSpec(mapping=av.BitSlicedMapping(n_slices=3), effects=(av.ReadNoise(sigma=0.02),),
                                      periphery=av.Periphery(adc=av.Quantizer(bits=6))),
    "tiled-pcm": av.HardwareSpec(effects=(av.devices.PCMReadNoise(t_inference=3600.0),),
                                 periphery=av.Periphery(adc=av.Quantizer(bits=6)), tile=av.Tile(rows=16, cols=4)),
}


@pytest.mark.parametrize("net", ["mlp", "conv"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_chip_results_do_not_depend_on_batch_size_chunking_or_order(net, name):
    model = make_mlp() if net == "mlp" else _conv_net()
    x, y = make_data(n=13, shape=(8,) if net == "mlp" else (2, 6, 6), n_classes=4)
    spec = SPECS[name]
    ref = _run(model, spec, (x, y), n_instances=5, seed=4, calibration_data=x)
    for kw in (dict(samples_per_batch=1), dict(samples_per_batch=7), dict(instances_per_chunk=2),
               dict(instances=[4, 1, 3, 0, 2])):
        kw.setdefault("n_instances", None if "instances" in kw else 5)
        got = _run(model, spec, (x, y), seed=4, calibration_data=x, **kw).sortby("instance")
        np.testing.assert_array_equal(got.correct_count.values, ref.correct_count.values)
        np.testing.assert_allclose(got.loss.values, ref.loss.values, rtol=2e-5, atol=1e-6)
    # per-MVM draws are fresh: another seed gives other chips
    other = _run(model, spec, (x, y), n_instances=5, seed=5, calibration_data=x)
    assert not np.allclose(other.loss.values, ref.loss.values)


def test_sample_noise_is_keyed_by_sample_index():
    noise = SampleNoise(np.random.SeedSequence(3), [7, 2])
    whole = noise.normal(1, "read", 0, 10, 13)
    np.testing.assert_array_equal(noise.normal(1, "read", 4, 3, 13).numpy(), whole[:, 4:7].numpy())
    np.testing.assert_array_equal(SampleNoise(np.random.SeedSequence(3), [2]).normal(1, "read", 0, 10, 13).numpy(),
                                  whole[1:].numpy())
    assert not torch.equal(noise.normal(2, "read", 0, 10, 13), whole)        # layers differ
    assert not torch.equal(noise.normal(1, "output", 0, 10, 13), whole)      # kinds differ
    step1 = noise.normal(1, "read", 0, 10, 13, step=1)                       # repeated calls (time steps) differ
    assert not torch.equal(step1, whole) and not torch.equal(step1, noise.normal(1, "read", 0, 10, 13, step=2))
    np.testing.assert_array_equal(noise.normal(1, "read", 0, 10, 13, step=0).numpy(), whole.numpy())
    np.testing.assert_array_equal(noise.normal(1, "read", 4, 3, 13, step=1).numpy(), step1[:, 4:7].numpy())
    z = SampleNoise(np.random.SeedSequence(0), range(50)).normal(0, "read", 0, 200, 37).double().flatten()
    # standard normal: Kolmogorov-Smirnov at the stated false-failure rate
    assert stats.kstest(z.numpy(), "norm").pvalue > ALPHA


def _per_device_coef(prog, plan):
    """d W_eff / d g for every device of ``plan`` ([A, O, in] and the bias column's [A, O, 1]): the decode is
    elementwise linear, so the gradient of its sum is each device's own coefficient."""
    g = prog.g0[None].clone().requires_grad_(True)
    w = prog.weights(g)[plan.name]
    (coef,) = torch.autograd.grad(w.sum(), g)
    return plan.weight_view(coef)[0], plan.bias_view(coef)


@pytest.mark.parametrize("tile", [None, av.Tile(rows=5, cols=2)], ids=["untiled", "tiled"])
@pytest.mark.parametrize("relative_to", ["range", "state"])
def test_per_mvm_variance_is_exact(tile, relative_to):
    """One conv layer reading the same image at N sample positions: every output pixel's N values are independent
    normals with the exact variance sum_devices (dW/dg)^2 sd(g)^2 x^2 (weight-domain definition of ReadNoise)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3)).eval()
    eff = av.ReadNoise(sigma=0.2, relative_to=relative_to)
    spec = av.HardwareSpec(g_min=0.1, effects=(eff,), tile=tile)
    prog = av.prepare(net, spec)
    plan = prog.plans[0]
    N, x1 = 400, torch.randn(1, 2, 5, 5)
    x = x1.expand(N, -1, -1, -1).contiguous()
    prog.load(prog.g0[None].repeat(2, 1), B=N, mvm_noise=SampleNoise(np.random.SeedSequence(1), [0, 1]),
              mvm_effects=(eff,))
    prog.set_batch(N, 0, 0)
    with torch.no_grad():
        y = prog.module(x).view(2, N, -1).double()
    cw, cb = _per_device_coef(prog, plan)
    sd = eff.read_sd(prog.g0, spec.bounds)
    sd = torch.full_like(prog.g0, sd) if isinstance(sd, float) else sd
    sw, sb = plan.weight_view(sd[None])[0], plan.bias_view(sd[None])
    kvar = (cw ** 2 * sw ** 2).sum(0).view(3, 2, 3, 3)                                 # [O, C, kh, kw]
    var = torch.nn.functional.conv2d(x1 ** 2, kvar).flatten().double()
    var = var.view(3, -1) + (plan.bias_scale ** 2 * (cb[0] ** 2 * sb[0] ** 2).sum(0)).view(3, 1)
    var = var.flatten()
    mean = net(x1).detach().flatten().double()
    E = var.numel()
    for k in range(2):
        s2 = y[k].var(0, unbiased=True)
        chi = float(((N - 1) * s2 / var).sum())
        p = stats.chi2.cdf(chi, E * (N - 1))
        assert ALPHA / 2 < p < 1 - ALPHA / 2, (chi, E * (N - 1))
        zsum = float(((y[k].mean(0) - mean) ** 2 / (var / N)).sum())
        assert stats.chi2.sf(zsum, E) > ALPHA
    assert not torch.equal(y[0], y[1])


def test_chip_to_chip_spread_equals_a_per_sample_reference_loop():
    """Per-chip loss over chips: the engine against a plain loop drawing every device's read noise afresh for every
    sample (ReadNoise.apply on the conductances, one forward per sample). Equal variances (F test) and means
    (Welch t test) at the stated false-failure rate. One draw per batch (the old engine) spreads ~1.6x wider in sd
    here, which this test rejects (p ~ 1e-18)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3)).eval()
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    eff = av.ReadNoise(sigma=0.3)
    spec = av.HardwareSpec(effects=(eff,))
    n = 400
    engine = _run(net, spec, (x, y), n_instances=n, seed=0).loss.values
    prog = av.prepare(net, spec)
    gen = torch.Generator().manual_seed(123)
    ref = np.empty(n)
    with torch.no_grad():
        for c in range(n):
            losses = []
            for s in range(len(x)):
                g = eff.apply(prog.g0[None], {"z": torch.randn(1, prog.n_devices, generator=gen)}, spec.bounds)
                prog.load(g, B=1)
                logits = prog.module(x[s:s + 1])
                losses.append(float(torch.nn.functional.cross_entropy(logits, y[s:s + 1])))
                prog.unload()
            ref[c] = np.mean(losses)
    f = engine.var(ddof=1) / ref.var(ddof=1)
    p_f = 2 * min(stats.f.cdf(f, n - 1, n - 1), stats.f.sf(f, n - 1, n - 1))
    assert p_f > ALPHA, f
    assert stats.ttest_ind(engine, ref, equal_var=False).pvalue > ALPHA


@pytest.mark.parametrize("mapping", [av.DifferentialMapping(), av.OffsetMapping(symmetric=False)],
                         ids=lambda m: m.kind)
def test_grouped_and_same_padded_convolutions_run_per_mvm(mapping):
    """Grouped convolutions (block-diagonal rows) and padding="same": without noise the per-MVM path is the network;
    with read noise the result is batch-size invariant."""
    with torch.random.fork_rng():
        torch.manual_seed(3)
        net = nn.Sequential(nn.Conv2d(4, 6, 3, padding="same", groups=2), nn.ReLU(), nn.Conv2d(6, 6, 2, groups=3),
                            nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 4)).eval()
    x, y = make_data(n=9, shape=(4, 5, 5), n_classes=4)
    prog = av.prepare(net, av.HardwareSpec(mapping=mapping))
    prog.load(prog.g0[None], B=9, mvm_noise=SampleNoise(np.random.SeedSequence(0), [0]))
    prog.set_batch(9, 0, 0)
    with torch.no_grad():
        torch.testing.assert_close(prog.module(x), net(x), atol=1e-5, rtol=1e-5)
    spec = av.HardwareSpec(mapping=mapping, effects=(av.ReadNoise(sigma=0.05),))
    a = _run(net, spec, (x, y), n_instances=3, seed=1)
    b = _run(net, spec, (x, y), n_instances=3, seed=1, samples_per_batch=4)
    np.testing.assert_array_equal(a.correct_count.values, b.correct_count.values)
    np.testing.assert_allclose(a.loss.values, b.loss.values, rtol=2e-5, atol=1e-6)


def test_threaded_fills_and_reused_buffers_give_the_same_normals(monkeypatch):
    """Rows drawn by several threads, and buffers reused from a larger call, change no value: the same normals as
    single-threaded fresh fills, for shapes that shrink and grow between calls."""
    def draws():
        sr.release_workspace()
        s = SampleNoise(np.random.SeedSequence(5), np.arange(6))
        return [s.normal(2, "read", first, n, per) for first, n, per in [(0, 9, 300), (4, 3, 13), (1, 20, 700)]]

    monkeypatch.setattr(sr, "THREADED_WORDS", 1 << 62)       # one thread, fresh buffers for every call
    monkeypatch.setattr(sr, "WORKSPACE", sr.Workspace())
    fresh = []
    for first, n, per in [(0, 9, 300), (4, 3, 13), (1, 20, 700)]:
        sr.release_workspace()
        fresh.append(SampleNoise(np.random.SeedSequence(5), np.arange(6)).normal(2, "read", first, n, per))
    monkeypatch.setattr(sr, "THREADED_WORDS", 1)              # every fill threaded, buffers reused
    again = draws()
    assert all(torch.equal(a, b) for a, b in zip(fresh, again))
    s = SampleNoise(np.random.SeedSequence(5), np.arange(6))
    scratch = [s.normal(2, "read", first, n, per, scratch=True).clone()
               for first, n, per in [(0, 9, 300), (4, 3, 13), (1, 20, 700)]]
    assert all(torch.equal(a, b) for a, b in zip(fresh, scratch))
    assert sr.WORKSPACE.floats[0].numel() >= 6 * 20 * 352    # kept after the largest call


def test_the_engine_frees_the_per_mvm_buffers_after_a_run():
    net, data = make_mlp(sizes=(8, 16, 4)), make_data(n=10, n_classes=4)
    spec = av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.05), av.ReadNoise(sigma=0.02)))
    av.sweep(net, spec, data, n_instances=3, progress=False)
    assert sr.WORKSPACE.floats == [None] * 5
