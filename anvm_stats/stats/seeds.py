"""Two-level intervals: several trained networks (training seeds), each evaluated on its own sample of chips.

A training comparison ("HA-SGD minus plain at test sigma 0.15") has two sources of randomness: which chips were
drawn (the Monte Carlo sample, the only one :func:`~anvm_stats.stats.arrays.paired_difference` covers) and which
network training produced (initial weights, data order, the training noise draws: the *training seed*). A gain
measured on one trained pair may be the luck of that pair.

The two-stage estimate used here (a standard nested / two-stage sampling estimate):

* within training seed ``s`` (``S`` seeds), the per-seed mean over its ``n`` chips,
  ``m_s = mean_i x[s, i]`` (for a difference, ``x = a - b`` on the same chips: paired within the seed);
* the estimate is ``mean_s m_s`` and the interval is Student-t on the ``S`` per-seed means, ``S - 1`` degrees of
  freedom, ``se = sd(m_s) / sqrt(S)``.

What it covers: the mean over training seeds (and chips) of the metric for this recipe, network, spec and test
set, i.e. seed-to-seed variation of the (paired) mean **and** the within-seed chip sampling error, since
``Var(m_s) = tau^2 + sigma_within^2 / n`` (``tau^2`` the variance of the exact per-seed mean between seeds) and the
sample variance of the ``m_s`` estimates that whole sum. This needs the seeds' chip samples to be independent of
each other (a study draws seed ``s``'s chips from seed ``s``); chips shared by every seed would make the ``m_s``
correlated and the interval too narrow. It does not cover the finite test set, and it is approximate (the per-seed
means are assumed nearly normal; with ``S = 5`` the t quantile is 2.78, so the interval is wide by design).

``within_seed_se`` (the chip-only standard error of each ``m_s``) and ``between_seed_sd`` (the method-of-moments
estimate ``sqrt(max(0, var(m_s) - mean_s se_s^2))`` of ``tau``) tell which level dominates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from .. import dims as D
from ..errors import ConfigError
from scipy import stats as sps

from .arrays import Estimate, check_ci, pack
from .labelled import to_dataset

__all__ = ["SeedEstimate", "seed_mean_ci", "seed_paired_difference", "across_seeds", "seed_difference",
           "TWO_LEVEL", "COVERS"]

#: the method name recorded on two-level estimates
TWO_LEVEL = "two-level-t"
#: one line saying what a two-level interval covers (reports print it)
COVERS = ("training-seed variation of the mean (each seed's network on its own chips) including the within-seed "
          "chip sampling error; not the finite test set")


@dataclass(frozen=True)
class SeedEstimate(Estimate):
    """An :class:`~anvm_stats.stats.arrays.Estimate` across training seeds (``n`` = number of seeds) with its parts.

    Attributes
    ----------
    per_seed : numpy.ndarray [..., S]
        Mean over chips within each seed, ``m_s``.
    within_seed_se : numpy.ndarray [..., S]
        Chip-only standard error of each ``m_s`` (``sd / sqrt(n_chips)``).
    between_seed_sd : numpy.ndarray [...]
        Method-of-moments estimate of the standard deviation of the exact per-seed mean between seeds.
    n_chips : int
        Chips per seed.
    """

    per_seed: np.ndarray
    within_seed_se: np.ndarray
    between_seed_sd: np.ndarray
    n_chips: int


def _two_level(x: np.ndarray, ci: float) -> SeedEstimate:
    """``x`` [..., S, n] (seeds, chips) -> the two-level estimate."""
    S, n = x.shape[-2], x.shape[-1]
    per_seed = x.mean(axis=-1)
    within = x.std(axis=-1, ddof=1) / np.sqrt(n) if n > 1 else np.full(per_seed.shape, np.nan)
    est = per_seed.mean(axis=-1)
    var = per_seed.var(axis=-1, ddof=1)
    half = sps.t.ppf(0.5 + 0.5 * ci, S - 1) * np.sqrt(var / S)
    lo, hi = est - half, est + half
    between = np.sqrt(np.maximum(0.0, var - np.mean(within ** 2, axis=-1)))
    base = pack(est, lo, hi, ci, TWO_LEVEL, S)
    return SeedEstimate(base.estimate, base.lower, base.upper, ci, TWO_LEVEL, base.n, per_seed=per_seed,
                        within_seed_se=within, between_seed_sd=np.asarray(between, dtype=float), n_chips=int(n))


def _seed_chip_array(x: Any, seed_axis: int, axis: int, field: str) -> np.ndarray:
    """``x`` as a float array ``[..., S, n]`` (seeds, chips), validated."""
    try:
        arr = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(field, type(x).__name__, "an array of real numbers") from None
    nd = arr.ndim
    if nd < 2:
        raise ConfigError(field, f"array of shape {arr.shape}", "an array with a seed axis and a chip axis")
    for name, ax in (("seed_axis", seed_axis), ("axis", axis)):
        if isinstance(ax, bool) or not isinstance(ax, (int, np.integer)) or not -nd <= ax < nd:
            raise ConfigError(name, ax, f"an integer in [-{nd}, {nd - 1}] for an array of shape {arr.shape}")
    if seed_axis % nd == axis % nd:
        raise ConfigError("seed_axis", seed_axis, f"an axis other than the chip axis ({axis})")
    if not np.isfinite(arr).all():
        raise ConfigError(field, f"array of shape {arr.shape} with NaN or inf", "finite values")
    arr = np.moveaxis(arr, (int(seed_axis), int(axis)), (-2, -1))
    if arr.shape[-2] < 2:
        raise ConfigError(field, f"array of shape {np.shape(x)}",
                          f"at least 2 training seeds along seed_axis {seed_axis} (one seed has no seed-to-seed "
                          f"variation to estimate: use arrays.mean_ci / paired_difference over chips)")
    return arr


def seed_mean_ci(x: Any, seed_axis: int = -2, axis: int = -1, ci: float = 0.95) -> SeedEstimate:
    """Mean over training seeds and chips with the two-level Student-t interval (module docstring).

    Parameters
    ----------
    x : array [..., S, n]
        One value per (training seed, chip); ``seed_axis`` and ``axis`` (chips) may be anywhere.
    ci : float
    """
    ci = check_ci(ci)
    return _two_level(_seed_chip_array(x, seed_axis, axis, "x"), ci)


def seed_paired_difference(a: Any, b: Any, seed_axis: int = -2, axis: int = -1, ci: float = 0.95) -> SeedEstimate:
    """Mean of ``a - b`` with chips paired within each seed (``a[s, i]`` and ``b[s, i]`` on the same chip), and the
    two-level interval across seeds (module docstring). ``a`` and ``b`` must have the same shape."""
    ci = check_ci(ci)
    a_arr = _seed_chip_array(a, seed_axis, axis, "a")
    b_arr = _seed_chip_array(b, seed_axis, axis, "b")
    if a_arr.shape != b_arr.shape:
        raise ConfigError("b", f"array of shape {np.shape(b)}", f"the shape of a, {np.shape(a)} (paired chips)")
    return _two_level(a_arr - b_arr, ci)


def _labelled(est: SeedEstimate, other: list[str], coords: dict, seed_dim: str, seed_coord, dim: str,
              statistic: str, variable) -> xr.Dataset:
    ds = to_dataset(est, other, coords, statistic=statistic, sample_dim=dim,
                    extra_attrs={"variable": variable, "seed_dim": seed_dim, "covers": COVERS,
                                 "n_chips": est.n_chips})
    ds["per_seed"] = ([*other, seed_dim], est.per_seed)
    ds["within_seed_se"] = ([*other, seed_dim], est.within_seed_se)
    ds["between_seed_sd"] = (other, est.between_seed_sd)
    return ds.assign_coords({seed_dim: seed_coord})


def _check_seed_da(da: Any, seed_dim: str, dim: str, field: str) -> xr.DataArray:
    if not isinstance(da, xr.DataArray):
        raise ConfigError(field, type(da).__name__, "an xarray.DataArray")
    if not isinstance(dim, str) or dim not in da.dims:
        raise ConfigError("dim", dim, f"one of the dims of {field}, {list(da.dims)}")
    if not isinstance(seed_dim, str) or seed_dim not in da.dims or seed_dim == dim:
        raise ConfigError("seed_dim", seed_dim, f"a dim of {field} other than {dim!r}, one of {list(da.dims)}")
    return da


def _kept(da: xr.DataArray, seed_dim: str, dim: str) -> dict:
    """Coordinates of ``da`` that survive reducing ``seed_dim`` and ``dim``."""
    return {k: c.variable for k, c in da.coords.items() if dim not in c.dims and seed_dim not in c.dims}


def across_seeds(da: xr.DataArray, seed_dim: str = D.TRAIN_SEED, dim: str = D.INSTANCE,
                 ci: float = 0.95) -> xr.Dataset:
    """Mean over ``seed_dim`` and ``dim`` (chips) with the two-level interval (:func:`seed_mean_ci`).

    Returns
    -------
    xr.Dataset
        ``estimate``, ``interval`` (``ci_bound``), ``n`` (seeds), ``per_seed`` and ``within_seed_se`` (dim
        ``seed_dim``), ``between_seed_sd``; attrs as :mod:`anvm_stats.stats.labelled` plus ``seed_dim``, ``covers``
        and ``n_chips``.
    """
    da = _check_seed_da(da, seed_dim, dim, "da")
    other = [d for d in da.dims if d not in (seed_dim, dim)]
    est = seed_mean_ci(da.transpose(*other, seed_dim, dim).values, ci=ci)
    coords = _kept(da, seed_dim, dim)
    return _labelled(est, other, coords, seed_dim, da[seed_dim].values, dim, "mean",
                     None if da.name is None else str(da.name))


def seed_difference(a: xr.DataArray, b: xr.DataArray, seed_dim: str = D.TRAIN_SEED, dim: str = D.INSTANCE,
                    ci: float = 0.95) -> xr.Dataset:
    """Mean of ``a - b``, chips paired within each training seed, with the two-level interval across seeds
    (:func:`seed_paired_difference`); layout as :func:`across_seeds`. ``a`` and ``b`` must share the coordinates of
    ``seed_dim`` and ``dim``; other dims are broadcast."""
    a = _check_seed_da(a, seed_dim, dim, "a")
    b = _check_seed_da(b, seed_dim, dim, "b")
    try:
        a, b = xr.align(a, b, join="exact")
    except ValueError as exc:
        raise ConfigError("b", f"DataArray with dims {dict(b.sizes)}", f"coordinates matching a's "
                                                                        f"{dict(a.sizes)} ({exc})") from None
    a, b = xr.broadcast(a, b)
    other = [d for d in a.dims if d not in (seed_dim, dim)]
    est = seed_paired_difference(a.transpose(*other, seed_dim, dim).values,
                                 b.transpose(*other, seed_dim, dim).values, ci=ci)
    coords = _kept(a, seed_dim, dim)
    names = None if a.name is None and b.name is None else f"{a.name} - {b.name}"
    return _labelled(est, other, coords, seed_dim, a[seed_dim].values, dim, "paired_difference", names)
