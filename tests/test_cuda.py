"""The engine on a CUDA device (skipped without one; run on a lent GPU, see reports/bench/README.md): chunk
invariance, the same chips as the CPU engine when both draw from counters, and every effect path running."""

import numpy as np
import pytest
import torch

import anvm_stats as av
from tests.helpers import make_data, make_mlp, make_resnet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SPECS = {
    "paper1": av.devices.paper1(0.1),
    "faults_adc": av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.05), av.StuckAt(p_off=0.02, p_on=0.01)),
                                  periphery=av.Periphery(dac=av.Quantizer(bits=6), adc=av.Quantizer(bits=8))),
    "read_noise": av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.05), av.ReadNoise(sigma=0.05)),
                                  periphery=av.Periphery(output_noise=0.01)),
}


@pytest.fixture(autouse=True)
def exact_float32():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _data(net_kind):
    if net_kind == "resnet_large":     # 4 x 48 x 48 activations: runs channels-last
        return make_data(n=6, shape=(1, 48, 48))
    return make_data(n=40) if net_kind == "mlp" else make_data(n=12, shape=(1, 8, 8))


@pytest.mark.parametrize("net_kind", ["mlp", "resnet", "resnet_large"])
@pytest.mark.parametrize("spec_name", list(SPECS))
def test_cuda_runs_are_chunk_invariant_and_use_counter_draws(net_kind, spec_name):
    net = make_mlp() if net_kind == "mlp" else make_resnet()
    x, y = _data(net_kind)
    kw = dict(grid={"noise_level": [0.05, 0.15]}, n_instances=9, seed=3, progress=False, device="cuda")
    ds = av.sweep(net, SPECS[spec_name], (x, y), **kw)
    assert ds.attrs["device"].startswith("cuda") and ds.attrs["sampler"] == "philox4x32-counter"
    again = av.sweep(net, SPECS[spec_name], (x, y), options=av.RunOptions(instances_per_chunk=4), **kw)
    np.testing.assert_array_equal(again.accuracy.values, ds.accuracy.values)
    assert np.isfinite(ds.loss.values).all()


@pytest.mark.parametrize("spec_name", ["paper1", "read_noise"])
@pytest.mark.parametrize("net_kind", ["mlp", "resnet", "resnet_large"])
def test_cuda_and_cpu_engines_evaluate_the_same_chips(net_kind, spec_name):
    """With counter draws on both devices, the chips (and their read noise) are the same: losses agree to
    float32 round-off."""
    net = make_mlp() if net_kind == "mlp" else make_resnet()
    x, y = _data(net_kind)
    kw = dict(n_instances=6, seed=1, progress=False, options=av.RunOptions(sampler="counter"))
    spec = SPECS[spec_name]
    gpu = av.evaluate(net, spec, (x, y), device="cuda", **kw)
    cpu = av.evaluate(net, spec, (x, y), device="cpu", **kw)
    np.testing.assert_allclose(gpu.loss.values, cpu.loss.values, rtol=2e-4, atol=1e-5)
    # accuracies may differ only where a logit margin is at round-off level: at most one sample per chip
    assert np.abs(gpu.correct_count.values - cpu.correct_count.values).max() <= 1
    if net_kind == "resnet_large":
        program = av.prepare(net, spec, calibration_data=x.cuda(), device="cuda")
        program.input(x.cuda())
        assert program.channels_last


@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 360, 256)])
def test_fused_bias_relu_matches_add_and_relu(shape):
    from anvm_stats.analog import fused

    g = torch.Generator(device="cuda").manual_seed(0)
    y = torch.randn(shape, device="cuda", generator=g)
    b = torch.randn(shape[0], shape[2], device="cuda", generator=g)
    y[0, 0, 0] = float("nan")
    want = torch.relu(y + b[:, None, :])
    got = fused.bias_relu_(y.clone(), b)
    assert not fused._BROKEN, fused._BROKEN
    assert torch.equal(got.nan_to_num(-1.0), want.nan_to_num(-1.0))


def test_engine_with_and_without_the_fused_epilogue_agree():
    from anvm_stats.analog.kernels import CudaFusedKernel, GenericKernel

    net, (x, y) = make_mlp(), _data("mlp")
    kw = dict(n_instances=8, seed=2, progress=False, device="cuda")
    program = av.prepare(net, SPECS["paper1"], calibration_data=(x, y), device="cuda", fuse_relu=True)
    assert isinstance(program.kernel, CudaFusedKernel)
    fused_run = av.evaluate(net, SPECS["paper1"], (x, y), program=program, **kw)
    program.use_kernel(GenericKernel())
    plain_run = av.evaluate(net, SPECS["paper1"], (x, y), program=program, **kw)
    np.testing.assert_allclose(fused_run.loss.values, plain_run.loss.values, rtol=1e-5, atol=1e-6)
