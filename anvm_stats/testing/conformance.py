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
"""

from __future__ import annotations

import math
import random
from contextlib import contextmanager
from typing import Callable, Mapping

import numpy as np
import torch
from scipy.stats import norm

from ..errors import AnvmError, ConfigError
from ..hardware.effects import Bounds, validate_effect
from ..hardware.spec import KNOBS

Tensor = torch.Tensor
PROPERTIES = ("protocol", "no_mutation", "shape_dtype", "determinism", "draws_independent_of_parameters", "bounds",
              "instance_independence", "zero_noise_identity", "moments")
#: values tried for each knob in ``draws_independent_of_parameters`` (the first valid one is used)
KNOB_TRIALS = {"noise_level": (0.0, 0.37, 2.0), "t_inference": (1e5, 1e3), "stuck_at_rate": (0.0, 0.2),
               "adc_bits": (4,), "dac_bits": (4,)}
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


@contextmanager
def _global_rngs_restored():
    """Leave torch's, numpy's and Python's global RNG states as they were (they still move inside)."""
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


def _draw(effect, n: int, seed: int, dtype) -> tuple[dict, Tensor]:
    gen = torch.Generator().manual_seed(int(seed))
    d = effect.draw(n, gen, device=torch.device("cpu"), dtype=dtype)
    return d, gen.get_state()


def _stacked(effect, n: int, seeds, dtype) -> dict:
    per = [_draw(effect, n, s, dtype)[0] for s in seeds]
    return {k: torch.stack([d[k] for d in per]) for k in per[0]}


def _window(bounds: Bounds, n: int, dtype) -> Tensor:
    if n == 1:
        return torch.tensor([0.5 * (bounds.g_min + bounds.g_max)], dtype=dtype)
    return torch.linspace(bounds.g_min, bounds.g_max, n, dtype=dtype)


def _same(a, b) -> bool:
    ok = isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and a.dtype == b.dtype
    return ok and bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())


def _same_draws(a: Mapping, b: Mapping) -> bool:
    return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)


def _first_diff(a: Tensor, b: Tensor) -> int:
    diff = ~((a == b) | (torch.isnan(a) & torch.isnan(b))).reshape(-1)
    return int(diff.nonzero()[0, 0]) if diff.any() else 0


def _device(i: int, g: Tensor, draws: Mapping, **outs) -> dict:
    """One device's case as plain floats."""
    ex = {"g": float(g.reshape(-1)[i]), "draws": {k: float(v.reshape(-1)[i]) for k, v in draws.items()}}
    ex.update({k: float(v.reshape(-1)[i]) for k, v in outs.items()})
    return ex


def _sizes(n: int) -> list[int]:
    out, m = [], 1
    while m < n:
        out.append(m)
        m = m + 1 if m < 4 else 2 * m
    return out


def declares_clipping(effect, clips: bool | None = None) -> bool:
    """Whether ``effect`` promises outputs in ``[g_min, g_max]``: ``clips`` if given, else its ``clips`` or
    ``clip`` attribute, else True for the always-in-window built-ins (levels, stuck-at)."""
    if clips is not None:
        return bool(clips)
    for attr in ("clips", "clip"):
        if hasattr(effect, attr):
            return bool(getattr(effect, attr))
    return getattr(effect, "kind", None) in _IN_BOUNDS_KINDS


def _knob_copies(effect):
    names = list(KNOBS) + [k for k in getattr(effect, "knob_names", ()) if k not in KNOBS]
    for name in names:
        for value in KNOB_TRIALS.get(name, (0.0, 0.37, 2.0)):
            try:
                new = effect.with_knob(name, value)
            except (ConfigError, ValueError):
                continue
            if new is not None:
                yield name, value, new
            break


def _moment(declared, g: Tensor) -> Tensor:
    v = declared(g) if callable(declared) else declared
    return torch.as_tensor(v, dtype=g.dtype).expand_as(g)


class _Checker:
    def __init__(self, effect, bounds, n, seed, clips, zero_noise, declared_mean, declared_std, levels, alpha):
        self.e, self.b, self.n, self.seed = effect, bounds, n, seed
        self.kind = str(getattr(effect, "kind", type(effect).__name__))
        self.clips, self.zero_noise = clips, zero_noise
        self.mean, self.std, self.levels = declared_mean, declared_std, levels
        n_tests = 2 + len(levels) * ((declared_mean is not None) + (declared_std is not None))
        self.z = float(norm.isf(alpha / (2.0 * n_tests)))

    def fail(self, prop, detail, example=None):
        raise DeviceContractError(prop, self.kind, detail, example)

    def shrink(self, prop, check: Callable[[int], tuple | None]) -> None:
        """Run ``check(n)``; on failure report the smallest size that still fails."""
        res = check(self.n)
        if res is not None:
            smaller = (r for r in map(check, _sizes(self.n)) if r is not None)
            self.fail(prop, *next(smaller, res))

    # ----------------------------------------------------------------- properties
    def protocol(self):
        try:
            validate_effect(self.e, "effect")
        except ConfigError as err:
            self.fail("protocol", str(err))
        d, _ = _draw(self.e, 5, self.seed, torch.float64)
        if not isinstance(d, Mapping) or not all(isinstance(v, Tensor) and v.shape == (5,) for v in d.values()):
            self.fail("protocol", "draw(n=5, ...) must return a dict of tensors of shape [5]",
                      {k: getattr(v, "shape", type(v).__name__) for k, v in dict(d).items()}
                      if isinstance(d, Mapping) else type(d).__name__)
        if self.e.with_knob("__not_a_knob__", 1.0) is not None:
            self.fail("protocol", "with_knob must return None for a knob the effect does not have")

    def no_mutation(self, n):
        g = _window(self.b, n, torch.float64)
        d, _ = _draw(self.e, n, self.seed, torch.float64)
        g0, d0 = g.clone(), {k: v.clone() for k, v in d.items()}
        try:
            out = self.e.apply(g, d, self.b)
        except RuntimeError as err:
            return f"apply raised {err!r}", {"n": n}
        if not _same(g, g0):
            i = _first_diff(g, g0)
            return "apply modified its input g in place", {"n": n, **_device(i, g0, d0, g_after=g, output=out)}
        for k in d:
            if not _same(d[k], d0[k]):
                i = _first_diff(d[k], d0[k])
                return f"apply modified the draw {k!r} in place", {"n": n, **_device(i, g0, d0, after=d[k])}
        return None

    def shape_dtype(self, n):
        for dtype in (torch.float32, torch.float64):
            g = _window(self.b, n, dtype)
            try:
                out = self.e.apply(g, _draw(self.e, n, self.seed, dtype)[0], self.b)
                big = self.e.apply(g.expand(3, n), _stacked(self.e, n, (self.seed, self.seed + 1, self.seed + 2),
                                                            dtype), self.b)
            except Exception as err:  # noqa: BLE001 - any failure here is the finding
                return f"apply raised {err!r} on {dtype} input", {"n": n, "dtype": str(dtype)}
            for shape, res in (((n,), out), ((3, n), big)):
                if not isinstance(res, Tensor) or tuple(res.shape) != shape or res.dtype != dtype:
                    return (f"input {list(shape)} {dtype} gave {getattr(res, 'shape', type(res).__name__)} "
                            f"{getattr(res, 'dtype', '')}", {"n": n, "dtype": str(dtype), "input_shape": list(shape)})
        return None

    def determinism(self, n):
        g = _window(self.b, n, torch.float64)
        d1, s1 = _draw(self.e, n, self.seed, torch.float64)
        o1 = self.e.apply(g, d1, self.b)
        d2, s2 = _draw(self.e, n, self.seed, torch.float64)
        o2 = self.e.apply(g, d2, self.b)
        for k in set(d1) | set(d2):
            if k not in d1 or k not in d2 or not _same(d1[k], d2[k]):
                if k in d1 and k in d2:
                    i = _first_diff(d1[k], d2[k])
                    return (f"the same generator seed gave different draws {k!r} (randomness not from the "
                            f"generator?)", {"n": n, "g": float(g[i]), "draw_1": float(d1[k][i]),
                                             "draw_2": float(d2[k][i])})
                return f"the same seed gave different draw keys {sorted(d1)} vs {sorted(d2)}", {"n": n}
        if not torch.equal(s1, s2):
            return "the same seed left the generator in different states", {"n": n}
        if not _same(o1, o2):
            i = _first_diff(o1, o2)
            return ("the same draws gave different outputs (apply uses randomness of its own?)",
                    {"n": n, **_device(i, g, d1, output_1=o1, output_2=o2)})
        return None

    def draws_independent(self, n):
        d0, s0 = _draw(self.e, n, self.seed, torch.float64)
        for name, value, new in _knob_copies(self.e):
            d1, s1 = _draw(new, n, self.seed, torch.float64)
            if not _same_draws(d0, d1) or not torch.equal(s0, s1):
                ex = {"n": n, "knob": name, "value": value}
                common = [k for k in d0 if k in d1 and d0[k].shape == d1[k].shape]
                if common and not _same(d0[common[0]], d1[common[0]]):
                    i = _first_diff(d0[common[0]], d1[common[0]])
                    ex.update(draw=common[0], original=float(d0[common[0]][i]), with_knob=float(d1[common[0]][i]))
                return f"with_knob({name!r}, {value}) draws differently from the original", ex
        return None

    def bounds(self, n):
        g = _window(self.b, n, torch.float64)
        d = _stacked(self.e, n, (self.seed, self.seed + 1), torch.float64)
        gg = g.expand(2, n)
        out = self.e.apply(gg, d, self.b)
        bad = (out < self.b.g_min) | (out > self.b.g_max) | torch.isnan(out)
        if bad.any():
            i = int(bad.reshape(-1).nonzero()[0, 0])
            # replay that one device alone: the minimal example is a single input and its draws
            g1 = gg.reshape(-1)[i:i + 1].clone()
            d1 = {k: v.reshape(-1)[i:i + 1].clone() for k, v in d.items()}
            o1 = self.e.apply(g1, d1, self.b)
            alone = bool(((o1 < self.b.g_min) | (o1 > self.b.g_max) | torch.isnan(o1)).any())
            ex = _device(0, g1, d1, output=o1) if alone else _device(i, gg, d, output=out)
            return (f"declared clipping but an output left [{self.b.g_min}, {self.b.g_max}]",
                    {"n": 1 if alone else n, "bounds": [self.b.g_min, self.b.g_max], **ex})
        return None

    def independence(self):
        n = self.n
        for frac in (0.3, 0.7):
            g = torch.full((n,), self.b.g_min + frac * self.b.span, dtype=torch.float64)
            d1, _ = _draw(self.e, n, self.seed, torch.float64)
            d2, _ = _draw(self.e, n, self.seed + 7919, torch.float64)
            if d1 and _same_draws(d1, d2):
                self.fail("instance_independence", "two generator seeds gave identical draws (generator ignored?)",
                          {"seeds": [self.seed, self.seed + 7919], "n": n})
            o1, o2 = self.e.apply(g, d1, self.b), self.e.apply(g, d2, self.b)
            if bool((o1 == o1[0]).all()) or bool((o2 == o2[0]).all()):
                continue  # no randomness at this input: nothing to correlate
            r = float(torch.corrcoef(torch.stack([o1, o2]))[0, 1])
            if not abs(r) <= self.z / math.sqrt(n):
                self.fail("instance_independence",
                          f"outputs of two instances correlate: r = {r:.4g}, beyond +-{self.z / math.sqrt(n):.3g}",
                          {"g": float(g[0]), "n": n, "correlation": r})

    def zero_identity(self, n):
        eff = self.zero_noise
        if isinstance(eff, Mapping):
            eff = self.e
            for k, v in self.zero_noise.items():
                new = eff.with_knob(k, v)
                if new is None:
                    self.fail("zero_noise_identity", f"zero_noise sets knob {k!r}, which the effect does not answer")
                eff = new
        elif eff is True:
            eff = self.e
        g = _window(self.b, n, torch.float64)
        d, _ = _draw(eff, n, self.seed, torch.float64)
        out = eff.apply(g, d, self.b)
        tol = 8 * torch.finfo(torch.float64).eps * max(1.0, float(g.abs().max()))
        if not bool(((out - g).abs() <= tol).all()):
            i = int(((out - g).abs() > tol).reshape(-1).nonzero()[0, 0]) if ((out - g).abs() > tol).any() else 0
            return "the declared zero-noise version changed its input", {"n": n, **_device(i, g, d, output=out)}
        return None

    def moments(self):
        n = self.n
        for frac in self.levels:
            g = torch.full((n,), self.b.g_min + frac * self.b.span, dtype=torch.float64)
            out = self.e.apply(g, _draw(self.e, n, self.seed + 104729, torch.float64)[0], self.b).double()
            mean, var = float(out.mean()), float(out.var())
            m4 = float(((out - mean) ** 4).mean())
            ex = {"g": float(g[0]), "n": n, "sample_mean": mean, "sample_std": math.sqrt(var)}
            if self.std is not None:
                sd = float(_moment(self.std, g)[0])
                tol = self.z * math.sqrt(max(m4 - var * var, 0.0) / n) + 1e-12
                if not abs(var - sd * sd) <= tol:
                    self.fail("moments", f"output sd {math.sqrt(var):.6g} vs declared {sd:.6g} at g={float(g[0]):.4g}",
                              {**ex, "declared_std": sd})
            if self.mean is not None:
                m = float(_moment(self.mean, g)[0])
                ref = float(_moment(self.std, g)[0]) if self.std is not None else math.sqrt(var)
                if not abs(mean - m) <= self.z * ref / math.sqrt(n) + 1e-12 * max(1.0, abs(m)):
                    self.fail("moments", f"output mean {mean:.6g} vs declared {m:.6g} at g={float(g[0]):.4g}",
                              {**ex, "declared_mean": m})


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
    b = bounds or Bounds(g_min=0.1, g_max=1.0)
    c = _Checker(effect, b, int(n), int(seed), declares_clipping(effect, clips), zero_noise, declared_mean,
                 declared_std, tuple(levels), float(alpha))
    knobs = [k for k, _, _ in _knob_copies(effect)]
    steps = [  # property, run (None: skipped), shrink deterministic failures, "passed" text
        ("protocol", c.protocol, False, "passed"),
        ("no_mutation", c.no_mutation, True, "passed"),
        ("shape_dtype", c.shape_dtype, True, "passed"),
        ("determinism", c.determinism, True, "passed"),
        ("draws_independent_of_parameters", c.draws_independent if knobs else None, True, f"passed (knobs {knobs})"),
        ("bounds", c.bounds if c.clips else None, True, "passed"),
        ("instance_independence", c.independence, False, "passed"),
        ("zero_noise_identity", c.zero_identity if zero_noise is not None else None, True, "passed"),
        ("moments", c.moments if declared_mean is not None or declared_std is not None else None, False, "passed"),
    ]
    why = {"draws_independent_of_parameters": "no knobs", "bounds": "no clipping declared"}
    report: dict[str, str] = {}
    with _global_rngs_restored():
        for prop, run, shrink, passed in steps:
            if run is None:
                report[prop] = f"skipped: {why.get(prop, 'not declared')}"
                continue
            c.shrink(prop, run) if shrink else run()
            report[prop] = passed
    return report


def check_spec(spec, **kwargs) -> dict[str, dict[str, str]]:
    """:func:`check_device` on every effect of a HardwareSpec, in the spec's window; returns the reports by
    ``"<index>:<kind>"``."""
    kwargs.setdefault("bounds", spec.bounds)
    return {f"{i}:{e.kind}": check_device(e, **kwargs) for i, e in enumerate(spec.effects)}
