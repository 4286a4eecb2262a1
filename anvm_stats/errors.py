"""Exceptions raised by anvm_stats, each naming the offending field, the value and what is allowed."""

from __future__ import annotations


#: longest repr of a value quoted in an error message (longer ones are cut in the middle)
REPR_LIMIT = 200


def short_repr(value: object, limit: int = REPR_LIMIT) -> str:
    """``repr(value)``, cut in the middle to at most about ``limit`` characters (a message stays one short line
    even for a huge or deeply nested value)."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"<{type(value).__name__} nested too deeply to show>"
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}...({len(text) - 2 * half} characters)...{text[-half:]}"


class AnvmError(Exception):
    """Base class of every error anvm_stats raises on purpose."""


class ConfigError(AnvmError, ValueError):
    """A configuration value is outside its allowed set.

    Parameters
    ----------
    field : str
        Qualified name of the field, e.g. ``"ProgrammingNoise.sigma"``.
    value : object
        The value that was given.
    allowed : str
        Human-readable description of what is allowed.
    """

    def __init__(self, field: str, value: object, allowed: str):
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}={short_repr(value)} is not allowed: expected {allowed}")


class UnsupportedLayerError(AnvmError, TypeError):
    """A module of the network cannot be mapped to analog hardware or run beside it."""


class InvalidWeightsError(AnvmError, ValueError):
    """The network holds NaN or infinite parameters."""


def check(condition: bool, field: str, value: object, allowed: str) -> None:
    """Raise :class:`ConfigError` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(field, value, allowed)


def check_number(field: str, value: object, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, integer: bool = False) -> None:
    """Validate a real (or integer) number against an interval.

    Raises
    ------
    ConfigError
        Naming ``field`` and the interval when ``value`` is not a finite number inside it.
    """
    import math

    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    kind = "an integer" if integer else "a finite number"
    allowed = f"{kind} in {lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value).is_integer()
    if ok:
        v = float(value)
        ok = math.isfinite(v)
        if ok and low is not None:
            ok = v > low if low_open else v >= low
        if ok and high is not None:
            ok = v < high if high_open else v <= high
    if not ok:
        raise ConfigError(field, value, allowed)
