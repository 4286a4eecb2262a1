"""Device models beyond the core: your own devices, measured devices, and presets from the literature.

Writing your own device effect
==============================
A device effect is any object with five members; nothing in the package needs to change to use one. It goes in
``HardwareSpec(effects=(...))`` and from there into :func:`anvm_stats.montecarlo.evaluate` / ``sweep``, HA-SGD
training (which samples chips from the spec) and the spec-level sensitivity analysis (which samples the weight
perturbation moments from the same sampler).

``kind`` : str (class attribute)
    Unique name; the key under which ``to_dict`` / ``from_dict`` / TOML find the class.
``phase`` : "program" or "read" (class attribute)
    ``"program"``: drawn once when a chip is programmed and then held (programming error, faults, drift);
    ``"read"``: drawn afresh at every forward pass (read / cycle-to-cycle noise).
``draw(n, generator, *, device, dtype) -> dict[str, Tensor [n]]``
    The base randomness of ONE chip instance for ``n`` devices, drawn from ``generator`` ONLY (never the global
    RNG). What is drawn - how many numbers, of which distribution - must not depend on the effect's parameter
    values: a sweep draws once and re-applies every grid point to the same draws (common random numbers), and
    effects share one generator per chip in order, so a parameter-dependent draw would shift every later
    effect's randomness.
``apply(g, draws, bounds) -> Tensor``
    The conductances after the effect. ``g`` is ``[..., n]`` (normalised: ``bounds.g_max`` is 1, ``bounds.g_min``
    the off/on ratio; usually ``[K, n]`` for K chips, possibly an expanded, non-writable view) and each draw is
    ``[..., n]`` (stacked per chip). Must be a pure function: return a new tensor of the same shape and dtype,
    never modify ``g`` or the draws in place. It should be differentiable in ``g`` when used for training.
``with_knob(name, value) -> effect or None``
    A copy with a sweep knob set (``noise_level``, ``t_inference``, ``stuck_at_rate``, ... - the dims a sweep
    understands are :data:`anvm_stats.hardware.KNOBS`), or ``None`` when the effect has no such knob.

Make it a ``@dataclass(frozen=True, kw_only=True)`` with the parameters as fields (validated in
``__post_init__``) and decorate it with ``@anvm_stats.hardware.register("effect")`` so a spec holding it
serialises to dict/JSON/TOML and reloads. Optionally declare ``clips`` (bool attribute or property: outputs stay
in ``[g_min, g_max]``), which :func:`anvm_stats.testing.check_device` then verifies along with the rest of the
contract (shape/dtype, determinism, parameter-free draws, no mutation, independence between instances,
zero-noise identity and declared moments)::

    @register("effect")
    @dataclass(frozen=True, kw_only=True)
    class Telegraph:
        kind: ClassVar[str] = "telegraph"
        phase: ClassVar[str] = "program"
        amplitude: float = 0.05
        def draw(self, n, generator, *, device, dtype):
            return {"u": torch.rand(n, generator=generator, device=device, dtype=dtype)}
        def apply(self, g, draws, bounds):
            return g + bounds.span * self.amplitude * torch.sign(draws["u"] - 0.5)
        def with_knob(self, name, value):
            return replace(self, amplitude=float(value)) if name == "noise_level" else None

Or adapt a plain function ``fn(g, draws, bounds, **knobs) -> Tensor`` with :func:`effect_from_function`::

    jitter = effect_from_function(lambda g, d, b, noise_level: g + b.span * noise_level * d["z"],
                                  kind="jitter", knobs={"noise_level": 0.05})

Measured devices: :class:`EmpiricalDevice` (``from_table``, ``from_csv``, ``from_netcdf``). Literature presets:
:mod:`anvm_stats.devices.presets` (``PRESETS``, ``preset(name, **args)``; ``anvm-stats presets`` lists them). PCM effects: :mod:`anvm_stats.devices.pcm`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import torch

from ..errors import check, check_number
from ..hardware.registry import register
from .empirical import LEVEL, EmpiricalDevice
from .pcm import PCMDrift, PCMProgrammingNoise, PCMReadNoise
from .presets import (
    PRESETS, NeuRRAMNoise, Preset, ideal, neurram_rram, paper1, pcm_joshi2020, pcm_nandakumar2019, preset,
    rram_charan, xiao_state_independent, xiao_state_proportional,
)

_DRAW_KINDS = ("normal", "uniform")


def _draw(self, n, generator, *, device, dtype):
    out = {}
    for name, how in self.draw_kinds:
        sampler = torch.randn if how == "normal" else torch.rand
        out[name] = sampler(n, generator=generator, device=device, dtype=dtype)
    return out


def _apply(self, g, draws, bounds):
    out = type(self).function(g, draws, bounds, **{k: getattr(self, k) for k in self.knob_names})
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"effect {self.kind!r}: the function returned {type(out).__name__}, not a Tensor")
    return out.clamp(bounds.g_min, bounds.g_max) if self.clips else out


def _with_knob(self, name, value):
    if name not in self.knob_names:
        return None
    check_number(name, value)
    return dataclasses.replace(self, **{name: float(value)})


def _post_init(self):
    for k in self.knob_names:
        check_number(f"{self.kind}.{k}", getattr(self, k))


def _reduce(self):
    return (_rebuild, (type(self).function, self.kind, self.phase, dict(self.draw_kinds), type(self).defaults,
                       self.clips, {k: getattr(self, k) for k in self.knob_names}))


def _rebuild(fn, kind, phase, draws, knobs, clips, values):
    return dataclasses.replace(effect_from_function(fn, kind=kind, phase=phase, draws=draws, knobs=knobs,
                                                    clips=clips), **values)


def effect_from_function(fn: Callable, *, kind: str, phase: str = "program",
                         draws: Sequence[str] | Mapping[str, str] = ("z",),
                         knobs: Mapping[str, float] | None = None, clips: bool = False):
    """Adapt a plain function to a registered device effect.

    Parameters
    ----------
    fn : callable ``fn(g, draws, bounds, **knobs) -> Tensor``
        ``g`` [..., n] normalised conductances, ``draws`` dict of [..., n] tensors named as in ``draws``,
        ``bounds`` the :class:`~anvm_stats.hardware.Bounds`; keyword arguments are the current knob values.
        Must not modify ``g`` or the draws in place, and must use no randomness of its own.
    kind : str
        Registry name of the new effect class (re-using a kind replaces the earlier registration).
    phase : {"program", "read"}
    draws : sequence of names, or mapping name -> {"normal", "uniform"}
        Base randomness per device: standard normal (default) or uniform on [0, 1).
    knobs : mapping name -> default value, optional
        Parameters of ``fn``; each becomes a dataclass field and a sweep knob answered by ``with_knob`` (use the
        names of :data:`anvm_stats.hardware.KNOBS`, e.g. ``noise_level``, to sweep them).
    clips : bool
        Clamp the result to ``[g_min, g_max]`` (and declare it, for :func:`anvm_stats.testing.check_device`).

    Returns
    -------
    effect
        An instance (with the default knob values) of a new frozen dataclass registered under ``kind``;
        ``type(effect)(noise_level=...)`` builds others, ``to_dict`` stores the knob values. A spec holding it
        reloads from dict/TOML in any process that has called ``effect_from_function`` with the same ``kind``;
        it pickles when ``fn`` does (a module-level function).
    """
    check(callable(fn), "fn", fn, "a callable fn(g, draws, bounds, **knobs)")
    check(isinstance(kind, str) and kind.isidentifier(), "kind", kind, "a non-empty identifier-like string")
    check(phase in ("program", "read"), "phase", phase, "'program' or 'read'")
    check(isinstance(clips, bool), "clips", clips, "true or false")
    pairs = list(draws.items()) if isinstance(draws, Mapping) else [(d, "normal") for d in draws]
    for name, how in pairs:
        check(isinstance(name, str) and name != "", "draws", name, "non-empty names")
        check(how in _DRAW_KINDS, f"draws[{name!r}]", how, f"one of {_DRAW_KINDS}")
    knobs = dict(knobs or {})
    for name, v in knobs.items():
        check(name.isidentifier() and name not in ("kind", "phase", "clips"), "knobs", name,
              "identifier names other than kind, phase, clips")
        check_number(f"knobs[{name!r}]", v)
    fields = [(k, float, dataclasses.field(default=float(v))) for k, v in knobs.items()]
    namespace = {
        "kind": kind, "phase": phase, "clips": clips, "function": staticmethod(fn),
        "draw_kinds": tuple(pairs), "knob_names": tuple(knobs), "defaults": dict(knobs),
        "draw": _draw, "apply": _apply, "with_knob": _with_knob, "__post_init__": _post_init,
        "__reduce__": _reduce,
        "__doc__": f"Device effect {kind!r} adapted from {getattr(fn, '__qualname__', fn)!r} "
                   f"(phase {phase!r}, draws {dict(pairs)}, knobs {knobs}).",
    }
    cls = dataclasses.make_dataclass("FunctionEffect", fields, namespace=namespace, frozen=True, kw_only=True)
    cls.__module__ = getattr(fn, "__module__", __name__) or __name__
    register("effect")(cls)
    return cls()


__all__ = [
    "effect_from_function", "EmpiricalDevice", "LEVEL", "PCMProgrammingNoise", "PCMDrift", "PCMReadNoise",
    "NeuRRAMNoise", "PRESETS", "Preset", "preset", "ideal", "paper1", "xiao_state_independent",
    "xiao_state_proportional", "rram_charan", "pcm_joshi2020", "pcm_nandakumar2019", "neurram_rram",
]
