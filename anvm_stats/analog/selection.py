"""Which modules of a model become analog layers, and the checks on the model before mapping."""

from __future__ import annotations

import warnings
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from ..errors import ConfigError, InvalidWeightsError, UnsupportedLayerError

#: module types mapped to crossbars by default
ANALOG_TYPES = {nn.Linear: "linear", nn.Conv1d: "conv1d", nn.Conv2d: "conv2d"}
#: parameterised module types that may stay digital beside the analog layers (they act per sample)
DIGITAL_OK = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.PReLU, nn.Identity)

LayerFilter = Callable[[str, nn.Module], bool] | Sequence[str] | None


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


def select_layers(model: nn.Module, layers: LayerFilter) -> list[str]:
    modules = dict(model.named_modules())
    if layers is None:
        return [n for n, m in modules.items() if type(m) in ANALOG_TYPES]
    if callable(layers):
        chosen = [n for n, m in modules.items() if n and layers(n, m)]
    else:
        chosen = list(layers)
        missing = [n for n in chosen if n not in modules]
        if missing:
            raise ConfigError("layers", missing[0], f"a module name of the model; analog-capable ones are "
                                                   f"{[n for n, m in modules.items() if type(m) in ANALOG_TYPES]}")
    for n in chosen:
        if type(modules[n]) not in ANALOG_TYPES:
            raise UnsupportedLayerError(
                f"layer {n!r} is a {type(modules[n]).__name__}; analog layers must be one of "
                f"{[t.__name__ for t in ANALOG_TYPES]}")
    return chosen


def check_rest(model: nn.Module, analog: set[str], digital: Iterable[str]) -> None:
    allowed_digital = set(digital)
    for name, m in model.named_modules():
        if name in analog or name in allowed_digital or not list(m.parameters(recurse=False)):
            continue
        if type(m) in ANALOG_TYPES or isinstance(m, DIGITAL_OK):
            continue
        raise UnsupportedLayerError(
            f"module {name!r} ({type(m).__name__}) holds parameters but is neither an analog layer "
            f"({', '.join(t.__name__ for t in ANALOG_TYPES)}) nor a known per-sample digital module "
            f"({', '.join(t.__name__ for t in DIGITAL_OK)}); pass digital=[{name!r}] to run it digitally "
            f"if it treats every sample of the batch independently")
