"""Which modules of a model become analog layers, the crossbars each one holds, and the checks on the model before
mapping.

Analog by default: ``nn.Linear`` (on inputs ``[B, ..., in]``, token by token), ``nn.Conv1d/2d/3d``, and the
composite modules :data:`COMPOSITE_TYPES` (``nn.MultiheadAttention``: its q/k/v and output projections;
``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``: their input and recurrent matrices). ``nn.Embedding`` is a table lookup and
stays digital unless named in ``layers=`` (then it is a one-hot MVM on a ``vocabulary x dim`` array).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from ..errors import ConfigError, InvalidWeightsError, UnsupportedLayerError

Tensor = torch.Tensor

#: module types that are one crossbar each, mapped by default (op of the layer plan)
ANALOG_TYPES = {nn.Linear: "linear", nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Conv3d: "conv3d"}
#: module types made of several crossbars and digital glue (analog/attention.py, analog/recurrent.py), by default
COMPOSITE_TYPES = {nn.MultiheadAttention: "attention", nn.LSTM: "lstm", nn.GRU: "gru", nn.RNN: "rnn"}
#: module types analog only when named in ``layers=`` (digital by default)
ON_REQUEST_TYPES = {nn.Embedding: "embedding"}
#: parameterised module types that may stay digital beside the analog layers (they act per sample or per token)
DIGITAL_OK = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.PReLU,
              nn.Identity, nn.Embedding)

LayerFilter = Callable[[str, nn.Module], bool] | Sequence[str] | None


@dataclass(frozen=True, eq=False)
class Crossbar:
    """One weight matrix of a selected module, mapped to its own analog array (one :class:`LayerPlan`).

    Attributes
    ----------
    name : str
        Plan name: the module path, or the module path and the part (``attn.in_proj``, ``rnn.hh_l0_reverse``).
    op : {"linear", "conv1d", "conv2d", "conv3d"}
    weight : Tensor ``[out, in, *kernel]``
    bias : Tensor ``[out]`` or None
    conv : dict
        stride, padding, dilation, groups of a convolution (empty for linear).
    one_hot : bool
        The layer reads integer indices, applied as one-hot input vectors (an analog embedding table).
    """

    name: str
    op: str
    weight: Tensor
    bias: Tensor | None
    conv: dict = field(default_factory=dict)
    one_hot: bool = False


def resolve_device(device: torch.device | str) -> torch.device:
    """``device`` as a torch.device; a CUDA request on a machine without CUDA falls back to the CPU with a
    warning (results are the same model, drawn from CPU generators)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError("device", device, "a torch device such as 'cpu', 'cuda' or 'cuda:1'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(f"device={str(device)!r} requested but CUDA is not available: running on the CPU",
                      RuntimeWarning, stacklevel=3)
        return torch.device("cpu")
    return dev


def check_finite(model: nn.Module) -> None:
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise InvalidWeightsError(f"parameter {name!r} holds {bad} NaN/inf value(s); analog mapping needs "
                                      f"finite weights")


def _capable(m: nn.Module) -> bool:
    t = type(m)
    return t in ANALOG_TYPES or t in COMPOSITE_TYPES or t in ON_REQUEST_TYPES


def _default(m: nn.Module) -> bool:
    return type(m) in ANALOG_TYPES or type(m) in COMPOSITE_TYPES


def _inside(name: str, parents: Iterable[str]) -> str | None:
    """The first of ``parents`` that holds module ``name`` (a strict ancestor), or None."""
    return next((p for p in parents if p == "" and name or name.startswith(p + ".")), None) if name else None


def _composites(modules: dict) -> list[str]:
    return [n for n, m in modules.items() if type(m) in COMPOSITE_TYPES]


def select_layers(model: nn.Module, layers: LayerFilter) -> list[str]:
    """Names of the modules that become analog, in registration order.

    ``layers=None``: every module of :data:`ANALOG_TYPES` and :data:`COMPOSITE_TYPES` (not the parts of a
    composite module, e.g. ``nn.MultiheadAttention.out_proj``); a list or callable may also name
    :data:`ON_REQUEST_TYPES` (``nn.Embedding``)."""
    modules = dict(model.named_modules())
    composites = _composites(modules)
    if layers is None:
        return [n for n, m in modules.items() if _default(m) and _inside(n, composites) is None]
    if callable(layers):
        chosen = [n for n, m in modules.items() if n and layers(n, m)]
        # parts of a chosen composite module go with it
        chosen = [n for n in chosen if _inside(n, [c for c in chosen if c in composites]) is None]
    else:
        chosen = list(layers)
        missing = [n for n in chosen if n not in modules]
        if missing:
            raise ConfigError("layers", missing[0], f"a module name of the model; analog-capable ones are "
                                                   f"{[n for n, m in modules.items() if _capable(m)]}")
    for n in chosen:
        owner = _inside(n, composites)
        if owner is not None:
            raise UnsupportedLayerError(
                f"layer {n!r} is part of {type(modules[owner]).__name__} {owner!r}, which reads its weights "
                f"directly; select {owner!r} itself (its projections are all analog)")
        if not _capable(modules[n]):
            raise UnsupportedLayerError(
                f"layer {n!r} is a {type(modules[n]).__name__}; analog layers must be one of "
                f"{[t.__name__ for t in (*ANALOG_TYPES, *COMPOSITE_TYPES, *ON_REQUEST_TYPES)]}")
    return chosen


def crossbars(name: str, m: nn.Module) -> list[Crossbar]:
    """The crossbars of selected module ``m`` (at path ``name``), in the order its forward reads them.

    Raises
    ------
    UnsupportedLayerError
        For options the analog module does not implement (named, with the value).
    """
    def refuse(option, value, why="is not supported on analog arrays"):
        raise UnsupportedLayerError(f"layer {name!r} ({type(m).__name__}): {option}={value!r} {why}; keep it "
                                    f"digital with digital=[{name!r}] and a layers= selection without it")

    w = lambda t: t.detach()  # noqa: E731
    t = type(m)
    if t in ANALOG_TYPES:
        op = ANALOG_TYPES[t]
        if op == "linear":
            return [Crossbar(name, op, w(m.weight), None if m.bias is None else w(m.bias))]
        if m.padding_mode != "zeros":
            raise UnsupportedLayerError(f"layer {name!r}: padding_mode={m.padding_mode!r}; only 'zeros' is "
                                        f"supported")
        conv = dict(stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups)
        return [Crossbar(name, op, w(m.weight), None if m.bias is None else w(m.bias), conv)]
    if t is nn.Embedding:
        if m.max_norm is not None:
            refuse("max_norm", m.max_norm, "renormalises the table at every lookup")
        return [Crossbar(name, "linear", w(m.weight).t().contiguous(), None, one_hot=True)]
    if t is nn.MultiheadAttention:
        if m.bias_k is not None:
            refuse("add_bias_kv", True)
        if m.add_zero_attn:
            refuse("add_zero_attn", True)
        E = m.embed_dim
        b = None if m.in_proj_bias is None else w(m.in_proj_bias)
        out = [Crossbar(f"{name}.out_proj", "linear", w(m.out_proj.weight),
                        None if m.out_proj.bias is None else w(m.out_proj.bias))]
        if m._qkv_same_embed_dim:
            return [Crossbar(f"{name}.in_proj", "linear", w(m.in_proj_weight), b)] + out
        parts = [Crossbar(f"{name}.{p}_proj", "linear", w(getattr(m, f"{p}_proj_weight")),
                          None if b is None else b[i * E:(i + 1) * E]) for i, p in enumerate("qkv")]
        return parts + out
    if t in COMPOSITE_TYPES:          # recurrent layers
        if getattr(m, "proj_size", 0):
            refuse("proj_size", m.proj_size)
        out = []
        for layer in range(m.num_layers):
            for sfx in ("", "_reverse") if m.bidirectional else ("",):
                for kind in ("ih", "hh"):
                    bias = getattr(m, f"bias_{kind}_l{layer}{sfx}") if m.bias else None
                    out.append(Crossbar(f"{name}.{kind}_l{layer}{sfx}", "linear",
                                        w(getattr(m, f"weight_{kind}_l{layer}{sfx}")),
                                        None if bias is None else w(bias)))
        return out
    raise UnsupportedLayerError(f"layer {name!r} is a {t.__name__}, which has no analog form")


def check_rest(model: nn.Module, analog: set[str], digital: Iterable[str]) -> None:
    """Refuse parameterised modules that are neither analog nor known to run digitally per sample, listing every
    one of them (path and type) and the ``digital=[...]`` argument that keeps them digital."""
    allowed_digital = set(digital)
    modules = dict(model.named_modules())
    composites = _composites(modules)
    bad = []
    for name, m in modules.items():
        if name in analog or name in allowed_digital or not list(m.parameters(recurse=False)):
            continue
        if _capable(m) or isinstance(m, DIGITAL_OK) or _inside(name, composites) is not None:
            continue
        bad.append((name, type(m).__name__))
    if bad:
        listed = "; ".join(f"{n!r} ({t})" if n else f"'' (the model itself, {t})" for n, t in bad)
        raise UnsupportedLayerError(
            f"{len(bad)} module(s) hold parameters but are neither analog layers "
            f"({', '.join(t.__name__ for t in (*ANALOG_TYPES, *COMPOSITE_TYPES))}; "
            f"{', '.join(t.__name__ for t in ON_REQUEST_TYPES)} when named in layers=) nor known per-sample "
            f"digital modules ({', '.join(t.__name__ for t in DIGITAL_OK)}): {listed}. Pass "
            f"digital={[n for n, _ in bad]!r} to run them digitally if each treats every sample of the batch "
            f"independently")
