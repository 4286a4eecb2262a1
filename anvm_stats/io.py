"""Save and load result Datasets: netCDF (``.nc``, engine h5netcdf) and zarr (``.zarr`` directory).

Both formats round-trip losslessly (``xr.testing.assert_identical``: values, dtypes, coords and attrs). Attr
values that netCDF cannot hold (bools, ``None``, dicts, empty or mixed lists) are stored as JSON and restored on
load. Writes are atomic: the Dataset is written to a temporary sibling of ``path`` (same directory, so the final
rename never crosses a filesystem) and moved into place only once complete, so a crash mid-write never leaves
anything at ``path`` that loads as if complete; a failed write removes its temporary.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from . import dims
from .errors import ConfigError

FORMATS = {".nc": "netcdf", ".zarr": "zarr"}
#: global attr listing, per variable ("" = the Dataset), the attrs stored as JSON strings
JSON_ATTRS = "_anvm_json_attrs"


def _format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError("path", str(path), "a path ending in .nc (netCDF, h5netcdf) or .zarr (zarr directory)")
    return FORMATS[suffix]


def _netcdf_safe(value) -> bool:
    """Whether netCDF stores ``value`` as an attr and gives back an equal value."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (str, int, float, np.integer, np.floating)):
        return True
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and value.size > 0 and value.dtype.kind in "iuf"
    if isinstance(value, (list, tuple)) and value:
        if all(isinstance(v, str) for v in value):
            return True
        nums = [isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                for v in value]
        return all(nums) and len({type(v) for v in value}) == 1
    return False


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"attr value {value!r} of type {type(value).__name__} cannot be stored")


def _encode_attrs(ds: xr.Dataset) -> xr.Dataset:
    """A shallow copy of ``ds`` with netCDF-unsafe attrs JSON-encoded and every encoding cleared."""
    out = ds.copy(deep=False)
    encoded: dict[str, list[str]] = {}
    for name, attrs in [("", out.attrs)] + [(str(k), v.attrs) for k, v in out.variables.items()]:
        for k, v in attrs.items():
            if isinstance(v, str) and type(v) is not str:   # e.g. torch.__version__ (TorchVersion)
                attrs[k] = str(v)
        bad = [k for k, v in attrs.items() if not _netcdf_safe(v)]
        for k in bad:
            attrs[k] = json.dumps(attrs[k], default=_jsonable)
        if bad:
            encoded[name] = bad
    for v in out.variables.values():
        v.encoding = {}
    if encoded:
        out.attrs[JSON_ATTRS] = json.dumps(encoded, sort_keys=True)
    return out


def _plain(value):
    """numpy scalars and 1-d arrays back to Python scalars and lists (JSON-able, equal to what was saved)."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return value


def _decode_attrs(ds: xr.Dataset) -> xr.Dataset:
    encoded = json.loads(ds.attrs.pop(JSON_ATTRS, "{}"))
    for name, attrs in [("", ds.attrs)] + [(str(k), v.attrs) for k, v in ds.variables.items()]:
        for k in list(attrs):
            attrs[k] = _plain(attrs[k])
        for k in encoded.get(name, ()):
            attrs[k] = json.loads(attrs[k])
    return ds


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def temporary_sibling(path: Path, tag: str = "tmp") -> Path:
    """A fresh name ``<name>.<tag>-<random>`` in the directory of ``path``."""
    return path.with_name(f"{path.name}.{tag}-{secrets.token_hex(6)}")


def replace_atomically(tmp: Path, path: Path) -> None:
    """Move the complete ``tmp`` to ``path``: ``os.replace`` for a file; for a directory, move any old one
    aside, rename ``tmp`` into place, then delete the old one (``path`` never holds a partial write)."""
    if not tmp.is_dir():
        os.replace(tmp, path)
        return
    old = None
    if path.exists() or path.is_symlink():
        old = temporary_sibling(path, "old")
        os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        if old is not None:
            os.rename(old, path)
        raise
    if old is not None:
        _remove(old)


def _write_netcdf(ds: xr.Dataset, tmp: Path) -> None:
    try:
        import h5py  # noqa: F401
    except ImportError as err:  # h5netcdf alone cannot write; netCDF3 would lose int64
        raise ImportError("saving .nc files needs h5py (pip install h5py, or h5netcdf[h5py])") from err
    ds.to_netcdf(tmp, engine="h5netcdf")


def _write_zarr(ds: xr.Dataset, tmp: Path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
        ds.to_zarr(tmp, mode="w-", consolidated=False)


def save(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` atomically to ``path``; the suffix picks the format.

    Parameters
    ----------
    ds : xr.Dataset
        Any Dataset (dims and attrs are kept as they are).
    path : str or PathLike
        ``*.nc`` (netCDF4 through h5netcdf) or ``*.zarr`` (a zarr directory). An existing file or store at
        ``path`` is replaced only once the new one is complete.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ConfigError
        If the suffix is neither ``.nc`` nor ``.zarr``.
    """
    path = Path(path)
    fmt = _format(path)
    enc = _encode_attrs(ds)
    tmp = temporary_sibling(path)
    try:
        (_write_netcdf if fmt == "netcdf" else _write_zarr)(enc, tmp)
        replace_atomically(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    return path


def open_lazy(path: str | os.PathLike) -> xr.Dataset:
    """Open ``path`` without reading its data (the caller closes it); attrs are decoded as in :func:`load`."""
    path = Path(path)
    if _format(path) == "netcdf":
        ds = xr.open_dataset(path, engine="h5netcdf")
    else:
        ds = xr.open_zarr(path, chunks=None, consolidated=False)
    return _decode_attrs(ds)


def load(path: str | os.PathLike, *, validate: bool = True) -> xr.Dataset:
    """Read a Dataset written by :func:`save` fully into memory and close the file.

    Parameters
    ----------
    path : str or PathLike
        ``*.nc`` or ``*.zarr``.
    validate : bool
        Check the anvm_stats conventions with :func:`anvm_stats.dims.validate_dataset` (``instance`` dim,
        provenance attrs); turn off for Datasets that are not Monte Carlo results.

    Returns
    -------
    xr.Dataset
        In memory; the file is closed.

    Raises
    ------
    FileNotFoundError
        If nothing is at ``path``.
    ConfigError
        If the suffix is neither ``.nc`` nor ``.zarr``.
    """
    path = Path(path)
    _format(path)
    if not path.exists():
        raise FileNotFoundError(f"no results at {path}")
    with open_lazy(path) as lazy:
        ds = lazy.load()
    for v in ds.variables.values():
        v.encoding = {}
    if validate:
        dims.validate_dataset(ds)
    return ds
