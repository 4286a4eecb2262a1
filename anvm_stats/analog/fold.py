"""Fold BatchNorm into the conv/linear layer that directly precedes it (inference semantics)."""

from __future__ import annotations

import warnings

import torch
from torch import nn

_FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def find_foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(layer_name, batchnorm_name)`` pairs where the BatchNorm's only input is the layer's output and the layer
    has no other user, found by torch.fx symbolic tracing. Returns ``[]`` (with a warning) if tracing fails."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as err:  # noqa: BLE001 - any tracing failure means "cannot prove the pattern"
        if any(isinstance(m, _BATCHNORMS) for m in model.modules()):
            warnings.warn(f"BatchNorm left digital (unfolded): torch.fx could not trace the model ({err})",
                          stacklevel=3)
        return []
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(model.get_submodule(node.target), _BATCHNORMS):
            continue
        src = node.args[0] if node.args else None
        if (isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1
                and isinstance(model.get_submodule(src.target), _FOLDABLE)):
            pairs.append((src.target, node.target))
    return pairs


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> list[tuple[str, str]]:
    """Fold every foldable BatchNorm of ``model`` IN PLACE (call on a copy) and replace it by ``nn.Identity``.

    ``W' = W * gamma / sqrt(var + eps)`` (per output channel), ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``.
    BatchNorms without running statistics are left alone. Returns the folded pairs.
    """
    done = []
    for layer_name, bn_name in find_foldable_pairs(model):
        layer, bn = model.get_submodule(layer_name), model.get_submodule(bn_name)
        if not bn.track_running_stats or bn.running_mean is None or layer.weight.shape[0] != bn.num_features:
            continue
        scale = bn.running_var.add(bn.eps).rsqrt()
        if bn.affine:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale + (bn.bias if bn.affine else 0.0)
        bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = bias * scale + shift
        layer.weight.mul_(scale.reshape(-1, *([1] * (layer.weight.dim() - 1))))
        layer.bias = nn.Parameter(new_bias.to(layer.weight.dtype))
        _set_submodule(model, bn_name, nn.Identity())
        done.append((layer_name, bn_name))
    return done


def find_fusable_relus(model: nn.Module, layer_names: set[str]) -> dict[str, str]:
    """``{layer: relu}``: ``nn.ReLU`` modules whose every call takes the output of one of ``layer_names``
    (through ``nn.Identity`` calls only, e.g. a folded BatchNorm) and that output has no other user. Such a ReLU
    can run in place inside the layer. Returns ``{}`` when torch.fx cannot trace the model."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - no proof of the pattern, no fusion
        return {}
    calls: dict[str, list] = {}
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(model.get_submodule(node.target), nn.ReLU):
            calls.setdefault(node.target, []).append(node)
    fused: dict[str, str] = {}
    for relu, nodes in calls.items():
        sources = []
        for node in nodes:
            src = node.args[0] if node.args else None
            while (isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1
                   and isinstance(model.get_submodule(src.target), nn.Identity)):
                src = src.args[0]
            ok = (isinstance(src, torch.fx.Node) and src.op == "call_module" and src.target in layer_names
                  and len(src.users) == 1)
            sources.append(src.target if ok else None)
        if len(nodes) == 1 and sources[0] is not None and sources[0] not in fused:
            fused[sources[0]] = relu
    return fused
