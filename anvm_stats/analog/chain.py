"""A network that is nothing but a chain of analog linear layers, run as one fused call.

A three-layer ReLU MLP of affine chips (:mod:`anvm_stats.analog.affine`) can run as one kernel that never writes
an activation to memory (:func:`anvm_stats.analog.affine_gemm.affine_mlp3`). That is only the network's function
when its forward is exactly ``layer3(layer2(layer1(x)))``: :func:`probe_chain` checks this once per input shape
by watching one nominal forward (each analog layer called once, in order; layer 1 reads the network input, every
other layer reads its predecessor's output, and the network returns the last one, all unchanged: same storage,
same size, not modified in place). Anything else a forward does between the layers (a scaling, an un-fused
activation, a residual) fails the check and the network runs layer by layer, as do chips that are not affine, read
noise, DAC quantisation, reduced precision, hooks on analog layers and kernels without the fused call.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor
#: ReLU after each layer of a fusable chain (the kernel's fixed pattern)
CHAIN_RELU = (True, True, False)


def _same(a: Tensor, version: int, b: Tensor) -> bool:
    """``a`` (at ``version``) holds exactly ``b``'s values: one storage, size and start, not written since."""
    return (isinstance(a, Tensor) and isinstance(b, Tensor) and a.data_ptr() == b.data_ptr()
            and a.numel() == b.numel() and a._version == version)


@torch.no_grad()
def probe_chain(program, x: Tensor) -> bool:
    """Whether ``program``'s forward on inputs shaped like ``x`` is a plain chain of its analog linear layers
    (module docstring), from one nominal forward of 2 instances on (at most) 2 samples."""
    mods = program.analog_modules()
    if (x.shape[0] == 0 or len(mods) != len(CHAIN_RELU) or any(p.op != "linear" or p.tiles is not None
                                                                for p in program.plans)
            or (program.fold is not None and program.fold.active)):
        return False
    calls: list = []

    def pre(m, args):
        calls.append([m, args[0] if args else None, args[0]._version if args and isinstance(args[0], Tensor)
                      else -1, None, -1])

    def post(m, args, out):
        calls[-1][3:] = [out, out._version if isinstance(out, Tensor) else -1]

    xs = x[:2]
    version = xs._version
    handles = [h for m in mods for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    program.load(program.g0[None].repeat(2, 1), B=xs.shape[0])
    try:
        out = program.module(xs)
    finally:
        program.unload()
        for h in handles:
            h.remove()
    if [c[0] for c in calls] != list(mods) or not _same(calls[0][1], calls[0][2], xs) or xs._version != version:
        return False
    if any(not _same(c[1], c[2], prev[3]) or c[2] != prev[4] for prev, c in zip(calls, calls[1:])):
        return False
    return _same(out, calls[-1][4], calls[-1][3])


def run_chain(program, x: Tensor) -> Tensor | None:
    """The network's output ``[K*B, out]`` on ``x`` (``[B, ...]``, the program input) from one fused call of the
    program's kernel, or None where that does not apply (module docstring); the caller then runs the network."""
    mods = program.analog_modules()
    if len(mods) != len(CHAIN_RELU) or not x.is_contiguous() or torch.is_grad_enabled():
        return None
    layers, K = [], None
    for m, relu in zip(mods, CHAIN_RELU):
        rt, p = m.runtime, m.plan
        lazy = None if rt is None else rt.affine
        if (lazy is None or rt.mode != "weights" or rt.sample_major or rt.dac_levels is not None
                or (rt.read_var is not None and rt.mvm_noise is not None) or len(lazy.coef) != 1
                or lazy.b0 is None or p.digital_bias is not None or m.relu_after != relu
                or m._forward_hooks or m._forward_pre_hooks):
            return None
        layers.append((lazy.w0, lazy.coef[0], lazy.zw[0], lazy.bias_values(p.bias_scale)))
        K = lazy.K
    B = x.shape[0]
    y = program.kernel.affine_mlp3(x.reshape(B, -1), layers, shared=True, K=K, B=B)
    return None if y is None else y.view(K * B, y.shape[-1])
