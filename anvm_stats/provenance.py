"""Provenance attrs every result Dataset carries."""

from __future__ import annotations

import datetime as _dt
import json

import torch
from torch import nn

from .version import __version__


def model_label(model: nn.Module) -> str:
    """``"name (N parameters)"``; name is the zoo ``arch`` attribute when present, else the class name."""
    n = sum(p.numel() for p in model.parameters())
    name = getattr(model, "arch", None) or type(model).__name__
    return f"{name} ({n} parameters)"


def provenance(*, model: nn.Module, spec, dataset: str, seed_entropy: str, device) -> dict[str, str]:
    """The attrs listed in :data:`anvm_stats.dims.REQUIRED_ATTRS` (all strings, netCDF-safe)."""
    return {
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "anvm_stats_version": __version__,
        "torch_version": str(torch.__version__),
        "device": str(device),
        "seed_entropy": seed_entropy,
        "hardware_spec": json.dumps(spec.to_dict(), sort_keys=True),
        "model": model_label(model),
        "dataset": dataset,
    }
