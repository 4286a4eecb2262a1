"""``check_device``: the contract every device effect must keep, checked property by property.

Properties, in the order checked (the first failure raises :class:`DeviceContractError`):
``protocol`` (members exist, ``draw`` gives ``[n]`` tensors, ``with_knob`` answers None to unknown knobs);
``no_mutation`` (``apply`` leaves its input and the draws alone: sweeps re-apply the same draws);
``shape_dtype`` (float32 and float64, ``[n]`` and stacked chips ``[K, n]`` as an expanded, non-writable view);
``determinism`` (same seed: same draws, same generator state after, same outputs, while the global RNGs move
between the runs, so a device using them fails); ``draws_independent_of_parameters`` (``with_knob`` copies draw
exactly the same); ``bounds`` (where clipping is declared, by ``clips``/``clip`` attribute or ``clips=``, all
outputs lie in ``[g_min, g_max]``, tested with ``g_min > 0``); ``instance_independence`` (two seeds'
outputs at one input are uncorrelated within sampling error); ``zero_noise_identity`` (where declared);
``moments`` (where declared: mean and sd at a few input levels within sampling error).

Statistical checks (``instance_independence``, ``moments``) share the false-failure rate ``alpha`` (default 1e-6
per call: Bonferroni over all their tests, two-sided normal quantiles with sampling errors estimated from the
sample itself). Deterministic failures are shrunk to the smallest number of devices that still fails and
reported as one device: its input, draws and output.

The properties themselves: :mod:`.properties` (deterministic), :mod:`.statistical`; how they exercise an effect:
:mod:`.probes`.
"""

from __future__ import annotations

from typing import Callable

from scipy.stats import norm

from ..errors import AnvmError
from ..hardware.effects import Bounds
from . import properties, statistical
from .probes import Case, Finding, global_rngs_restored, knob_copies, shrink_sizes

PROPERTIES = ("protocol", "no_mutation", "shape_dtype", "determinism", "draws_independent_of_parameters", "bounds",
              "instance_independence", "zero_noise_identity", "moments")
_IN_BOUNDS_KINDS = ("levels", "stuck_at")


class DeviceContractError(AnvmError, AssertionError):
    """A device effect breaks the contract.

    Attributes
    ----------
    property : str
        Which property failed (one of :data:`PROPERTIES`).
    detail : str
        What was observed.
    example : dict or None
        A minimal failing case (input, draws, outputs of one device; or the level and statistics).
    """

    def __init__(self, prop: str, kind: str, detail: str, example=None):
        self.property, self.kind, self.detail, self.example = prop, kind, detail, example
        msg = f"device {kind!r} breaks the contract: property {prop!r} failed: {detail}"
        if example is not None:
            msg += f"\nminimal example: {example}"
        super().__init__(msg)


def declares_clipping(effect, clips: bool | None = None) -> bool:
    """Whether ``effect`` promises outputs in ``[g_min, g_max]``: ``clips`` if given, else its ``clips`` or
    ``clip`` attribute, else True for the always-in-window built-ins (levels, stuck-at)."""
    if clips is not None:
        return bool(clips)
    for attr in ("clips", "clip"):
        if hasattr(effect, attr):
            return bool(getattr(effect, attr))
    return getattr(effect, "kind", None) in _IN_BOUNDS_KINDS


def _shrunk(case: Case, check: Callable[[Case, int], Finding | None]) -> Finding | None:
    """``check`` with ``case.n`` devices; on failure the finding at the smallest size that still fails."""
    res = check(case, case.n)
    if res is None:
        return None
    return next((r for r in (check(case, m) for m in shrink_sizes(case.n)) if r is not None), res)


def check_device(effect, *, declared_mean=None, declared_std=None, zero_noise=None, clips: bool | None = None,
                 bounds: Bounds | None = None, n: int = 20_000, seed: int = 0, alpha: float = 1e-6,
                 levels=(0.15, 0.5, 0.85)) -> dict[str, str]:
    """Assert that a device effect keeps the contract of :mod:`anvm_stats.devices` (see this module's docstring).

    Parameters
    ----------
    effect : DeviceEffect
    declared_mean, declared_std : float or callable ``g [n] -> Tensor [n]``, optional
        Expected mean and standard deviation of the output given a constant input ``g`` (tested at ``levels``).
    zero_noise : effect, mapping knob -> value, or True, optional
        The zero-noise version (an effect, or ``with_knob`` settings such as ``{"noise_level": 0.0}``, or True
        when ``effect`` itself is noiseless), which must return its input.
    clips : bool, optional
        Whether outputs stay in ``[g_min, g_max]``; default from the effect (see :func:`declares_clipping`).
    bounds : Bounds
        Test window; default ``[0.1, 1]``.
    n : int
        Devices per check (statistical power: sampling errors scale as ``1/sqrt(n)``).
    seed : int
        Generator seed of the checks (the check is itself deterministic).
    alpha : float
        False-failure rate of the statistical checks together.
    levels : sequence of float in [0, 1]
        Input levels of the moment checks, as fractions of the window.

    Returns
    -------
    dict property -> "passed" or "skipped: <why>"

    Raises
    ------
    DeviceContractError
        Naming the first property that fails, with a minimal example.
    """
    levels = tuple(levels)
    n_tests = 2 + len(levels) * ((declared_mean is not None) + (declared_std is not None))
    case = Case(effect=effect, kind=str(getattr(effect, "kind", type(effect).__name__)),
                bounds=bounds or Bounds(g_min=0.1, g_max=1.0), n=int(n), seed=int(seed),
                clips=declares_clipping(effect, clips), zero_noise=zero_noise, declared_mean=declared_mean,
                declared_std=declared_std, levels=levels, z=float(norm.isf(float(alpha) / (2.0 * n_tests))))
    knobs = [k for k, _, _ in knob_copies(effect)]
    steps = [  # property, check (None: skipped), shrink deterministic failures, "passed" text
        ("protocol", lambda c, n: properties.protocol(c), False, "passed"),
        ("no_mutation", properties.no_mutation, True, "passed"),
        ("shape_dtype", properties.shape_dtype, True, "passed"),
        ("determinism", properties.determinism, True, "passed"),
        ("draws_independent_of_parameters", properties.draws_independent_of_parameters if knobs else None, True,
         f"passed (knobs {knobs})"),
        ("bounds", properties.bounds if case.clips else None, True, "passed"),
        ("instance_independence", lambda c, n: statistical.instance_independence(c), False, "passed"),
        ("zero_noise_identity", properties.zero_noise_identity if zero_noise is not None else None, True, "passed"),
        ("moments", (lambda c, n: statistical.moments(c)) if declared_mean is not None or declared_std is not None
         else None, False, "passed"),
    ]
    why = {"draws_independent_of_parameters": "no knobs", "bounds": "no clipping declared"}
    report: dict[str, str] = {}
    with global_rngs_restored():
        for prop, check, shrink, passed in steps:
            if check is None:
                report[prop] = f"skipped: {why.get(prop, 'not declared')}"
                continue
            found = _shrunk(case, check) if shrink else check(case, case.n)
            if found is not None:
                raise DeviceContractError(prop, case.kind, *found)
            report[prop] = passed
    return report


def check_spec(spec, **kwargs) -> dict[str, dict[str, str]]:
    """:func:`check_device` on every effect of a HardwareSpec, in the spec's window; returns the reports by
    ``"<index>:<kind>"``."""
    kwargs.setdefault("bounds", spec.bounds)
    return {f"{i}:{e.kind}": check_device(e, **kwargs) for i, e in enumerate(spec.effects)}
