"""Grouped forward passes for split-mode HA-SGD: group g of the mini-batch runs with its own weight perturbation.

``perturbed_forward(model, pert, targets, sizes)`` temporarily routes every perturbed layer's forward through a
grouped implementation (one GEMM / grouped convolution where the groups are equal), so the gradient of each group's
loss is taken at ``w + dw_g``. A layer paired with a BatchNorm (``PerturbTarget.bn``) runs clean and its noise,
drawn on the folded layer, is added after the BatchNorm: ``BN(W x) + dW'_g x + db'_g``, as the folded chip computes
``k W x + b' + dW' x + db'`` (:mod:`anvm_stats.training.perturb`).
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Iterator, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .perturb import Perturbation, PerturbTarget

Tensor = torch.Tensor


def group_sizes(n: int, groups: int) -> list[int]:
    """Sizes of ``groups`` contiguous groups of a batch of ``n`` (the first ``n % groups`` one larger)."""
    base, extra = divmod(n, groups)
    return [base + (i < extra) for i in range(groups)]


def _linear_forward(m: nn.Linear, dw: Tensor, db: Tensor | None, sizes: list[int], base: bool = True):
    """Group g: ``x_g (W + dW_g)^T + b + db_g``. With equal groups computed as ``x W^T + b`` (one GEMM, whose
    weight gradient needs no ``[G, out, in]`` buffer) plus the batched term ``x_g dW_g^T + db_g``. ``base=False``:
    the perturbation term ``x_g dW_g^T`` alone (no weight, no bias)."""
    G = len(sizes)

    def forward(x: Tensor) -> Tensor:
        if not base:
            if len(set(sizes)) == 1 and x.dim() >= 2:
                return torch.bmm(x.reshape(G, -1, x.shape[-1]), dw.transpose(1, 2)).reshape(*x.shape[:-1],
                                                                                           dw.shape[1])
            return torch.cat([nn.functional.linear(p, dw[i]) for i, p in enumerate(torch.split(x, sizes))])
        if G == 1:
            return nn.functional.linear(x, m.weight + dw[0], None if m.bias is None else
                                        (m.bias + db[0] if db is not None else m.bias))
        if len(set(sizes)) == 1 and x.dim() >= 2:
            xg = x.reshape(G, -1, x.shape[-1])
            extra = torch.bmm(xg, dw.transpose(1, 2)) if db is None else torch.baddbmm(db[:, None, :], xg,
                                                                                     dw.transpose(1, 2))
            return nn.functional.linear(x, m.weight, m.bias) + extra.reshape(*x.shape[:-1], dw.shape[1])
        wg = m.weight + dw
        bg = None if m.bias is None else (m.bias + db if db is not None else m.bias.expand(G, -1))
        return torch.cat([nn.functional.linear(p, wg[i], None if bg is None else bg[i])
                          for i, p in enumerate(torch.split(x, sizes))])
    return forward


def _conv_forward(m: nn.Module, dw: Tensor, db: Tensor | None, sizes: list[int], base: bool = True):
    """Group g: ``conv(x_g, W + dW_g) + b + db_g``; equal groups run as ONE grouped convolution (``groups = G x
    m.groups``, the groups' samples side by side in the channel dim), otherwise one call per group.
    ``base=False``: the perturbation term ``conv(x_g, dW_g)`` alone (no weight, no bias)."""
    G = len(sizes)
    conv = nn.functional.conv1d if isinstance(m, nn.Conv1d) else nn.functional.conv2d

    def forward(x: Tensor) -> Tensor:
        wg = m.weight + dw if base else dw                               # [G, out, in/groups, *k]
        bg = None if (m.bias is None or not base) else (m.bias + db if db is not None else m.bias.expand(G, -1))
        if G == 1:
            return m._conv_forward(x, wg[0], None if bg is None else bg[0])
        if len(set(sizes)) == 1 and m.padding_mode == "zeros":
            b, O = sizes[0], wg.shape[1]
            xg = x.reshape(G, b, *x.shape[1:]).transpose(0, 1).reshape(b, G * x.shape[1], *x.shape[2:])
            y = conv(xg, wg.reshape(G * O, *wg.shape[2:]), None if bg is None else bg.reshape(-1), m.stride,
                     m.padding, m.dilation, G * m.groups)
            return y.reshape(b, G, O, *y.shape[2:]).transpose(0, 1).reshape(G * b, O, *y.shape[2:])
        return torch.cat([m._conv_forward(p, wg[i], None if bg is None else bg[i])
                          for i, p in enumerate(torch.split(x, sizes))])
    return forward


def _shift_forward(m: nn.Module, dshift: Tensor | None, sizes: list[int], pending: list):
    """BatchNorm whose output gets the folded layer's noise: the weight term its layer left in ``pending`` and a
    per-group shift ``dshift_g`` (the folded bias perturbation; None: none)."""
    original = type(m).forward

    def forward(x: Tensor) -> Tensor:
        y = original(m, x)
        if pending:
            y = y + pending.pop()
        if dshift is None:
            return y
        per = dshift[0].expand(x.shape[0], -1) if len(sizes) == 1 else torch.repeat_interleave(
            dshift, torch.tensor(sizes, device=dshift.device), dim=0)
        return y + per.reshape(*per.shape, *([1] * (y.dim() - 2)))
    return forward


def _clean_forward(m: nn.Module, noise, pending: list):
    """The layer's own forward, leaving ``noise(x)`` in ``pending`` for the BatchNorm that follows it."""
    original = type(m).forward

    def forward(x: Tensor) -> Tensor:
        pending.append(noise(x))
        return original(m, x)
    return forward


def _split(t, sizes: list[int], dim: int):
    return [None] * len(sizes) if t is None else list(torch.split(t, sizes, dim=dim))


def _composite_forward(m: nn.Module, deltas: dict[str, Tensor], sizes: list[int]):
    """Group g of a composite layer (attention, recurrent) at parameters ``p + deltas[p][g]`` (names relative to
    ``m``): the layer's own forward per group through :func:`torch.func.functional_call`, inputs split along
    their batch dim and outputs concatenated (one call per group)."""
    from torch.func import functional_call

    params = dict(m.named_parameters())
    attention = isinstance(m, nn.MultiheadAttention)
    bdim = 0 if m.batch_first else 1

    def at(g: int) -> dict:
        return {k: params[k] + d[g] for k, d in deltas.items()}

    signature = inspect.signature(type(m).forward)

    def forward(*args, **kwargs):
        bound = signature.bind(m, *args, **kwargs).arguments       # positional options become keywords
        bound.pop("self")
        kwargs = dict(bound)
        del m.forward                     # the class forward for the nested calls
        try:
            if attention:
                q, k, v = kwargs.pop("query"), kwargs.pop("key"), kwargs.pop("value")
                kpm = kwargs.pop("key_padding_mask", None)
                mask = kwargs.pop("attn_mask", None)
                qs, ks, vs = (_split(t, sizes, bdim) for t in (q, k, v))
                kpms = _split(kpm, sizes, 0)
                masks = [mask] * len(sizes) if mask is None or mask.dim() == 2 else \
                    _split(mask, [n * m.num_heads for n in sizes], 0)
                outs = [functional_call(m, at(g), (qs[g], ks[g], vs[g]),
                                        dict(kwargs, key_padding_mask=kpms[g], attn_mask=masks[g]))
                        for g in range(len(sizes))]
                weights = None if outs[0][1] is None else torch.cat([o[1] for o in outs])
                return torch.cat([o[0] for o in outs], dim=bdim), weights
            x, hx = kwargs.pop("input"), kwargs.pop("hx", None)
            xs = _split(x, sizes, bdim)
            if isinstance(hx, tuple):
                hxs = list(zip(*(_split(h, sizes, 1) for h in hx)))
            else:
                hxs = _split(hx, sizes, 1)
            outs = [functional_call(m, at(g), (xs[g], hxs[g])) for g in range(len(sizes))]
            y = torch.cat([o[0] for o in outs], dim=bdim)
            h = outs[0][1]
            if isinstance(h, tuple):
                return y, tuple(torch.cat([o[1][i] for o in outs], dim=1) for i in range(len(h)))
            return y, torch.cat([o[1] for o in outs], dim=1)
        finally:
            m.forward = forward
    return forward


@contextlib.contextmanager
def perturbed_forward(model: nn.Module, pert: Perturbation, targets: Sequence[PerturbTarget],
                      sizes: Sequence[int]) -> Iterator[None]:
    """Within the block, ``model(x)`` runs sample group ``g`` (contiguous, ``sizes[g]`` samples, ``sum(sizes) ==
    x.shape[0]``) at the weights ``w + pert.deltas[.][g]``; gradients flow to ``w`` (taken at ``w + dw``).

    Implemented by temporarily overriding ``forward`` of each target module (and of a folded BatchNorm); hooks
    still run. Composite layers (attention, recurrent) run their own forward once per group at the perturbed
    parameters (:func:`torch.func.functional_call`). A target with a BatchNorm (``t.bn``) runs clean and its folded-domain noise ``dW'_g x + db'_g`` is
    added to the BatchNorm's output (the deltas of :func:`~anvm_stats.training.perturb.draw_perturbations`). With equal group sizes linear layers use one GEMM plus one batched GEMM and convolutions one
    grouped convolution; unequal groups (a last, short batch) one call per group. A
    noise-free ``pert`` leaves the model untouched (exactly the plain forward).
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) != pert.samples:
        raise ConfigError("sizes", sizes, f"{pert.samples} group sizes (one per draw)")
    if pert.is_zero:
        yield
        return
    patched = []
    try:
        for t in targets:
            m = model.get_submodule(t.name)
            if t.arrays:
                prefix = f"{t.name}."
                m.forward = _composite_forward(m, {k[len(prefix):]: d for k, d in pert.deltas.items()
                                                   if k.startswith(prefix)}, sizes)
                patched.append(m)
                continue
            dw = pert.deltas[f"{t.name}.weight"]
            db = pert.deltas.get(f"{t.name}.bias")
            fwd = _linear_forward if isinstance(m, nn.Linear) else _conv_forward
            if t.bn is None:
                m.forward = fwd(m, dw, db, sizes)
                patched.append(m)
                continue
            pending: list = []
            m.forward = _clean_forward(m, fwd(m, dw, None, sizes, base=False), pending)
            bn = model.get_submodule(t.bn)
            bn.forward = _shift_forward(bn, pert.deltas.get(f"{t.bn}.bias"), sizes, pending)
            patched += [m, bn]
        yield
    finally:
        for m in patched:
            del m.forward
