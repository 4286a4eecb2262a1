"""Back ends of the analog layer: how K chips' stacked weights are applied to activations.

A kernel is chosen once per program (:func:`select_kernel`, by device; or given to
:func:`anvm_stats.analog.prepare`) and every analog layer of the program uses it. All kernels compute the same
products (they agree to round-off); each keeps its results independent of how many chips run together.

- :class:`GenericKernel`: batched GEMMs for linear layers (``W x^T`` for layers with few outputs), grouped
  convolutions (one convolution per chip for large activations). Any device.
- :class:`OneDNNKernel`: CPU; linear layers as oneDNN 1x1 convolutions (one per chip, or one grouped call over
  sample-major activations, :attr:`Kernel.sample_major`).
- :class:`CudaFusedKernel`: CUDA; hidden linear layers add their bias and ReLU in one fused pass
  (:mod:`anvm_stats.analog.fused`); linear layers of chips affine in their draws run programming, GEMM, bias and
  ReLU as one kernel, and three-layer MLPs of such chips as one kernel for the whole network
  (:mod:`anvm_stats.analog.affine_gemm`, :mod:`anvm_stats.analog.chain`).

Measurements behind these choices: ``reports/bench/README.md`` ("Design measurements").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .affine_gemm import affine_linear as fused_affine_linear, affine_mlp3 as fused_affine_mlp3
from .fused import bias_relu_

Tensor = torch.Tensor
CONV = {"conv1d": F.conv1d, "conv2d": F.conv2d, "conv3d": F.conv3d}


def _channels_last(x: Tensor) -> bool:
    """``x`` is a 4-d channels-last (NHWC-strided) tensor that is not also plainly contiguous."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


@dataclass(frozen=True)
class GenericKernel:
    """Batched GEMMs and grouped convolutions (any device).

    Parameters
    ----------
    narrow_outputs : int
        Linear layers with at most this many outputs (and a batch of at least 8x as many samples) compute
        ``W x^T`` (``[K, O, B]``) instead of ``x W^T`` (a GEMM with so few columns runs far below the machine's
        rate); 0 turns this off.
    conv_loop_elements : int
        Per-chip input elements (batch included) from which convolutions run one chip at a time instead of one
        K-group convolution.
    """

    narrow_outputs: int = 16
    conv_loop_elements: int = 1 << 17

    #: may activations be folded sample-major (``[B*K, ...]``) for linear-only programs
    sample_major = False
    #: do hidden linear layers fuse their bias and ReLU (:meth:`bias_relu`)
    fuses_bias_relu = False

    @property
    def name(self) -> str:
        return type(self).__name__

    # ------------------------------------------------------------------ linear
    def narrow(self, O: int, B: int, shared: bool, mode: str) -> bool:
        """Whether a linear layer of ``O`` outputs on ``B`` samples takes the ``W x^T`` path."""
        return not shared and O <= self.narrow_outputs and B >= 8 * O and mode == "weights"

    def linear(self, x: Tensor, w: Tensor, bias: Tensor | None, *, shared: bool, K: int, B: int,
               instances: Callable[[Tensor], Tensor], sample_major: bool, mode: str) -> Tensor:
        """``x_k @ w[k]^T + bias[k]`` for every chip ``k`` as ``[K, B, O]`` (possibly a strided view).

        ``x``: ``[B, in]`` (``shared``) or the folded ``[K*B, in]``; ``instances`` views a folded tensor as
        ``[K, B, ...]``."""
        narrow = self.narrow(w.shape[1], B, shared, mode)
        x3 = x.expand(K, *x.shape) if shared else instances(x)   # shared input: broadcast, no copy
        if narrow and not sample_major:
            return narrow_output(x3, w, bias)
        wt = w.transpose(1, 2)
        return torch.bmm(x3, wt) if bias is None else torch.baddbmm(bias.unsqueeze(1), x3, wt)

    def token_linear(self, x: Tensor, w: Tensor, bias: Tensor | None, *, shared: bool, K: int, B: int,
                     instances: Callable[[Tensor], Tensor], sample_major: bool, mode: str) -> Tensor:
        """:meth:`linear` of a layer applied token by token (``B`` rows = samples x tokens per chip): batched
        GEMMs in every kernel (for these tall inputs they beat oneDNN's per-chip 1x1 convolutions, and the
        sample-major fold would need a transpose per layer; ``reports/bench/README.md``)."""
        return GenericKernel.linear(self, x, w, bias, shared=shared, K=K, B=B, instances=instances,
                                    sample_major=sample_major, mode=mode)

    # ------------------------------------------------------------------ convolution
    def conv(self, op: str, x: Tensor, w: Tensor, bias: Tensor | None, *, shared: bool, K: int, B: int,
             kernel: tuple, groups: int, stride, padding, dilation) -> Tensor:
        """Convolution of every chip's weights ``w`` ``[K, O, in]`` over ``x``; ``[K, B, O, *spatial]``."""
        conv = CONV[op]
        O = w.shape[1]
        kw = dict(stride=stride, padding=padding, dilation=dilation)
        if x[0].numel() * B >= self.conv_loop_elements:
            # large activations: one ordinary convolution per chip, no transposes
            xv = x if shared else x.view(K, B, *x.shape[1:])
            wv = w.view(K, O, -1, *kernel)
            if K == 1:
                y = conv(x if shared else xv[0], wv[0], None if bias is None else bias[0], groups=groups, **kw)
                return y.unsqueeze(0)
            # each chip's output goes into its rows of one tensor laid out like the input (channels-last
            # activations stay channels-last)
            fmt = torch.channels_last if _channels_last(x) else torch.contiguous_format
            out = None
            for k in range(K):
                yk = conv(xv if shared else xv[k], wv[k], None if bias is None else bias[k], groups=groups, **kw)
                if out is None:
                    out = torch.empty((K * B, *yk.shape[1:]), dtype=yk.dtype, device=yk.device, memory_format=fmt)
                out[k * B:(k + 1) * B].copy_(yk)
            return out.view(K, B, *out.shape[1:])
        if K == 1 and x.device.type == "cpu":
            # a grouped convolution of one group is a plain one, another kernel with other round-off: run a
            # single chip as a batch of two (as narrow_output does) so results do not depend on the chunking
            x2 = x if shared else torch.cat([x, x])
            b2 = None if bias is None else bias.repeat(2, 1)
            return self.conv(op, x2, w.repeat(2, 1, 1), b2, shared=shared, K=2, B=B, kernel=kernel, groups=groups,
                             **kw)[:1]
        wk = w.reshape(K * O, -1, *kernel)
        bk = None if bias is None else bias.reshape(K * O)
        if shared and groups == 1:
            y = conv(x, wk, bk, groups=1, **kw)
        else:
            if shared:
                x = x.unsqueeze(0).expand(K, *x.shape).reshape(K * B, *x.shape[1:])
            xs = x.view(K, B, *x.shape[1:]).transpose(0, 1).reshape(B, K * x.shape[1], *x.shape[2:])
            y = conv(xs, wk, bk, groups=K * groups, **kw)
        return y.view(B, K, O, *y.shape[2:]).transpose(0, 1)

    def bias_relu(self, y: Tensor, bias: Tensor) -> Tensor:
        """``relu(y + bias[k])`` in place on ``[K, B, O]`` (only called when :attr:`fuses_bias_relu`)."""
        raise NotImplementedError(f"{self.name} does not fuse bias and ReLU")

    def affine_linear(self, x: Tensor, w0: Tensor, coef: Tensor, z: Tensor, bias: Tensor | None, *, shared: bool,
                      K: int, B: int, relu: bool) -> Tensor | None:
        """A linear layer of affine chips (``W = w0 + coef * z``) in one fused call, ``[K, B, O]`` with bias and
        (``relu``) ReLU applied; None: this kernel has no such call (the caller programs the weights and runs
        :meth:`linear`)."""
        return None

    def affine_mlp3(self, x: Tensor, layers: list[tuple], *, shared: bool, K: int, B: int) -> Tensor | None:
        """A three-layer ReLU MLP of affine chips in one call (``layers``: ``(w0, coef, z, bias)`` per layer),
        ``[K, B, out]``; None: this kernel has no such call (the network runs layer by layer)."""
        return None


@dataclass(frozen=True)
class OneDNNKernel(GenericKernel):
    """CPU: linear layers through oneDNN 1x1 convolutions (:func:`onednn_linear`), convolutions as the generic
    kernel. oneDNN picks its kernel from the call's shape and thread count: every call of a run has the same shape
    (sample-major forwards hold a fixed number of chips, :func:`anvm_stats.chunking.instances_per_forward`), so
    results are independent of the chunking (not of the thread count)."""

    sample_major = True

    def linear(self, x, w, bias, *, shared, K, B, instances, sample_major, mode):
        narrow = self.narrow(w.shape[1], B, shared, mode)
        if sample_major or not narrow:
            return onednn_linear(x, w, bias, shared, K, B, sample_major, narrow)
        return super().linear(x, w, bias, shared=shared, K=K, B=B, instances=instances, sample_major=sample_major,
                              mode=mode)


@dataclass(frozen=True)
class CudaFusedKernel(GenericKernel):
    """CUDA: the generic kernel, with the bias and ReLU of hidden linear layers applied in one fused pass, and
    linear layers of affine chips programmed, multiplied, biased and clamped in one Triton kernel
    (:mod:`anvm_stats.analog.affine_gemm`)."""

    fuses_bias_relu = True

    def bias_relu(self, y: Tensor, bias: Tensor) -> Tensor:
        return bias_relu_(y, bias)

    def affine_linear(self, x, w0, coef, z, bias, *, shared, K, B, relu):
        return fused_affine_linear(x, w0, coef, z, bias, shared=shared, K=K, B=B, relu=relu)

    def affine_mlp3(self, x, layers, *, shared, K, B):
        return fused_affine_mlp3(x, layers, shared=shared, K=K, B=B)


#: the kernels by name
KERNELS = {"generic": GenericKernel, "onednn": OneDNNKernel, "cuda_fused": CudaFusedKernel}


def select_kernel(device: torch.device | str) -> GenericKernel:
    """The kernel of a program on ``device``: oneDNN on CPU, fused on CUDA, generic elsewhere."""
    kind = torch.device(device).type
    if kind == "cpu":
        return OneDNNKernel()
    if kind == "cuda":
        return CudaFusedKernel()
    return GenericKernel()


def onednn_linear(x: Tensor, w: Tensor, bias: Tensor | None, shared: bool, K: int, B: int,
                  sample_major: bool = False, narrow: bool = False) -> Tensor:
    """``x_k @ w[k]^T + bias[k]`` for every chip ``k``, as ``[K, B, O]`` (possibly a strided view).

    The ``B`` samples are the positions of a channels-last ``[1, C, B, 1]`` image. Instance-major activations
    (``[K*B, in]``): one 1x1 convolution per chip (no copies in; each output lands in its rows). Sample-major
    activations (``[B*K, in]``): one grouped 1x1 convolution, group ``k`` holding chip ``k`` (a shared input: one
    convolution with ``K * O`` outputs), with no copies at all and the output sample-major too; ``narrow`` (few
    outputs): a batched ``W x^T`` reading the sample-major inputs in place."""
    O, n_in = w.shape[1], w.shape[2]
    if sample_major and narrow:
        xt = x.reshape(B, K, n_in).permute(1, 2, 0)                                 # [K, in, B], no copy
        y = torch.bmm(w, xt) if bias is None else torch.baddbmm(bias.unsqueeze(2), w, xt)
        return y.transpose(1, 2)
    if sample_major:
        wg = w.reshape(K * O, n_in, 1, 1)
        bg = None if bias is None else bias.reshape(K * O)
        if shared:
            y = F.conv2d(x.reshape(1, B, 1, n_in).permute(0, 3, 1, 2), wg, bg)
        else:
            y = F.conv2d(x.reshape(1, B, 1, K * n_in).permute(0, 3, 1, 2), wg, bg, groups=K)
        return y.permute(0, 2, 3, 1).reshape(B, K, O).transpose(0, 1)
    xv = x if shared else x.reshape(K, B, n_in)
    out = torch.empty((K, B, O), dtype=w.dtype, device=w.device)
    for k in range(K):
        xk = (xv if shared else xv[k]).reshape(1, B, 1, n_in).permute(0, 3, 1, 2)
        yk = F.conv2d(xk, w[k].reshape(O, n_in, 1, 1), None if bias is None else bias[k])
        out[k].copy_(yk.permute(0, 2, 3, 1).reshape(B, O))
    return out


def narrow_output(x3: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
    """``x3 @ w^T (+ bias)`` as ``[K, B, O]`` (a transposed view), computed as ``w @ x3^T``.

    A batched GEMM of one matrix can take another kernel than the same matrix inside a batch (round-off
    differs), so a single chip is computed as a batch of two: results never depend on ``K``."""
    K = w.shape[0]
    if K == 1:     # a real batch of two (an expanded one takes yet another path)
        x3, w = x3.repeat(2, 1, 1), w.repeat(2, 1, 1)
        bias = None if bias is None else bias.repeat(2, 1)
    xt = x3.transpose(1, 2)
    y = torch.bmm(w, xt) if bias is None else torch.baddbmm(bias.unsqueeze(2), w, xt)
    return y[:K].transpose(1, 2)
