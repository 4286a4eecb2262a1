"""The digital parameter sets per-chip calibration adapts, each an :class:`Adapter` of forward hooks holding
per-instance tensors ``[K, ...]`` on the (copied) network of an analog program:

``column_affine`` / ``batchnorm``: :class:`AffineAdapter` (gain and offset per channel of each analog layer's
output, or of each unfolded BatchNorm's); ``sparse``: :class:`SparseAdapter` (a digital correction ``x~ @ D.T``
on a per-chip mask of crossbar weights, chosen at random or by sensitivity in :func:`make_adapter`).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..rng import Stream, instance_sequence
from .options import CalibrationOptions

Tensor = torch.Tensor
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


class Adapter:
    """Per-instance digital parameters hooked into ``program.module``; inactive hooks are the identity.

    Attributes
    ----------
    K : int
        Chips adapted together (the leading dim of every parameter).
    active : bool
        False: every hook passes its input through (the chips as programmed).
    """

    def __init__(self, program, K: int):
        self.program, self.K, self.active = program, K, True
        self._hooks = contextlib.ExitStack()       # removes every hook on remove()

    def _on(self) -> int | None:
        """The batch size B of the current forward, or None when the hooks must pass (inactive, or a forward
        of another number of instances, e.g. a probe of the nominal chip)."""
        rt = self.program.analog_modules()[0].runtime
        return rt.B if self.active and rt is not None and rt.K == self.K else None

    def parameters(self) -> list[Tensor]:
        """The per-instance parameters ``[K, ...]`` (what the optimiser adapts)."""
        raise NotImplementedError

    def initial(self) -> list[Tensor]:
        """The parameters' values before adaptation."""
        return self._init

    def shift(self) -> Tensor:
        """Per-instance ``max |p - p_initial|`` over all parameters, ``[K]``."""
        out = torch.zeros(self.K, dtype=torch.float64)
        for p, p0 in zip(self.parameters(), self.initial()):
            d = (p.detach() - p0).abs().reshape(self.K, -1).amax(1).double().cpu()
            out = torch.maximum(out, d)
        return out

    def remove(self) -> None:
        """Detach every hook (the program runs as before)."""
        self._hooks.close()


class AffineAdapter(Adapter):
    """Gain ``[K, C]`` and offset ``[K, C]`` on the channel dim (dim 1) of each target module's output."""

    def __init__(self, program, K: int, targets: list[nn.Module], channels: list[int]):
        super().__init__(program, K)
        dev = program.device
        self.gains = [torch.ones(K, c, device=dev, requires_grad=True) for c in channels]
        self.offsets = [torch.zeros(K, c, device=dev, requires_grad=True) for c in channels]
        self._init = [p.detach().clone() for p in self.parameters()]
        for m, a, c in zip(targets, self.gains, self.offsets):
            self._hooks.callback(m.register_forward_hook(self._hook(a, c)).remove)

    def parameters(self):
        return self.gains + self.offsets

    def _hook(self, gain: Tensor, offset: Tensor):
        def hook(module, inputs, y):
            K, B = self.K, self._on()
            if B is None:
                return None
            if y.shape[0] == B and K > 1:   # still shared across instances (before the first analog layer)
                y = y.unsqueeze(0).expand(K, *y.shape).reshape(K * B, *y.shape[1:])
            shape = (K, 1, y.shape[1]) + (1,) * (y.dim() - 2)
            out = y.view(K, -1, *y.shape[1:]) * gain.view(shape) + offset.view(shape)
            return out.reshape(y.shape)
        return hook


class SparseAdapter(Adapter):
    """Digital weight corrections ``D`` ``[K, out, in(+1)]`` (non-zero on a mask) added as ``x~ @ D.T``."""

    def __init__(self, program, K: int, restore: dict[str, Tensor], mask: dict[str, Tensor] | None):
        super().__init__(program, K)
        self.names = list(restore)
        self.mask = mask or {n: torch.ones_like(t) for n, t in restore.items()}
        self.deltas = [(restore[n] * self.mask[n]).detach().clone().requires_grad_(True) for n in self.names]
        self._init = [p.detach().clone() for p in self.deltas]
        for n, d in zip(self.names, self.deltas):
            m = program.module.get_submodule(n)
            self._hooks.callback(m.register_forward_hook(self._hook(m, n, d)).remove)

    def parameters(self):
        return self.deltas

    def _hook(self, m, name: str, delta: Tensor):
        p = m.plan

        def hook(module, inputs, y):
            K, B = self.K, self._on()
            if B is None:
                return None
            x = inputs[0]
            d = delta * self.mask[name]
            w, b = (d[..., :p.in_features], d[..., p.in_features] * p.bias_scale) \
                if p.bias_mode == "column" else (d, None)
            corr = m.matmul(x, w, b, x.shape[0] == B and K > 1, K, B)
            return y + corr.reshape(y.shape)
        return hook


def make_adapter(program, opts: CalibrationOptions, g: Tensor, idx, root, objective=None) -> Adapter:
    """The adapter of ``opts.params`` for chips ``g`` ``[K, P]`` with instance indices ``idx``.

    ``objective()`` (loss summed over instances) is needed for ``sparse_select="sensitivity"``."""
    K = g.shape[0]
    if opts.params == "column_affine":
        mods = program.analog_modules()
        return AffineAdapter(program, K, mods, [m.plan.out_features for m in mods])
    if opts.params == "batchnorm":
        bns = [m for m in program.module.modules() if isinstance(m, _BATCHNORMS)]
        if not bns:
            raise ConfigError("params", "batchnorm", "a model with BatchNorm left unfolded (a spec with "
                                                     "fold_batchnorm=False and a model holding BatchNorm layers)")
        return AffineAdapter(program, K, bns, [m.num_features for m in bns])
    with torch.no_grad():
        nominal = program.weights(program.g0[None])
        chip = program.weights(g)
    error = {n: nominal[n] - chip[n] for n in nominal}   # what restoring a weight digitally adds
    total = sum(t[0].numel() for t in error.values())
    k = max(1, int(round(opts.sparse_fraction * total)))
    if opts.sparse_select == "random":
        rows = []
        for i in idx:
            rng = np.random.default_rng(instance_sequence(root, int(i), Stream.CALIBRATE).spawn(1)[0])
            rows.append(torch.as_tensor(rng.choice(total, size=k, replace=False)))
        chosen = torch.stack(rows).to(g.device)
    else:
        probe = SparseAdapter(program, K, {n: torch.zeros_like(t) for n, t in error.items()}, None)
        try:
            grads = torch.autograd.grad(objective(), probe.deltas)
        finally:
            probe.remove()
        score = torch.cat([(e * gr).abs().reshape(K, -1) for e, gr in zip(error.values(), grads)], dim=1)
        chosen = torch.topk(score, k, dim=1).indices
    flat = torch.zeros(K, total, device=g.device)
    flat.scatter_(1, chosen, 1.0)
    mask, start = {}, 0
    for n, t in error.items():
        size = t[0].numel()
        mask[n] = flat[:, start:start + size].view_as(t)
        start += size
    return SparseAdapter(program, K, error, mask)
