"""Chips affine in their draws, programmed lazily, and the shared-input shortcut of sweeps.

For chips whose weights are affine in the base draws (:mod:`anvm_stats.analog.affine`), a layer's weights are
``W = w0 + coef * z`` (``coef`` per output; one term per program effect). :class:`LazyAffine` holds ``w0``,
``coef`` and the chunk's draws and programs the weights when the layer first runs (so they are still in cache when
the GEMM reads them).

A layer that reads an input shared by every instance (the network input, or a digital function of it: see
:meth:`AnalogProgram.mark_shared_inputs`) need not program its weights at all::

    x W^T = x w0^T + coef * (x z^T)

The nominal product ``x w0^T`` is the same for every chip, and the product with the draws ``x z^T`` is the same
at every grid point of a noise sweep (common random numbers: only ``coef`` changes with ``noise_level``). The
runner keeps them in two :class:`ProductCache` s, one per grid point (nominal products, shared by all chunks)
and one per chunk (draw products, shared by all grid points), so a sweep of ``J`` noise levels computes the
first layer's GEMM once per chip instead of ``J`` times (on CPU; GPUs keep programming the weights, see
:meth:`AnalogProgram.mark_shared_inputs`). Every chip takes this path at every point whatever the
chunking (the products are computed by the same calls as the direct path), so results stay chunk-invariant; they
differ from programming the weights first by float round-off only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

Tensor = torch.Tensor
#: bytes of draw products kept per chunk (beyond it, products are recomputed at every grid point: same values)
PRODUCT_CACHE_BYTES = 128 * 2 ** 20
#: bytes of nominal products kept per grid point
NOMINAL_CACHE_BYTES = 64 * 2 ** 20


class ProductCache:
    """Tensors by key up to ``max_bytes``; a tensor that would not fit is returned without being kept."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.used = 0
        self._items: dict = {}

    def get(self, key, compute: Callable[[], Tensor]) -> Tensor:
        t = self._items.get(key)
        if t is None:
            t = compute()
            size = t.numel() * t.element_size()
            if self.used + size <= self.max_bytes:
                self._items[key] = t
                self.used += size
        return t


@dataclass(eq=False)
class LazyAffine:
    """One layer's weights for ``K`` chips: ``W = w0 + sum_e coef[e] * zw[e]``, bias column likewise.

    Attributes
    ----------
    w0 : Tensor ``[O, in]``
        Nominal (decoded, mean-shifted) weights of this grid point.
    b0 : Tensor ``[O]`` or None
        Nominal bias-column values.
    coef : tuple of Tensor ``[O, 1]``
        Weight change per unit draw, one per program effect.
    zw : tuple of Tensor ``[K, O, in]``
        The chunk's base draws of the weight devices, one per effect (views of the draw block).
    zb : tuple of Tensor ``[K, O]``
        Draws of the bias-column devices (empty without a bias column).
    products, nominal : ProductCache or None
        Draw products of this chunk (shared across grid points) and nominal products of this grid point (shared
        across chunks); None: no caching.
    """

    w0: Tensor
    b0: Tensor | None
    coef: tuple
    zw: tuple
    zb: tuple
    products: ProductCache | None = None
    nominal: ProductCache | None = None
    _weights: tuple | None = field(default=None, repr=False)

    @property
    def K(self) -> int:
        return self.zw[0].shape[0]

    def weights(self) -> tuple[Tensor, Tensor | None]:
        """Programmed weights ``[K, O, in]`` and bias-column values ``[K, O]`` (or None), computed once."""
        if self._weights is None:
            w = b = None
            for e, c in enumerate(self.coef):
                w = torch.addcmul(self.w0 if w is None else w, self.zw[e], c)
                if self.b0 is not None:
                    b = torch.addcmul(self.b0 if b is None else b, self.zb[e], c[:, 0])
            self._weights = (w, b)
        return self._weights

    def bias_values(self, scale: float) -> Tensor | None:
        """Every chip's bias ``[K, O]``: bias-column values of the one program effect times the bias scale
        (None without a bias column), as :meth:`weights` programs them."""
        if self.b0 is None:
            return None
        return torch.addcmul(self.b0, self.zb[0], self.coef[0][:, 0]) * scale

    def shared_input_output(self, key: tuple, matmul: Callable, bias_scale: float) -> Tensor:
        """``x W^T`` for a shared input as ``nominal + coef * products`` (one effect only), ``[K, B, O, ...]``.

        ``matmul(w [k, O, in], bias [k, O] or None, k)`` applies stacked weights to the layer's input (the layer's
        own kernels); ``key`` names the input (layer, batch, DAC levels, input tensor)."""
        def products():
            zb = self.zb[0] * bias_scale if self.zb else None
            return matmul(self.zw[0], zb, self.K)

        def nominal():
            b0 = None if self.b0 is None else (self.b0 * bias_scale)[None]
            return matmul(self.w0[None], b0, 1)

        p = self.products.get(key, products) if self.products is not None else products()
        n = self.nominal.get(key, nominal) if self.nominal is not None else nominal()
        coef = self.coef[0].view(1, 1, -1, *([1] * (p.dim() - 3)))
        return torch.addcmul(n, p, coef, out=torch.empty_like(p))
