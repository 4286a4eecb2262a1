"""anvm_stats.analog.fused: the fused bias + ReLU epilogue equals add-then-ReLU (CPU fallback; CUDA on a GPU only)."""

import pytest
import torch


def test_fused_bias_relu_off_gpu_is_add_and_relu():
    from anvm_stats.analog.fused import bias_relu_

    g = torch.Generator().manual_seed(0)
    y, b = torch.randn(2, 4, 3, generator=g), torch.randn(2, 3, generator=g)
    assert torch.equal(bias_relu_(y.clone(), b), torch.relu(y + b[:, None, :]))
    with pytest.raises(ValueError, match="bias_relu_"):
        bias_relu_(y.clone(), torch.randn(3, 2))
    with pytest.raises(ValueError, match="bias_relu_"):
        bias_relu_(y.transpose(1, 2), b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.usefixtures("exact_float32")
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
