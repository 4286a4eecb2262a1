"""Exact Hessian-vector products of a network's mean loss over a data set, with respect to chosen parameters.

The Hessian is that of the MEAN loss over all samples of ``data``; batches are weighted by their sample
counts so that any batching gives the full-batch result. Products are forward-over-reverse:
``torch.func.jvp(torch.func.grad(loss), ...)`` through ``torch.func.functional_call`` on detached copies of
the parameters, so the user's model is never changed (its train/eval flags are restored after each call).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from ..data_source import as_tensors, iter_batches
from ..errors import ConfigError

Tensor = torch.Tensor
ParamDict = dict[str, Tensor]

#: module types whose weight (and bias) make a "layer" by default
#: nn.MultiheadAttention's own parameters are its packed q/k/v projection (``in_proj_weight``, ``in_proj_bias``); its
#: ``out_proj`` is a Linear of its own
DEFAULT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.MultiheadAttention)


def default_layers(model: nn.Module, types: tuple[type[nn.Module], ...] = DEFAULT_LAYER_TYPES,
                   ) -> dict[str, list[str]]:
    """Qualified module name -> its parameter names (``"<name>.weight"``, ``"<name>.bias"``) for every module of
    ``types`` (default ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d``, and ``nn.MultiheadAttention`` for its packed
    q/k/v projection), in module order.

    Raises
    ------
    ConfigError
        If the model holds no such module.
    """
    layers: dict[str, list[str]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, types):
            layers[name] = [f"{name}.{p}" if name else p for p, _ in mod.named_parameters(recurse=False)]
    if not layers:
        raise ConfigError("layers", None, f"a model containing at least one of {[t.__name__ for t in types]}")
    return layers


def resolve_layers(model: nn.Module, layers) -> dict[str, list[str]]:
    """Normalise a layer selection to ``{layer: [param names]}``.

    Parameters
    ----------
    layers : None, sequence of str, or mapping str -> sequence of str
        ``None``: :func:`default_layers`. A sequence: qualified module names (each module's own parameters).
        A mapping: layer name -> parameter names, taken as is.
    """
    if layers is None:
        return default_layers(model)
    if isinstance(layers, Mapping):
        return {str(k): [str(p) for p in v] for k, v in layers.items()}
    if isinstance(layers, str):
        layers = [layers]
    modules = dict(model.named_modules())
    out: dict[str, list[str]] = {}
    for name in layers:
        if name not in modules:
            raise ConfigError("layers", name, f"a module name of the model, e.g. {list(modules)[1:4]}")
        out[name] = [f"{name}.{p}" if name else p for p, _ in modules[name].named_parameters(recurse=False)]
    return out


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule of ``model`` in eval mode and restore each one's own flag on exit; attention
    (``F.scaled_dot_product_attention``, e.g. in ``nn.MultiheadAttention``) runs its math kernel, the one with
    forward-mode AD (the HVPs are forward-over-reverse; the fused CPU/GPU kernels have no forward AD)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        for m, flag in flags:
            m.training = flag


class HessianOperator:
    """Hessian of the mean loss of ``model`` on ``data`` with respect to the parameters listed in ``param_names``.

    Parameters
    ----------
    model : nn.Module
        Never modified; its parameters and buffers are snapshot (detached copies) at construction and the
        forward runs in eval mode (each submodule's flag is restored afterwards).
    data : (x, y) tensors, an ``anvm_stats`` Data, or a re-iterable of ``(x, y)`` batches
        A one-shot iterator is materialised into a list. Floating inputs are cast to the parameters' dtype
        and moved to their device.
    loss_fn : callable
        ``loss_fn(output, y) -> scalar`` MEAN loss over the batch (default ``F.cross_entropy``).
    param_names : mapping layer -> sequence of parameter names, optional
        The variables of the Hessian, grouped into layers; other parameters are held fixed. Default:
        :func:`default_layers` (every Linear / Conv1d / Conv2d: its weight and bias).
    batch_size : int, optional
        Cut whole ``(x, y)`` tensors into batches of this size (memory only; results do not change).

    Attributes
    ----------
    layers : dict[str, list[str]]
        Layer -> its parameter names.
    names : list[str]
        All variable parameter names, in layer order.
    shapes : dict[str, torch.Size]
        Shape of each variable parameter.
    """

    def __init__(self, model: nn.Module, data, loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy, *,
                 param_names: Mapping[str, Sequence[str]] | None = None, batch_size: int | None = None):
        if not isinstance(model, nn.Module):
            raise ConfigError("model", type(model).__name__, "a torch.nn.Module")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ConfigError("batch_size", batch_size, "a positive int or None")
        self.model = model
        self.loss_fn = loss_fn
        self.batch_size = batch_size
        self.layers = resolve_layers(model, param_names)
        all_params = dict(model.named_parameters())
        seen: dict[str, str] = {}
        for layer, names in self.layers.items():
            if not names:
                raise ConfigError(f"param_names[{layer!r}]", names, "at least one parameter name")
            for n in names:
                if n not in all_params:
                    raise ConfigError(f"param_names[{layer!r}]", n, f"parameter names of the model, e.g. "
                                                                   f"{list(all_params)[:4]}")
                if n in seen:
                    raise ConfigError(f"param_names[{layer!r}]", n, f"a parameter in one layer only (also in "
                                                                   f"{seen[n]!r})")
                seen[n] = layer
        self.names = [n for names in self.layers.values() for n in names]
        self.layer_of = seen
        self._variables = {n: all_params[n].detach().clone() for n in self.names}
        self._fixed = {n: p.detach().clone() for n, p in all_params.items() if n not in seen}
        self._buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        self.shapes = {n: t.shape for n, t in self._variables.items()}
        first = self._variables[self.names[0]]
        self.device, self.dtype = first.device, first.dtype
        if as_tensors(data) is None and isinstance(data, Iterable) and iter(data) is data:
            data = list(data)  # a one-shot iterator: keep the batches so that every product sees them all
        self.data = data
        self._vectorize = True

    # ----------------------------------------------------------------------------------------------- helpers
    @property
    def params(self) -> ParamDict:
        """The (detached, snapshot) values of the variable parameters."""
        return dict(self._variables)

    def numel(self, layer: str | None = None) -> int:
        """Number of variables in ``layer`` (all layers if None)."""
        names = self.names if layer is None else self.layers[layer]
        return sum(self.shapes[n].numel() for n in names)

    def subset(self, layers: str | Sequence[str]) -> "HessianOperator":
        """The operator restricted to ``layers`` (the diagonal block of those layers; others held fixed)."""
        layers = [layers] if isinstance(layers, str) else list(layers)
        for layer in layers:
            if layer not in self.layers:
                raise ConfigError("layer", layer, f"one of {list(self.layers)}")
        new = object.__new__(HessianOperator)
        new.__dict__.update(self.__dict__)
        new.layers = {k: list(self.layers[k]) for k in layers}
        new.names = [n for k in layers for n in self.layers[k]]
        new.layer_of = {n: k for k in layers for n in self.layers[k]}
        new._variables = {n: self._variables[n] for n in new.names}
        new._fixed = {**self._fixed, **{n: t for n, t in self._variables.items() if n not in new.layer_of}}
        new.shapes = {n: self.shapes[n] for n in new.names}
        return new

    def zeros(self) -> ParamDict:
        """Zero vector, one tensor per variable parameter."""
        return {n: torch.zeros_like(t) for n, t in self._variables.items()}

    def flatten(self, vectors: Mapping[str, Tensor], layer: str | None = None) -> Tensor:
        """Concatenate ``vectors`` (in :attr:`names` order, or ``layer``'s) into a 1-D tensor."""
        names = self.names if layer is None else self.layers[layer]
        return torch.cat([vectors[n].reshape(-1) for n in names])

    def unflatten(self, flat: Tensor, layer: str | None = None) -> ParamDict:
        """Inverse of :meth:`flatten`; parameters outside ``layer`` are zero when ``layer`` is given."""
        names = self.names if layer is None else self.layers[layer]
        out = self.zeros() if layer is not None else {}
        i = 0
        for n in names:
            k = self.shapes[n].numel()
            out[n] = flat[i:i + k].reshape(self.shapes[n]).to(self.device, self.dtype)
            i += k
        if i != flat.numel():
            raise ConfigError("flat", tuple(flat.shape), f"a vector of {i} elements")
        return out

    def _batches(self) -> Iterator[tuple[Tensor, Tensor, int]]:
        n_total = 0
        for x, y in iter_batches(self.data, self.batch_size):
            if torch.is_floating_point(x):
                x = x.to(self.device, self.dtype)
            else:
                x = x.to(self.device)
            y = y.to(self.device)
            n = int(y.shape[0]) if y.ndim else int(x.shape[0])
            n_total += n
            yield x, y, n
        if n_total == 0:
            raise ConfigError("data", "empty", "at least one sample")

    def _loss_of(self, x: Tensor, y: Tensor) -> Callable[[ParamDict], Tensor]:
        def loss(variables: ParamDict) -> Tensor:
            out = functional_call(self.model, ({**self._fixed, **variables}, self._buffers), (x,))
            return self.loss_fn(out, y)
        return loss

    def _check_vectors(self, vectors: Mapping[str, Tensor]) -> ParamDict:
        extra = set(vectors) - set(self._variables)
        if extra:
            raise ConfigError("vectors", sorted(extra), f"parameter names among {self.names}")
        out = {}
        for n, t in self._variables.items():
            v = vectors.get(n)
            if v is None:
                out[n] = torch.zeros_like(t)
                continue
            v = torch.as_tensor(v)
            if v.shape != t.shape:
                raise ConfigError(f"vectors[{n!r}]", tuple(v.shape), f"shape {tuple(t.shape)}")
            out[n] = v.detach().to(t.device, t.dtype)
        return out

    def _check_stacked(self, stacked: Mapping[str, Tensor]) -> tuple[ParamDict, int]:
        extra = set(stacked) - set(self._variables)
        if extra:
            raise ConfigError("vectors", sorted(extra), f"parameter names among {self.names}")
        ks = {int(torch.as_tensor(v).shape[0]) for v in stacked.values() if torch.as_tensor(v).ndim > 0}
        if len(ks) != 1:
            raise ConfigError("vectors", sorted(ks), "one leading (stack) dim shared by every tensor")
        k = ks.pop()
        out = {}
        for n, t in self._variables.items():
            v = stacked.get(n)
            if v is None:
                out[n] = t.new_zeros((k, *t.shape))
                continue
            v = torch.as_tensor(v)
            if v.shape != (k, *t.shape):
                raise ConfigError(f"vectors[{n!r}]", tuple(v.shape), f"shape {(k, *t.shape)}")
            out[n] = v.detach().to(t.device, t.dtype)
        return out, k

    # -------------------------------------------------------------------------------------------- products
    def loss(self) -> float:
        """Mean loss over all samples."""
        total, count = 0.0, 0
        with eval_mode(self.model), torch.no_grad():
            for x, y, n in self._batches():
                total += float(self._loss_of(x, y)(self._variables)) * n
                count += n
        return total / count

    def gradient(self) -> ParamDict:
        """Gradient of the mean loss, ``{param name: tensor of the parameter's shape}``."""
        acc, count = self.zeros(), 0
        with eval_mode(self.model):
            for x, y, n in self._batches():
                g = grad(self._loss_of(x, y))(self._variables)
                for k in acc:
                    acc[k].add_(g[k], alpha=n)
                count += n
        return {k: v / count for k, v in acc.items()}

    def hvp_and_gradient(self, vectors: Mapping[str, Tensor]) -> tuple[ParamDict, ParamDict]:
        """``(H v, g)``: Hessian-vector product and gradient of the mean loss, one data pass.

        Parameters
        ----------
        vectors : mapping param name -> tensor of the parameter's shape
            Missing parameters count as zero.
        """
        v = self._check_vectors(vectors)
        hv_acc, g_acc, count = self.zeros(), self.zeros(), 0
        with eval_mode(self.model):
            for x, y, n in self._batches():
                g, hv = jvp(grad(self._loss_of(x, y)), (self._variables,), (v,))
                for k in hv_acc:
                    hv_acc[k].add_(hv[k], alpha=n)
                    g_acc[k].add_(g[k], alpha=n)
                count += n
        return {k: t / count for k, t in hv_acc.items()}, {k: t / count for k, t in g_acc.items()}

    def hvp(self, vectors: Mapping[str, Tensor]) -> ParamDict:
        """Exact Hessian-vector product ``H v`` of the mean loss (dict of the parameters' shapes)."""
        return self.hvp_and_gradient(vectors)[0]

    __call__ = hvp

    def hvp_batch(self, stacked: Mapping[str, Tensor]) -> ParamDict:
        """Hessian-vector products of ``k`` stacked vectors in one data pass (``torch.func.vmap`` over the
        tangents; a plain loop where the model does not support vmap).

        Parameters
        ----------
        stacked : mapping param name -> tensor of shape ``(k, *param.shape)``
            Missing parameters count as zero.

        Returns
        -------
        dict param name -> tensor of shape ``(k, *param.shape)``
        """
        v, k = self._check_stacked(stacked)
        acc = {n: t.new_zeros((k, *t.shape)) for n, t in self._variables.items()}
        count = 0
        with eval_mode(self.model):
            for x, y, n in self._batches():
                hvp_one = _hvp_fn(self._loss_of(x, y), self._variables)
                hv = None
                if self._vectorize:
                    try:
                        hv = vmap(hvp_one)(v)
                    except (RuntimeError, NotImplementedError) as err:  # an op without a batching rule
                        warnings.warn(f"HessianOperator: vmap failed ({err}); looping over vectors instead",
                                      RuntimeWarning, stacklevel=2)
                        self._vectorize = False
                if hv is None:
                    outs = [hvp_one({p: t[i] for p, t in v.items()}) for i in range(k)]
                    hv = {p: torch.stack([o[p] for o in outs]) for p in acc}
                for p in acc:
                    acc[p].add_(hv[p], alpha=n)
                count += n
        return {p: t / count for p, t in acc.items()}

    def dense(self, layer: str | None = None, chunk: int = 64) -> Tensor:
        """The dense Hessian (or the diagonal block of ``layer``), shape ``(numel, numel)``, from HVPs of the basis
        vectors, ``chunk`` at a time: for small problems and checks only."""
        m = self.numel(layer)
        cols = []
        for start in range(0, m, chunk):
            eye = torch.eye(m, device=self.device, dtype=self.dtype)[start:start + chunk]
            parts = [self.unflatten(e, layer) for e in eye]
            stacked = {n: torch.stack([p[n] for p in parts]) for n in self.names}
            hv = self.hvp_batch(stacked)
            names = self.names if layer is None else self.layers[layer]
            cols.append(torch.cat([hv[n].reshape(len(eye), -1) for n in names], dim=1))
        return torch.cat(cols, dim=0).T.contiguous()


def _hvp_fn(loss: Callable[[ParamDict], Tensor], primals: ParamDict) -> Callable[[ParamDict], ParamDict]:
    """``v -> H v`` of ``loss`` at ``primals`` (forward-over-reverse)."""
    def hvp_one(v: ParamDict) -> ParamDict:
        return jvp(grad(loss), (primals,), (v,))[1]
    return hvp_one
