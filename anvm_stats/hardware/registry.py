"""Registry of serialisable hardware components (effects, mappings, quantisers) by their ``kind`` string.

A component is a frozen dataclass with a class attribute ``kind``. ``to_dict`` writes its fields plus ``kind``;
``from_dict`` looks the kind up here, rejects unknown keys by name and lets the dataclass validate the values.
User-defined components join with :func:`register`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from ..errors import ConfigError

_REGISTRY: dict[str, dict[str, type]] = {"effect": {}, "mapping": {}, "quantizer": {}}

T = TypeVar("T", bound=type)


def register(family: str):
    """Class decorator adding a component class to ``family`` ("effect", "mapping" or "quantizer")."""
    if family not in _REGISTRY:
        raise ConfigError("family", family, f"one of {sorted(_REGISTRY)}")

    def deco(cls: T) -> T:
        kind = getattr(cls, "kind", None)
        if not isinstance(kind, str) or not kind:
            raise ConfigError(f"{cls.__name__}.kind", kind, "a non-empty string class attribute")
        _REGISTRY[family][kind] = cls
        return cls

    return deco


def known(family: str) -> list[str]:
    """Registered kinds of ``family``."""
    return sorted(_REGISTRY[family])


def to_dict(component: Any) -> dict[str, Any]:
    """Serialise a component dataclass to plain data (tuples become lists)."""
    out: dict[str, Any] = {"kind": component.kind}
    for f in dataclasses.fields(component):
        if not f.init:
            continue
        v = getattr(component, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def from_dict(family: str, data: dict[str, Any], where: str = "") -> Any:
    """Build a registered component from plain data.

    Raises
    ------
    ConfigError
        For a missing or unknown ``kind`` or an unknown key, naming ``where`` (e.g. ``"effects[1]"``).
    """
    prefix = f"{where}." if where else ""
    if not isinstance(data, dict):
        raise ConfigError(where or family, data, "a table/dict with a 'kind' key")
    kind = data.get("kind")
    if kind not in _REGISTRY[family]:
        raise ConfigError(f"{prefix}kind", kind, f"one of {known(family)}")
    cls = _REGISTRY[family][kind]
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {k: v for k, v in data.items() if k != "kind"}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}", kwargs[unknown[0]], f"a field of {kind!r}: one of {sorted(names)}")
    for k, v in list(kwargs.items()):
        if isinstance(v, list):
            kwargs[k] = tuple(v)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{prefix}{err.field}", err.value, err.allowed) from None
