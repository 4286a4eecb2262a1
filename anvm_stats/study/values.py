"""Value checks of a study beyond a single number's range: the study name as a path component, and sweep grids
(every value normalised, distinct after normalisation, and applicable to every chip)."""

from __future__ import annotations

import re
from typing import Any

from ..errors import ConfigError
from ..hardware.spec import HardwareSpec
from .config import Ctx

#: a name that is one safe path component: no separator, not "." or "..", not hidden, not an option
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
NAME_ALLOWED = ("a single folder name: letters, digits, '_', '.' and '-', starting with a letter, digit or '_' "
                "(no path separators, not '.' or '..')")
INTEGER_KNOBS = ("adc_bits", "dac_bits", "adc_levels", "dac_levels")


def safe_name(c: Ctx, path: str, name: Any) -> str:
    """``name`` if it is a single safe path component (it names a report folder), else a StudyError."""
    name = c.string(path, name)
    if not SAFE_NAME.fullmatch(name):
        raise c.error(path, name, NAME_ALLOWED)
    return name


def distinct(c: Ctx, path: str, values: list, integer: bool = False) -> None:
    """Refuse values equal after normalisation (``1`` and ``1.0``, ``0.0`` and ``-0.0``)."""
    seen: dict = {}
    for i, v in enumerate(values):
        key = int(v) if integer else float(v)
        if key in seen:
            raise c.error(f"{path}[{i}]", v, f"distinct values (equal to {path}[{seen[key]}] = "
                                             f"{values[seen[key]]!r})")
        seen[key] = i


def grid_values(c: Ctx, knob: str, values: Any) -> tuple:
    """The validated values of one grid knob (each in its range, distinct after normalisation)."""
    path = f"sweep.grid.{knob}"
    if not isinstance(values, list) or not values:
        raise c.error(path, values, "a non-empty list of values")
    for i, v in enumerate(values):
        p = f"{path}[{i}]"
        if knob in ("adc_bits", "dac_bits"):
            c.number(p, v, low=1, high=24, integer=True)
        elif knob in ("adc_levels", "dac_levels"):
            c.number(p, v, low=2, integer=True)
        elif knob == "stuck_at_rate":
            c.number(p, v, low=0, high=1)
        elif knob == "t_inference":
            c.number(p, v, low=0, low_open=True)
        elif knob == "mean_shift":
            c.number(p, v)
        else:
            c.number(p, v, low=0)
    distinct(c, path, values, integer=knob in INTEGER_KNOBS)
    return tuple(values)


def check_knobs(c: Ctx, grid: dict, hardware: dict[str, HardwareSpec]) -> None:
    """Apply every grid value to every chip, as the run will (a drift knob below the spec's t0 is caught here,
    wherever it sits in its list)."""
    for label, spec in hardware.items():
        for knob, values in grid.items():
            for i, v in enumerate(values):
                try:
                    spec.with_knobs(**{knob: v})
                except ConfigError as err:
                    raise c.error(f"sweep.grid.{knob}[{i}]", v,
                                  f"a knob of hardware {label!r}: {err.allowed}") from None
