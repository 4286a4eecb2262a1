"""Hardware tables of a study: a preset with args, or HardwareSpec.from_dict keys, plus named variants."""

from __future__ import annotations

import copy
from typing import Any

from ..devices.presets import PRESETS
from ..errors import ConfigError
from ..hardware.spec import SPEC_KEYS, HardwareSpec
from .config import Ctx


def resolve_hardware(c: Ctx, raw: Any, path: str) -> HardwareSpec:
    """A hardware table (preset + args + spec keys, or spec keys alone) -> HardwareSpec."""
    t = dict(c.table(raw, path, ("preset", "args") + SPEC_KEYS))
    preset = t.pop("preset", None)
    args = t.pop("args", None)
    base: dict = {}
    if preset is not None:
        c.string(f"{path}.preset", preset, tuple(PRESETS))
        args = c.table(args or {}, f"{path}.args", PRESETS[preset].parameters)
        try:
            base = PRESETS[preset](**args).to_dict()
        except ConfigError as err:
            raise c.wrap(f"{path}.args", err) from None
    elif args is not None:
        raise c.error(f"{path}.args", args, "args only together with a preset")
    base.update(t)
    try:
        return HardwareSpec.from_dict(base)
    except ConfigError as err:
        raise c.wrap(path, err) from None


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    if "preset" in over:
        out.pop("args", None)
    for k, v in over.items():
        if k == "args" and isinstance(v, dict) and isinstance(out.get("args"), dict):
            out["args"] = {**out["args"], **v}
        else:
            out[k] = copy.deepcopy(v)
    return out


def hardware_tables(c: Ctx, raw: dict) -> tuple[dict, dict[str, HardwareSpec], bool]:
    raw = dict(raw)
    variants = raw.pop("variants", None)
    base = resolve_hardware(c, raw, "hardware")
    if variants is None:
        return raw, {"base": base}, False
    c.table(variants, "hardware.variants", tuple(variants) if isinstance(variants, dict) else ())
    if not variants:
        raise c.error("hardware.variants", variants, "at least one named variant table")
    out = {}
    for k, v in variants.items():
        if not isinstance(v, dict):
            raise c.error(f"hardware.variants.{k}", v, "a table overriding keys of [hardware]")
        c.table(v, f"hardware.variants.{k}", ("preset", "args") + SPEC_KEYS)
        out[str(k)] = resolve_hardware(c, _merge(raw, v), f"hardware.variants.{k}")
    return raw, out, True
