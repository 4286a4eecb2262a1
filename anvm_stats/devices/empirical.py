"""A device effect fitted to a measured table of target vs programmed conductance.

``EmpiricalDevice.from_table(target_g, measured_g)`` normalises both columns to the device window (maximum 1,
minimum ``g_min`` = off/on ratio), infers the programmed levels (the distinct targets, or equal-count bins of the
targets when they are continuous), detects stuck cells and estimates, per level, the empirical quantile function
of the programming error ``measured - target``. Sampling is inverse-CDF from ONE uniform draw per device of the
mixture "stuck off | programmed with error | stuck on", so the base randomness never depends on the fitted
tables (the core protocol of :mod:`anvm_stats.hardware.effects`). Between two levels the error quantiles are
interpolated linearly in the target (quantile averaging: the distribution moves smoothly from one level's to the
next).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import xarray as xr
from scipy.stats import norm

from ..errors import ConfigError, check, check_number
from ..hardware.effects import Bounds
from ..hardware.registry import register
from ..hardware.spec import HardwareSpec

Tensor = torch.Tensor

#: dim of :meth:`EmpiricalDevice.summary` (one entry per programmed level)
LEVEL = "level"
#: MAD -> standard deviation for a Gaussian
_MAD_TO_SD = 1.4826


def _floats(v, where: str) -> tuple:
    try:
        out = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        raise ConfigError(where, v, "a sequence of numbers") from None
    if not all(np.isfinite(out)):
        raise ConfigError(where, v, "finite numbers")
    return out


def _group_levels(t: np.ndarray, max_levels: int, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """``(levels [L], index of each cell's level [N])``: the distinct targets when there are at most
    ``max_levels``, else ``n_bins`` quantile bins of the targets (level = the bin's mean target)."""
    distinct = np.unique(t)
    if distinct.size <= max_levels:
        return distinct, np.searchsorted(distinct, t)
    edges = np.quantile(t, np.linspace(0.0, 1.0, int(n_bins) + 1)[1:-1])
    idx = np.searchsorted(edges, t, side="right")
    used = np.unique(idx)
    idx = np.searchsorted(used, idx)
    return np.array([t[idx == k].mean() for k in range(used.size)]), idx


def _classify_stuck(t, m, err, L: int, idx, gmin: float, span: float, edge_tol: float, outlier_sd,
                    false_stuck: float) -> tuple[np.ndarray, ...]:
    """``(stuck_off, stuck_on, can_off, can_on)`` masks ``[N]``: a cell read at a window edge is stuck when its
    level's robust error model (median, MAD) puts that edge more than ``k_sd`` sds away (``outlier_sd``, or the
    normal quantile of ``false_stuck`` per level's cells); ``can_*``: cells whose level could reveal it."""
    at_off = m <= gmin + edge_tol * span
    at_on = m >= 1.0 - edge_tol * span
    can_off = np.zeros(t.size, bool)
    can_on = np.zeros(t.size, bool)
    for k in range(L):
        sel = idx == k
        inner = sel & ~at_off & ~at_on
        ref = err[inner] if inner.any() else err[sel]
        centre = float(np.median(ref))
        scale = max(_MAD_TO_SD * float(np.median(np.abs(ref - centre))), 1e-9 * span)
        expected = t[sel] + centre
        k_sd = outlier_sd if outlier_sd is not None else max(3.0, float(norm.isf(false_stuck / sel.sum())))
        can_off[sel] = expected - gmin > k_sd * scale
        can_on[sel] = 1.0 - expected > k_sd * scale
    stuck_off = at_off & can_off
    return stuck_off, at_on & can_on & ~stuck_off, can_off, can_on


def _level_errors(err, levels, idx, stuck_off, stuck_on, probs) -> tuple:
    """Per level, from its non-stuck cells: error quantiles at ``probs`` (made non-decreasing), cell count, error
    mean and sd, stuck-off and stuck-on counts."""
    ok = ~(stuck_off | stuck_on)
    q, n, mean, sd, n_off, n_on = [], [], [], [], [], []
    for k in range(levels.size):
        sel = idx == k
        e = err[sel & ok]
        if e.size == 0:
            raise ConfigError(f"level {levels[k]!r}", "only stuck cells", "some non-stuck cells per level")
        q.append(np.quantile(e, probs))
        n.append(int(sel.sum()))
        mean.append(float(e.mean()))
        sd.append(float(e.std(ddof=1)) if e.size > 1 else 0.0)
        n_off.append(int((sel & stuck_off).sum()))
        n_on.append(int((sel & stuck_on).sum()))
    return np.maximum.accumulate(np.asarray(q), axis=1), n, mean, sd, n_off, n_on


@register("effect")
@dataclass(frozen=True, kw_only=True)
class EmpiricalDevice:
    """Programming error drawn from a measured conditional distribution given the target (``phase="program"``).

    Build it with :meth:`from_table`, :meth:`from_csv` or :meth:`from_netcdf`; the fields are the fitted tables
    (lists in ``to_dict``) so a spec holding it serialises and reloads exactly.

    Parameters
    ----------
    levels : tuple of float [L]
        Programmed levels, increasing, in the device's normalised window ``[g_min, 1]``.
    probs : tuple of float [Q]
        Probabilities of the quantile tables, increasing from 0 to 1.
    quantiles : tuple of tuple [L][Q]
        Error quantiles (normalised units) of each level at ``probs`` (non-stuck cells).
    p_off, p_on : float
        Stuck-at-``g_min`` and stuck-at-1 rates (independent of the target).
    g_min : float in [0, 1)
        Lower edge of the device window the tables are expressed in. At apply time the spec's window is mapped
        linearly onto it, so the device works in any spec (give the spec the same ``g_min`` to be literal).
    n_per_level, error_mean, error_sd, n_stuck_off, n_stuck_on : tuples [L]
        Fit summary (cells, error moments of non-stuck cells, stuck cells per level).
    g_scale : float
        Physical conductance of the normalised value 1 (units of the table), for reports.
    error_scale : float >= 0
        Multiplies every error (1 = as measured; 0 = exact programming apart from stuck cells).
    clip : bool
        Clip the programmed conductance to the window.
    """

    kind: ClassVar[str] = "empirical"
    phase: ClassVar[str] = "program"
    levels: tuple
    probs: tuple
    quantiles: tuple
    p_off: float = 0.0
    p_on: float = 0.0
    g_min: float = 0.0
    n_per_level: tuple = ()
    error_mean: tuple = ()
    error_sd: tuple = ()
    n_stuck_off: tuple = ()
    n_stuck_on: tuple = ()
    g_scale: float = 1.0
    error_scale: float = 1.0
    clip: bool = True

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "levels", _floats(self.levels, "EmpiricalDevice.levels"))
        set_(self, "probs", _floats(self.probs, "EmpiricalDevice.probs"))
        L, Q = len(self.levels), len(self.probs)
        check(L >= 1, "EmpiricalDevice.levels", self.levels, "at least one level")
        check(bool(np.all(np.diff(self.levels) > 0)), "EmpiricalDevice.levels", self.levels, "strictly increasing")
        check(Q >= 2 and self.probs[0] == 0.0 and self.probs[-1] == 1.0 and bool(np.all(np.diff(self.probs) > 0)),
              "EmpiricalDevice.probs", self.probs, "strictly increasing from 0 to 1 (at least 2 values)")
        rows = tuple(_floats(r, f"EmpiricalDevice.quantiles[{i}]") for i, r in enumerate(self.quantiles))
        check(len(rows) == L and all(len(r) == Q for r in rows), "EmpiricalDevice.quantiles",
              f"{len(rows)} rows", f"{L} rows of {Q} values (one per level and prob)")
        check(all(bool(np.all(np.diff(r) >= 0)) for r in rows), "EmpiricalDevice.quantiles", "a row",
              "non-decreasing rows (quantile functions)")
        set_(self, "quantiles", rows)
        check_number("EmpiricalDevice.p_off", self.p_off, low=0.0, high=1.0)
        check_number("EmpiricalDevice.p_on", self.p_on, low=0.0, high=1.0)
        check(self.p_off + self.p_on < 1.0, "EmpiricalDevice.p_off + p_on", self.p_off + self.p_on, "below 1")
        check_number("EmpiricalDevice.g_min", self.g_min, low=0.0, high=1.0, high_open=True)
        check_number("EmpiricalDevice.g_scale", self.g_scale, low=0.0, low_open=True)
        check_number("EmpiricalDevice.error_scale", self.error_scale, low=0.0)
        check(isinstance(self.clip, bool), "EmpiricalDevice.clip", self.clip, "true or false")
        for name in ("n_per_level", "error_mean", "error_sd", "n_stuck_off", "n_stuck_on"):
            v = _floats(getattr(self, name), f"EmpiricalDevice.{name}")
            check(len(v) in (0, L), f"EmpiricalDevice.{name}", v, f"empty or {L} values (one per level)")
            set_(self, name, v)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def from_table(cls, target_g, measured_g, *, g_min: float | None = None, g_max: float | None = None,
                   max_levels: int = 64, n_bins: int = 16, n_quantiles: int = 201, edge_tol: float = 0.002,
                   outlier_sd: float | None = None, false_stuck: float = 0.05, clip: bool = True) -> "EmpiricalDevice":
        """Fit the device to a table of programming attempts.

        Parameters
        ----------
        target_g, measured_g : array-like [N]
            Target and measured (programmed) conductance of each attempt, in any one unit.
        g_min, g_max : float, optional
            Physical window of the device in that unit; default: the smallest / largest value in the table.
        max_levels : int
            Targets with at most this many distinct values are discrete levels; otherwise they are continuous
            and grouped into ``n_bins`` equal-count bins, each represented by its mean target.
        n_quantiles : int
            Points of each level's error quantile function (at probabilities ``linspace(0, 1, n_quantiles)``).
        edge_tol : float
            A measured value within ``edge_tol`` (fraction of the window) of an edge is "at the edge".
        outlier_sd : float, optional
            A cell at an edge is stuck when the edge lies more than ``outlier_sd`` robust standard deviations
            (MAD) from its level's error distribution; levels whose own spread reaches the edge cannot show
            stuck cells there and are left out of that rate's denominator. Default per level:
            ``max(3, Phi^-1(1 - false_stuck / n_level))``, so that (for a Gaussian spread) at most ``false_stuck``
            good cells per level are expected beyond it.
        false_stuck : float
            Expected good cells per level mistaken for stuck, setting the default ``outlier_sd``.

        Returns
        -------
        EmpiricalDevice
        """
        t = np.asarray(target_g, dtype=np.float64).ravel()
        m = np.asarray(measured_g, dtype=np.float64).ravel()
        check(t.size == m.size and t.size >= 2, "measured_g", f"{m.size} values", f"{t.size} values (as target_g)")
        check(bool(np.all(np.isfinite(t)) and np.all(np.isfinite(m))), "target_g/measured_g", "non-finite values",
              "finite numbers")
        check_number("max_levels", max_levels, low=1, integer=True)
        check_number("n_bins", n_bins, low=1, integer=True)
        check_number("n_quantiles", n_quantiles, low=2, integer=True)
        check_number("edge_tol", edge_tol, low=0.0, high=0.5)
        if outlier_sd is not None:
            check_number("outlier_sd", outlier_sd, low=0.0, low_open=True)
        check_number("false_stuck", false_stuck, low=0.0, low_open=True)
        hi = float(max(t.max(), m.max())) if g_max is None else float(g_max)
        lo = float(max(0.0, min(t.min(), m.min()))) if g_min is None else float(g_min)
        check_number("g_max", hi, low=0.0, low_open=True)
        check(0.0 <= lo < hi, "g_min", lo, f"a number in [0, g_max={hi})")
        check(bool(np.all(t >= lo) and np.all(t <= hi)), "target_g", "values outside the window",
              f"targets within [g_min, g_max] = [{lo}, {hi}]")
        gmin = lo / hi
        t, m = t / hi, np.clip(m / hi, gmin, 1.0)
        span = 1.0 - gmin

        levels, idx = _group_levels(t, max_levels, n_bins)
        err = m - t
        stuck_off, stuck_on, can_off, can_on = _classify_stuck(t, m, err, levels.size, idx, gmin, span, edge_tol,
                                                               outlier_sd, false_stuck)
        p_off = float(stuck_off.sum() / can_off.sum()) if can_off.any() else 0.0
        p_on = float(stuck_on.sum() / can_on.sum()) if can_on.any() else 0.0
        probs = np.linspace(0.0, 1.0, int(n_quantiles))
        q, n, mean, sd, n_off, n_on = _level_errors(err, levels, idx, stuck_off, stuck_on, probs)
        return cls(levels=tuple(levels.tolist()), probs=tuple(probs.tolist()), quantiles=tuple(map(tuple, q.tolist())),
                   p_off=p_off, p_on=p_on, g_min=gmin, n_per_level=tuple(n), error_mean=tuple(mean),
                   error_sd=tuple(sd), n_stuck_off=tuple(n_off), n_stuck_on=tuple(n_on), g_scale=hi, clip=clip)

    @classmethod
    def from_csv(cls, path: str | Path, target_col: str, measured_col: str, **kwargs) -> "EmpiricalDevice":
        """Fit to two columns of a CSV file with a header row (see :meth:`from_table` for ``kwargs``)."""
        import pandas as pd

        frame = pd.read_csv(path)
        for col in (target_col, measured_col):
            check(col in frame.columns, "column", col, f"one of {list(frame.columns)}")
        return cls.from_table(frame[target_col].to_numpy(), frame[measured_col].to_numpy(), **kwargs)

    @classmethod
    def from_netcdf(cls, path: str | Path, target_var: str, measured_var: str, **kwargs) -> "EmpiricalDevice":
        """Fit to two variables of a netCDF file (flattened; see :meth:`from_table` for ``kwargs``)."""
        ds = xr.load_dataset(path)
        for var in (target_var, measured_var):
            check(var in ds.variables, "variable", var, f"one of {list(ds.variables)}")
        return cls.from_table(ds[target_var].values, ds[measured_var].values, **kwargs)

    # ------------------------------------------------------------------ effect protocol
    def draw(self, n, generator, *, device, dtype):
        """One uniform ``u`` [n] per device: the inverse-CDF input of the whole conditional distribution."""
        return {"u": torch.rand(n, generator=generator, device=device, dtype=dtype)}

    def _tables(self, like: Tensor) -> tuple[Tensor, Tensor]:
        levels = torch.tensor(self.levels, dtype=like.dtype, device=like.device)
        q = torch.tensor(self.quantiles, dtype=like.dtype, device=like.device)
        return levels, q

    def error(self, x: Tensor, v: Tensor) -> Tensor:
        """Error quantile at probability ``v`` for device-window targets ``x`` (same shape), interpolated
        linearly in the target between neighbouring levels (constant beyond the first and last level)."""
        levels, q = self._tables(x)
        L, Q = q.shape
        pos = v.clamp(0.0, 1.0) * (Q - 1)
        j = pos.floor().clamp_(max=Q - 2).long()
        f = pos - j
        if L > 1:
            hi = torch.searchsorted(levels, x.contiguous()).clamp_(1, L - 1)
            lo = hi - 1
            w = ((x - levels[lo]) / (levels[hi] - levels[lo])).clamp(0.0, 1.0)
        else:
            hi = lo = torch.zeros_like(x, dtype=torch.long)
            w = torch.zeros_like(x)

        def at(level_idx: Tensor) -> Tensor:
            flat = level_idx * Q + j
            a, b = q.reshape(-1)[flat], q.reshape(-1)[flat + 1]
            return a + f * (b - a)

        return at(lo) + w * (at(hi) - at(lo))

    def apply(self, g, draws, bounds: Bounds):
        """Programmed conductance ``[..., n]`` for targets ``g`` (spec window mapped onto the device's)."""
        u = draws["u"]
        dspan = 1.0 - self.g_min
        same = bounds.g_max == 1.0 and bounds.g_min == self.g_min
        x = g if same else self.g_min + (g - bounds.g_min) * (dspan / bounds.span)
        keep = 1.0 - self.p_off - self.p_on
        v = (u - self.p_off) / keep
        y = x + self.error(x, v) * self.error_scale
        if self.clip:
            y = y.clamp(self.g_min, 1.0)
        y = torch.where(u < self.p_off, torch.full_like(y, self.g_min), y)
        y = torch.where(u >= 1.0 - self.p_on, torch.ones_like(y), y)
        return y if same else bounds.g_min + (y - self.g_min) * (bounds.span / dspan)

    def sample(self, target, generator: torch.Generator) -> Tensor:
        """Programmed conductances for ``target`` (normalised to this device's window, any shape), one uniform
        draw per element from ``generator``."""
        t = torch.as_tensor(target, dtype=torch.float64)
        u = self.draw(t.numel(), generator, device=t.device, dtype=t.dtype)["u"].reshape(t.shape)
        return self.apply(t, {"u": u}, Bounds(g_min=self.g_min))

    def with_knob(self, name, value):
        """``stuck_at_rate`` sets ``p_off + p_on`` (keeping their ratio; 1:1 when both are 0)."""
        if name != "stuck_at_rate":
            return None
        check_number("stuck_at_rate", value, low=0.0, high=1.0, high_open=True)
        total = self.p_off + self.p_on
        frac = 0.5 if total == 0 else self.p_off / total
        return replace(self, p_off=float(value) * frac, p_on=float(value) * (1.0 - frac))

    @property
    def clips(self) -> bool:
        """Whether outputs stay in the window (the contract checked by :func:`anvm_stats.testing.check_device`)."""
        return self.clip

    # ------------------------------------------------------------------ reports
    def summary(self) -> xr.Dataset:
        """The fit: dim ``level`` (normalised target) with ``n``, ``error_mean``, ``error_sd`` (non-stuck cells,
        normalised units), ``n_stuck_off``, ``n_stuck_on``, ``error_median``; scalars ``p_off``, ``p_on``,
        ``g_min``, ``g_scale``."""
        L = len(self.levels)
        q = np.asarray(self.quantiles)

        def col(v):
            return (LEVEL, np.asarray(v, dtype=float) if len(v) else np.full(L, np.nan))

        med = np.array([np.interp(0.5, self.probs, row) for row in q])
        return xr.Dataset(
            {"n": col(self.n_per_level), "error_mean": col(self.error_mean), "error_sd": col(self.error_sd),
             "error_median": (LEVEL, med), "n_stuck_off": col(self.n_stuck_off), "n_stuck_on": col(self.n_stuck_on),
             "p_off": ((), self.p_off), "p_on": ((), self.p_on), "g_min": ((), self.g_min),
             "g_scale": ((), self.g_scale)},
            coords={LEVEL: np.asarray(self.levels)},
            attrs={"description": "EmpiricalDevice fit: programming error = measured - target, normalised to "
                                  "the device window (max 1); stuck rates independent of the target"})

    def spec(self, **kwargs):
        """A :class:`~anvm_stats.hardware.HardwareSpec` with this device alone and the device's ``g_min``."""

        kwargs.setdefault("name", f"empirical({len(self.levels)} levels)")
        return HardwareSpec(effects=(self,), g_min=self.g_min, **kwargs)
