"""``nn.MultiheadAttention`` on a chip: analog projections, digital attention.

The four weight matrices are analog arrays read token by token (:class:`~.layers.AnalogModule`): with
``kdim = vdim = embed_dim`` (torch's packed ``in_proj_weight``) the q, k and v projections are one ``3E x E`` array,
as a chip maps ``W_qkv``: self-attention reads it once per token and gets q, k and v from one MVM; cross-attention
reads it once per distinct input (query; key; value when it is another tensor), keeping the third it needs
(``step`` 0, 1, 2 of the layer's per-MVM noise). With other ``kdim``/``vdim`` they are three arrays (``q_proj``,
``k_proj``, ``v_proj``). The output projection is the ``E x E`` array ``out_proj``.

The products of two activations, ``Q K^T`` and ``softmax(.) V``, have no stored operand: they run digitally (in
float), as do the scaling, masks and softmax (dropout is off in evaluation). Masks follow torch's semantics
(boolean: True masks a position out; float: added to the scores); per-sample masks ``[B, ...]`` are repeated for
the K chip instances.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedLayerError
from .layers import AnalogModule

Tensor = torch.Tensor


def _float_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A boolean mask (True: masked out) as ``-inf``/0, a float mask as it is."""
    if mask is None or mask.is_floating_point():
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask.bool(), float("-inf"))


class AnalogMultiheadAttention(nn.Module):
    """Replacement for one ``nn.MultiheadAttention`` (see module docstring); the same forward signature.

    Parameters
    ----------
    source : nn.MultiheadAttention
    analog : list of AnalogModule
        Its crossbars in the order of :func:`~.selection.crossbars`: ``in_proj`` (or ``q_proj``, ``k_proj``,
        ``v_proj``), then ``out_proj``.
    """

    #: read by torch's transformer layers before their fused fast paths (which use the float weights): these
    #: values make nn.TransformerEncoderLayer run its module path, which calls this module
    in_proj_bias = None
    _qkv_same_embed_dim = False

    def __init__(self, source: nn.MultiheadAttention, analog: list[AnalogModule]):
        super().__init__()
        self.embed_dim, self.num_heads = source.embed_dim, source.num_heads
        self.head_dim = source.head_dim
        self.batch_first = source.batch_first
        self.packed = len(analog) == 2
        if self.packed:
            self.in_proj = analog[0]
        else:
            self.q_proj, self.k_proj, self.v_proj = analog[:3]
        self.out_proj = analog[-1]

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v ``[N, L or S, E]`` from batch-first inputs (see module docstring)."""
        E = self.embed_dim
        if not self.packed:
            return self.q_proj(query), self.k_proj(key), self.v_proj(value)
        if query is key and key is value:
            qkv = self.in_proj(query)
            return qkv[..., :E], qkv[..., E:2 * E], qkv[..., 2 * E:]
        q = self.in_proj(query)[..., :E]
        if key is value:
            kv = self.in_proj(key, step=1)
            return q, kv[..., E:2 * E], kv[..., 2 * E:]
        return q, self.in_proj(key, step=1)[..., E:2 * E], self.in_proj(value, step=2)[..., 2 * E:]

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        if query.dim() != 3:
            raise UnsupportedLayerError(f"analog attention {self.out_proj.plan.name.rsplit('.', 1)[0]!r}: "
                                        f"unbatched input {list(query.shape)}; it reads batched inputs")
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint (as nn.MultiheadAttention)")
        same_kv = key is value
        if not self.batch_first:             # [L, N, E] -> batch-first views
            qk_same = query is key
            query = query.transpose(0, 1)
            key = query if qk_same else key.transpose(0, 1)
            value = key if same_kv else value.transpose(0, 1)
        q, k, v = self._project(query, key, value)
        N, L, S, H, D = q.shape[0], q.shape[1], k.shape[1], self.num_heads, self.head_dim
        q = q.reshape(N, L, H, D).transpose(1, 2)
        k = k.reshape(N, S, H, D).transpose(1, 2)
        v = v.reshape(N, S, H, D).transpose(1, 2)
        mask = self._mask(attn_mask, key_padding_mask, N, L, S, q.dtype)
        if need_weights:
            scores = torch.matmul(q * (1.0 / math.sqrt(D)), k.transpose(-2, -1))
            if mask is not None:
                scores = scores + mask
            weights = torch.softmax(scores, dim=-1)
            out = torch.matmul(weights, v)
            weights = weights.mean(dim=1) if average_attn_weights else weights
        else:
            out, weights = F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None
        out = self.out_proj(out.transpose(1, 2).reshape(N, L, self.embed_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def _mask(self, attn_mask: Tensor | None, key_padding_mask: Tensor | None, N: int, L: int, S: int,
              dtype: torch.dtype) -> Tensor | None:
        """The additive mask ``[N or 1, H or 1, L, S]`` of torch's ``attn_mask`` (``[L, S]`` or ``[B*H, L, S]``)
        and ``key_padding_mask`` (``[B, S]``), per-sample masks repeated for the K instances."""
        H = self.num_heads
        out = None
        if attn_mask is not None:
            m = _float_mask(attn_mask, dtype)
            if m.dim() == 3:
                m = self.out_proj.per_instance(m.view(-1, H, L, S))
            out = m
        if key_padding_mask is not None:
            kp = self.out_proj.per_instance(_float_mask(key_padding_mask, dtype)).view(-1, 1, 1, S)
            out = kp if out is None else out + kp
        return out
