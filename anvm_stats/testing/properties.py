"""The deterministic properties of the device contract, each ``property(case, n) -> Finding | None`` for ``n``
devices (so :func:`~anvm_stats.testing.check_device` can shrink a failure to the fewest devices that still fail).
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..errors import ConfigError
from ..hardware.effects import validate_effect
from .probes import (Case, Finding, device_case, draw_once, first_diff, knob_copies, same, same_draws,
                     stacked_draws, window)

Tensor = torch.Tensor


def protocol(case: Case) -> Finding | None:
    """Members exist, ``draw`` gives ``[n]`` tensors, ``with_knob`` answers None to unknown knobs."""
    try:
        validate_effect(case.effect, "effect")
    except ConfigError as err:
        return str(err), None
    d, _ = draw_once(case.effect, 5, case.seed, torch.float64)
    if not isinstance(d, Mapping) or not all(isinstance(v, Tensor) and v.shape == (5,) for v in d.values()):
        return ("draw(n=5, ...) must return a dict of tensors of shape [5]",
                {k: getattr(v, "shape", type(v).__name__) for k, v in dict(d).items()}
                if isinstance(d, Mapping) else type(d).__name__)
    if case.effect.with_knob("__not_a_knob__", 1.0) is not None:
        return "with_knob must return None for a knob the effect does not have", None
    return None


def no_mutation(case: Case, n: int) -> Finding | None:
    """``apply`` leaves its input and the draws alone (sweeps re-apply the same draws)."""
    e, b = case.effect, case.bounds
    g = window(b, n, torch.float64)
    d, _ = draw_once(e, n, case.seed, torch.float64)
    g0, d0 = g.clone(), {k: v.clone() for k, v in d.items()}
    try:
        out = e.apply(g, d, b)
    except RuntimeError as err:
        return f"apply raised {err!r}", {"n": n}
    if not same(g, g0):
        i = first_diff(g, g0)
        return "apply modified its input g in place", {"n": n, **device_case(i, g0, d0, g_after=g, output=out)}
    for k in d:
        if not same(d[k], d0[k]):
            i = first_diff(d[k], d0[k])
            return f"apply modified the draw {k!r} in place", {"n": n, **device_case(i, g0, d0, after=d[k])}
    return None


def shape_dtype(case: Case, n: int) -> Finding | None:
    """float32 and float64, ``[n]`` and stacked chips ``[K, n]`` as an expanded, non-writable view."""
    e, b, seed = case.effect, case.bounds, case.seed
    for dtype in (torch.float32, torch.float64):
        g = window(b, n, dtype)
        try:
            out = e.apply(g, draw_once(e, n, seed, dtype)[0], b)
            big = e.apply(g.expand(3, n), stacked_draws(e, n, (seed, seed + 1, seed + 2), dtype), b)
        except Exception as err:  # noqa: BLE001 - any failure here is the finding
            return f"apply raised {err!r} on {dtype} input", {"n": n, "dtype": str(dtype)}
        for shape, res in (((n,), out), ((3, n), big)):
            if not isinstance(res, Tensor) or tuple(res.shape) != shape or res.dtype != dtype:
                return (f"input {list(shape)} {dtype} gave {getattr(res, 'shape', type(res).__name__)} "
                        f"{getattr(res, 'dtype', '')}", {"n": n, "dtype": str(dtype), "input_shape": list(shape)})
    return None


def determinism(case: Case, n: int) -> Finding | None:
    """Same seed: same draws, same generator state after, same outputs (the global RNGs move in between)."""
    e, b = case.effect, case.bounds
    g = window(b, n, torch.float64)
    d1, s1 = draw_once(e, n, case.seed, torch.float64)
    o1 = e.apply(g, d1, b)
    d2, s2 = draw_once(e, n, case.seed, torch.float64)
    o2 = e.apply(g, d2, b)
    for k in set(d1) | set(d2):
        if k not in d1 or k not in d2 or not same(d1[k], d2[k]):
            if k in d1 and k in d2:
                i = first_diff(d1[k], d2[k])
                return (f"the same generator seed gave different draws {k!r} (randomness not from the "
                        f"generator?)", {"n": n, "g": float(g[i]), "draw_1": float(d1[k][i]),
                                         "draw_2": float(d2[k][i])})
            return f"the same seed gave different draw keys {sorted(d1)} vs {sorted(d2)}", {"n": n}
    if not torch.equal(s1, s2):
        return "the same seed left the generator in different states", {"n": n}
    if not same(o1, o2):
        i = first_diff(o1, o2)
        return ("the same draws gave different outputs (apply uses randomness of its own?)",
                {"n": n, **device_case(i, g, d1, output_1=o1, output_2=o2)})
    return None


def draws_independent_of_parameters(case: Case, n: int) -> Finding | None:
    """``with_knob`` copies draw exactly what the original draws (common random numbers across a sweep)."""
    d0, s0 = draw_once(case.effect, n, case.seed, torch.float64)
    for name, value, new in knob_copies(case.effect):
        d1, s1 = draw_once(new, n, case.seed, torch.float64)
        if not same_draws(d0, d1) or not torch.equal(s0, s1):
            ex = {"n": n, "knob": name, "value": value}
            common = [k for k in d0 if k in d1 and d0[k].shape == d1[k].shape]
            if common and not same(d0[common[0]], d1[common[0]]):
                i = first_diff(d0[common[0]], d1[common[0]])
                ex.update(draw=common[0], original=float(d0[common[0]][i]), with_knob=float(d1[common[0]][i]))
            return f"with_knob({name!r}, {value}) draws differently from the original", ex
    return None


def bounds(case: Case, n: int) -> Finding | None:
    """Where clipping is declared, every output lies in ``[g_min, g_max]``."""
    e, b = case.effect, case.bounds
    g = window(b, n, torch.float64)
    d = stacked_draws(e, n, (case.seed, case.seed + 1), torch.float64)
    gg = g.expand(2, n)
    out = e.apply(gg, d, b)
    bad = (out < b.g_min) | (out > b.g_max) | torch.isnan(out)
    if bad.any():
        i = int(bad.reshape(-1).nonzero()[0, 0])
        # replay that one device alone: the minimal example is a single input and its draws
        g1 = gg.reshape(-1)[i:i + 1].clone()
        d1 = {k: v.reshape(-1)[i:i + 1].clone() for k, v in d.items()}
        o1 = e.apply(g1, d1, b)
        alone = bool(((o1 < b.g_min) | (o1 > b.g_max) | torch.isnan(o1)).any())
        ex = device_case(0, g1, d1, output=o1) if alone else device_case(i, gg, d, output=out)
        return (f"declared clipping but an output left [{b.g_min}, {b.g_max}]",
                {"n": 1 if alone else n, "bounds": [b.g_min, b.g_max], **ex})
    return None


def zero_noise_identity(case: Case, n: int) -> Finding | None:
    """The declared zero-noise version returns its input."""
    eff = case.zero_noise
    if isinstance(eff, Mapping):
        eff = case.effect
        for k, v in case.zero_noise.items():
            new = eff.with_knob(k, v)
            if new is None:
                return f"zero_noise sets knob {k!r}, which the effect does not answer", None
            eff = new
    elif eff is True:
        eff = case.effect
    g = window(case.bounds, n, torch.float64)
    d, _ = draw_once(eff, n, case.seed, torch.float64)
    out = eff.apply(g, d, case.bounds)
    tol = 8 * torch.finfo(torch.float64).eps * max(1.0, float(g.abs().max()))
    if not bool(((out - g).abs() <= tol).all()):
        i = int(((out - g).abs() > tol).reshape(-1).nonzero()[0, 0]) if ((out - g).abs() > tol).any() else 0
        return "the declared zero-noise version changed its input", {"n": n, **device_case(i, g, d, output=out)}
    return None
