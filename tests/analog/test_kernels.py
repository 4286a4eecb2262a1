"""anvm_stats.analog.kernels: the kernel is chosen once per program, every kernel gives the same logits, and the
CUDA fused epilogue agrees with the generic path (on a GPU only)."""

import numpy as np
import pytest
import torch

import anvm_stats as av
from anvm_stats.errors import ConfigError
from tests.helpers import cuda_data, CUDA_SPECS, logits, make_data, make_mlp


def test_kernels_are_chosen_once_per_program_and_agree():
    """A program runs the kernel of its device (oneDNN on CPU) unless given one; every kernel gives the same
    logits to round-off; moving a program picks the new device's kernel; a non-kernel is refused."""
    from anvm_stats.analog.kernels import CudaFusedKernel, GenericKernel, OneDNNKernel, select_kernel

    net = make_mlp()
    x, _ = make_data(n=12)
    spec = av.devices.paper1(0.1)
    prog = av.prepare(net, spec)
    assert isinstance(prog.kernel, OneDNNKernel) and prog.sample_major_ok
    assert all(m.kernel is prog.kernel for m in prog.analog_modules())
    assert isinstance(select_kernel("cuda"), CudaFusedKernel) and type(select_kernel("meta")) is GenericKernel
    g = av.ChipSampler(prog, seed=1).chips(range(3))
    ref = logits(prog, g, x)
    generic = av.prepare(net, spec, kernel=GenericKernel())
    assert not generic.sample_major_ok
    torch.testing.assert_close(logits(generic, g, x), ref, rtol=1e-5, atol=1e-5)
    generic.use_kernel(OneDNNKernel())
    assert torch.equal(logits(generic, g, x), ref)
    assert isinstance(generic.to("cpu").kernel, OneDNNKernel)
    with pytest.raises(ConfigError, match="kernel"):
        av.prepare(net, spec, kernel="onednn")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.usefixtures("exact_float32")
def test_engine_with_and_without_the_fused_epilogue_agree():
    from anvm_stats.analog.kernels import CudaFusedKernel, GenericKernel

    net, (x, y) = make_mlp(), cuda_data("mlp")
    kw = dict(n_instances=8, seed=2, progress=False, device="cuda")
    program = av.prepare(net, CUDA_SPECS["paper1"], calibration_data=(x, y), device="cuda", fuse_relu=True)
    assert isinstance(program.kernel, CudaFusedKernel)
    fused_run = av.evaluate(net, CUDA_SPECS["paper1"], (x, y), program=program, **kw)
    program.use_kernel(GenericKernel())
    plain_run = av.evaluate(net, CUDA_SPECS["paper1"], (x, y), program=program, **kw)
    np.testing.assert_allclose(fused_run.loss.values, plain_run.loss.values, rtol=1e-5, atol=1e-6)
