"""The statistical properties of the device contract, each ``property(case) -> Finding | None`` on
``case.n`` devices, at the normal quantile ``case.z`` (the false-failure rate shared by all their tests)."""

from __future__ import annotations

import math

import torch

from .probes import Case, Finding, declared_moment, draw_once, same_draws


def instance_independence(case: Case) -> Finding | None:
    """Two seeds' outputs at one input (30 % and 70 % of the window) are uncorrelated within sampling error."""
    e, b, n = case.effect, case.bounds, case.n
    for frac in (0.3, 0.7):
        g = torch.full((n,), b.g_min + frac * b.span, dtype=torch.float64)
        d1, _ = draw_once(e, n, case.seed, torch.float64)
        d2, _ = draw_once(e, n, case.seed + 7919, torch.float64)
        if d1 and same_draws(d1, d2):
            return ("two generator seeds gave identical draws (generator ignored?)",
                    {"seeds": [case.seed, case.seed + 7919], "n": n})
        o1, o2 = e.apply(g, d1, b), e.apply(g, d2, b)
        if bool((o1 == o1[0]).all()) or bool((o2 == o2[0]).all()):
            continue  # no randomness at this input: nothing to correlate
        r = float(torch.corrcoef(torch.stack([o1, o2]))[0, 1])
        if not abs(r) <= case.z / math.sqrt(n):
            return (f"outputs of two instances correlate: r = {r:.4g}, beyond +-{case.z / math.sqrt(n):.3g}",
                    {"g": float(g[0]), "n": n, "correlation": r})
    return None


def moments(case: Case) -> Finding | None:
    """Output mean and sd at each of ``case.levels`` agree with the declared ones within sampling error (the
    variance through its fourth-moment standard error)."""
    e, b, n = case.effect, case.bounds, case.n
    for frac in case.levels:
        g = torch.full((n,), b.g_min + frac * b.span, dtype=torch.float64)
        out = e.apply(g, draw_once(e, n, case.seed + 104729, torch.float64)[0], b).double()
        mean, var = float(out.mean()), float(out.var())
        m4 = float(((out - mean) ** 4).mean())
        ex = {"g": float(g[0]), "n": n, "sample_mean": mean, "sample_std": math.sqrt(var)}
        if case.declared_std is not None:
            sd = float(declared_moment(case.declared_std, g)[0])
            tol = case.z * math.sqrt(max(m4 - var * var, 0.0) / n) + 1e-12
            if not abs(var - sd * sd) <= tol:
                return (f"output sd {math.sqrt(var):.6g} vs declared {sd:.6g} at g={float(g[0]):.4g}",
                        {**ex, "declared_std": sd})
        if case.declared_mean is not None:
            m = float(declared_moment(case.declared_mean, g)[0])
            ref = float(declared_moment(case.declared_std, g)[0]) if case.declared_std is not None else math.sqrt(var)
            if not abs(mean - m) <= case.z * ref / math.sqrt(n) + 1e-12 * max(1.0, abs(m)):
                return (f"output mean {mean:.6g} vs declared {m:.6g} at g={float(g[0]):.4g}",
                        {**ex, "declared_mean": m})
    return None
