"""Confidence intervals on labelled xarray data, reducing the Monte Carlo ``instance`` dim.

Each function reduces ``dim`` (default :data:`anvm_stats.dims.INSTANCE`) of a DataArray and keeps every other
dim and coordinate (e.g. ``noise_level`` x ``adc_bits``).  It returns an :class:`xarray.Dataset` with

``estimate``
    the point estimate, dims = the input's dims without ``dim`` (``quantiles`` adds a leading ``quantile`` dim);
``interval``
    the same dims plus ``ci_bound`` with coordinates ``["lower", "upper"]``;
``n``
    the sample count behind each estimate;

and attrs ``confidence`` (e.g. ``0.95``), ``method`` (interval construction), ``statistic`` (``"mean"``,
``"quantile"``, ``"yield"``, ``"paired_difference"``, ``"unpaired_difference"``) and ``sample_dim``, plus
``variable`` (the input's name) when it has one and ``threshold`` for :func:`yield_`.

The numerical work is done by :mod:`anvm_stats.stats.arrays`; see it for the interval definitions.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import xarray as xr

from .. import dims as D
from ..errors import ConfigError
from . import arrays
from .arrays import Estimate

__all__ = ["mean", "quantiles", "yield_", "paired_difference", "unpaired_difference", "to_dataset"]


def _check_da(da: Any, dim: str, field: str) -> xr.DataArray:
    if isinstance(da, xr.Dataset):
        raise ConfigError(field, "<xarray.Dataset>",
                          f"a DataArray (pick a variable, e.g. ds[{D.ACCURACY!r}])")
    if not isinstance(da, xr.DataArray):
        raise ConfigError(field, type(da).__name__, "an xarray.DataArray")
    if not isinstance(dim, str) or dim not in da.dims:
        raise ConfigError("dim", dim, f"one of the dims of {field}, {list(da.dims)}")
    if da.sizes[dim] == 0:
        raise ConfigError(field, f"DataArray with {dim}=0", f"at least one sample along {dim!r}")
    try:
        has_nan = bool(da.isnull().any())
    except TypeError:
        raise ConfigError(field, f"DataArray of dtype {da.dtype}", "real numbers") from None
    if has_nan:
        raise ConfigError(field, f"DataArray {da.name!r} with NaN along {dim!r}",
                          "values without NaN (drop or impute failed instances first)")
    return da


def _kept_coords(da: xr.DataArray, dim: str) -> dict[str, xr.DataArray]:
    return {name: c.variable for name, c in da.coords.items() if dim not in c.dims}


def to_dataset(est: Estimate, dims: list[str], coords: dict, *, statistic: str, sample_dim: str,
               extra_attrs: dict | None = None) -> xr.Dataset:
    """Wrap an :class:`~anvm_stats.stats.arrays.Estimate` whose arrays have ``dims`` into the labelled layout."""
    interval = np.stack([est.lower, est.upper], axis=-1)
    ds = xr.Dataset(
        {
            "estimate": (dims, est.estimate),
            "interval": ([*dims, D.CI_BOUND], interval),
            "n": (dims, est.n),
        },
        coords={**coords, D.CI_BOUND: list(D.CI_BOUND_VALUES)},
    )
    ds.attrs.update(confidence=est.ci, method=est.method, statistic=statistic, sample_dim=sample_dim)
    if extra_attrs:
        ds.attrs.update({k: v for k, v in extra_attrs.items() if v is not None})
    return ds


def _reduce_one(da: xr.DataArray, dim: str, field: str, fn: Callable[[np.ndarray], Estimate], statistic: str,
                extra_attrs: dict | None = None, lead: tuple[str, Any] | None = None) -> xr.Dataset:
    da = _check_da(da, dim, field)
    other = [d for d in da.dims if d != dim]
    values = np.asarray(da.transpose(*other, dim).values)
    est = fn(values)
    coords = _kept_coords(da, dim)
    dims = list(other)
    if lead is not None:
        dims = [lead[0], *dims]
        coords[lead[0]] = lead[1]
    attrs = {"variable": None if da.name is None else str(da.name)}
    attrs.update(extra_attrs or {})
    return to_dataset(est, dims, coords, statistic=statistic, sample_dim=dim, extra_attrs=attrs)


# ---------------------------------------------------------------------------------------------- public


def mean(da: xr.DataArray, dim: str = D.INSTANCE, ci: float = 0.95, method: str = "student-t",
         bounds: tuple[float, float] | None = None) -> xr.Dataset:
    """Mean over ``dim`` with a Student-t (default, approximate) or betting interval (``method="betting"`` with
    the metric's ``bounds``, e.g. ``(0, 1)`` for accuracy: guaranteed coverage); see
    :func:`anvm_stats.stats.arrays.mean_ci` for when each holds."""
    return _reduce_one(da, dim, "da", lambda v: arrays.mean_ci(v, axis=-1, ci=ci, method=method, bounds=bounds),
                       "mean")


def quantiles(da: xr.DataArray, q: Any, dim: str = D.INSTANCE, ci: float = 0.95) -> xr.Dataset:
    """Quantile(s) over ``dim`` with distribution-free order-statistic intervals.

    Always adds a ``quantile`` dim (length 1 for a scalar ``q``) with the levels as its coordinate.  Bounds are
    ``-inf`` / ``+inf`` where there are too few instances for the requested coverage
    (:func:`anvm_stats.stats.arrays.quantile_ci`).
    """
    q_arr = np.atleast_1d(arrays.check_q(q))
    return _reduce_one(da, dim, "da", lambda v: arrays.quantile_ci(v, q_arr, axis=-1, ci=ci), "quantile",
                       lead=(D.QUANTILE, q_arr))


def yield_(da: xr.DataArray, threshold: float | None = None, dim: str = D.INSTANCE, ci: float = 0.95,
           method: str = "clopper-pearson") -> xr.Dataset:
    """Yield ``P(da >= threshold)`` over ``dim`` with a Clopper-Pearson (default) or Wilson interval.

    ``threshold`` is required: a number, or a DataArray over some of the kept dims (e.g. one pass mark per
    ``noise_level``).
    """
    if threshold is None:
        raise ConfigError("threshold", None, "a number (the pass mark each instance must reach)")
    da = _check_da(da, dim, "da")
    if isinstance(threshold, xr.DataArray):
        if dim in threshold.dims:
            raise ConfigError("threshold", f"DataArray with dims {threshold.dims}",
                              f"no {dim!r} dim (one pass mark per grid point)")
        extra = set(threshold.dims) - set(da.dims)
        if extra:
            raise ConfigError("threshold", f"DataArray with dims {threshold.dims}",
                              f"dims among those of da, {list(da.dims)}")
        try:
            da, threshold = xr.align(da, threshold, join="exact")
        except ValueError:
            raise ConfigError("threshold", "DataArray with other coordinates",
                              "coordinates matching those of da") from None
        other = [d for d in da.dims if d != dim]
        thr = threshold.broadcast_like(da.isel({dim: 0}, drop=True)).transpose(*other).values
        thr_attr = None
    else:
        thr = threshold
        thr_attr = threshold
    return _reduce_one(da, dim, "da", lambda v: arrays.yield_(v, thr, axis=-1, ci=ci, method=method), "yield",
                       extra_attrs={"threshold": thr_attr})


def _pair(a: Any, b: Any, dim: str, *, paired: bool) -> tuple[xr.DataArray, xr.DataArray, list[str]]:
    a = _check_da(a, dim, "a")
    b = _check_da(b, dim, "b")
    try:
        if paired:
            a, b = xr.align(a, b, join="exact")
        else:
            a, b = xr.align(a, b, join="exact", exclude=[dim])
    except ValueError as exc:
        raise ConfigError("b", f"DataArray with dims {dict(b.sizes)}",
                          f"coordinates matching a's {dict(a.sizes)}"
                          f"{'' if paired else f' apart from {dim!r}'} ({exc})") from None
    a, b = xr.broadcast(a, b, exclude=[dim] if not paired else None)
    other = [d for d in a.dims if d != dim]
    return a.transpose(*other, dim), b.transpose(*other, dim), other


def _difference(a, b, dim, ci, *, paired: bool, **kw) -> xr.DataArray | xr.Dataset:
    a, b, other = _pair(a, b, dim, paired=paired)
    fn = arrays.paired_difference if paired else arrays.unpaired_difference
    est = fn(a.values, b.values, axis=-1, ci=ci, **kw)
    coords = _kept_coords(a, dim)
    for name, c in _kept_coords(b, dim).items():
        coords.setdefault(name, c)
    names = None
    if a.name is not None or b.name is not None:
        names = f"{a.name} - {b.name}"
    return to_dataset(est, other, coords, statistic="paired_difference" if paired else "unpaired_difference",
                      sample_dim=dim, extra_attrs={"variable": names})


def paired_difference(a: xr.DataArray, b: xr.DataArray, dim: str = D.INSTANCE, ci: float = 0.95,
                      method: str = "paired-t", bounds: tuple[float, float] | None = None) -> xr.Dataset:
    """Mean of ``a - b`` over ``dim`` with a paired-t (default) or betting interval (``method="betting"`` with the
    range ``bounds`` of ``a`` and ``b``; see :func:`anvm_stats.stats.arrays.paired_difference`).

    ``a`` and ``b`` must share the coordinates of ``dim`` (instance ``i`` of both is the same chip, as in a sweep
    with common random numbers); other dims are broadcast against each other.
    """
    return _difference(a, b, dim, ci, paired=True, method=method, bounds=bounds)


def unpaired_difference(a: xr.DataArray, b: xr.DataArray, dim: str = D.INSTANCE, ci: float = 0.95) -> xr.Dataset:
    """``mean(a) - mean(b)`` over ``dim`` with a Welch interval (independent samples; ``n`` is ``n_a + n_b``).

    ``a`` and ``b`` may have different lengths along ``dim``; other dims must match or broadcast.
    """
    return _difference(a, b, dim, ci, paired=False)
