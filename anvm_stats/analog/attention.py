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
        self.work_floats = 0        # floats per sample the last forward held at once (chunk sizes, program.py)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q ``[N, L, E]``, k and v ``[N, S, E]`` (strided views of the projections, heads side by side) from
        batch-first inputs (see module docstring)."""
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
        N, L, S, H, D, E = q.shape[0], q.shape[1], k.shape[1], self.num_heads, self.head_dim, self.embed_dim
        mask = self._mask(attn_mask, key_padding_mask, N, L, S, q.dtype)
        if need_weights or q.device.type == "cpu":
            # explicit scores, head by head on strided views of the projections (no copies into a head-major
            # layout; SDPA's flash kernel is slower on CPU for short sequences): scale * q_h k_h^T (+ mask)
            outs, weights = [], []
            for h in range(H):
                part = slice(h * D, (h + 1) * D)
                base = q.new_empty(()) if mask is None else mask[:, h if mask.shape[1] > 1 else 0].expand(N, L, S)
                w_h = torch.softmax(torch.baddbmm(base, q[..., part], k[..., part].transpose(1, 2),
                                                  beta=0.0 if mask is None else 1.0, alpha=1.0 / math.sqrt(D)),
                                    dim=-1)
                outs.append(torch.bmm(w_h, v[..., part]))
                weights.append(w_h)
            out = torch.cat(outs, dim=-1)                                   # [N, L, E]
            if need_weights:
                weights = torch.stack(weights, dim=1)
                weights = weights.mean(dim=1) if average_attn_weights else weights
            else:
                weights = None
        else:
            heads = lambda t: t.unflatten(-1, (H, D)).transpose(1, 2)  # noqa: E731
            out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=mask)
            out, weights = out.transpose(1, 2).reshape(N, L, self.embed_dim), None
        out = self.out_proj(out)
        # projections, scores and probabilities of every head, the heads' outputs and the output projection
        self.work_floats = (q.shape[1] * q.shape[2] + 2 * k.shape[1] * k.shape[2] + 2 * H * L * S + 2 * L * E)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def _mask(self, attn_mask: Tensor | None, key_padding_mask: Tensor | None, N: int, L: int, S: int,
              dtype: torch.dtype) -> Tensor | None:
        """The additive mask ``[N or 1, H or 1, L, S]`` (or None) of torch's ``attn_mask`` (``[L, S]`` or ``[B*H, L, S]``)
        and ``key_padding_mask`` (``[B, S]``), per-sample masks repeated for the K instances."""
        H = self.num_heads
        out = None
        if attn_mask is not None:
            m = _float_mask(attn_mask, dtype)
            m = self.out_proj.per_instance(m.view(-1, H, L, S)) if m.dim() == 3 else m.view(1, 1, L, S)
            out = m
        if key_padding_mask is not None:
            kp = self.out_proj.per_instance(_float_mask(key_padding_mask, dtype)).view(-1, 1, 1, S)
            out = kp if out is None else out + kp
        return out
