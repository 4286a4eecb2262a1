"""Save and load result Datasets: netCDF (``.nc``, engine h5netcdf) and zarr (``.zarr`` directory).

Both formats round-trip losslessly (``xr.testing.assert_identical``: values, dtypes, coords and attrs). Attr
values that netCDF cannot hold (bools, ``None``, dicts, empty or mixed lists) are stored as JSON and restored on
load. Writes are atomic: the Dataset is written to a temporary sibling of ``path`` (same directory, so the final
rename never crosses a filesystem) and moved into place only once complete, so a crash mid-write never leaves
anything at ``path`` that loads as if complete; a failed write removes its temporary.

A process killed mid-save cannot remove its temporaries. Their names carry the writer's process id
(``<name>.tmp-<pid>-<hex>``; a zarr replace moves the old store to ``<name>.old-<pid>-<hex>`` with the same tag),
so the next :func:`save` or :func:`load` of the same path recognises those of dead writers: :func:`recover` finishes
a zarr replace killed between its two renames (the new store was complete: it is moved into place) and deletes
every other stale temporary of that path.
"""

from __future__ import annotations

import json
import os
import re
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


#: ``<name>.<tag>-<pid>-<hex>`` (``<pid>-`` absent in names written before the pid was recorded)
_LEFTOVER = re.compile(r"^(?P<name>.+)\.(?P<tag>tmp|old)-(?:(?P<pid>\d+)-)?(?P<hex>[0-9a-f]{12})$")


def temporary_sibling(path: Path, tag: str = "tmp") -> Path:
    """A fresh name ``<name>.<tag>-<pid>-<random>`` in the directory of ``path`` (the pid tells a later
    :func:`recover` whether its writer is still running)."""
    return path.with_name(f"{path.name}.{tag}-{os.getpid()}-{secrets.token_hex(6)}")


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:   # e.g. PermissionError: a process of another user holds that pid
        return True
    return True


def stale_leftovers(path: Path) -> list[tuple[str, str, Path]]:
    """``(tag, token, sibling)`` for every temporary of ``path`` (``tmp`` or ``old``) whose writer is not
    running, oldest first; ``token`` is ``<pid>-<hex>``, shared by the two temporaries of one replace."""
    path = Path(path)
    out = []
    try:
        siblings = list(path.parent.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    for sib in siblings:
        m = _LEFTOVER.match(sib.name)
        if m is None or m["name"] != path.name:
            continue
        pid = int(m["pid"]) if m["pid"] else None
        if not _alive(pid):
            try:
                mtime = sib.lstat().st_mtime
            except FileNotFoundError:   # gone meanwhile
                continue
            out.append((mtime, m["tag"], f"{m['pid'] or ''}-{m['hex']}", sib))
    return [t[1:] for t in sorted(out, key=lambda t: t[0])]


def recover(path: str | os.PathLike) -> bool:
    """Clean up after saves of ``path`` that were killed: if nothing is at ``path`` but a killed zarr replace
    left the old store aside, finish that replace (its new store was complete before the old one was moved, so it
    is moved into place; without it, the old store is moved back). Then delete every remaining stale temporary of
    ``path``. Temporaries of running writers are never touched.

    Returns
    -------
    bool
        Whether something was moved back to ``path``.
    """
    path = Path(path)
    stale = stale_leftovers(path)
    recovered = False
    if not (path.exists() or path.is_symlink()):
        tmps = {tok: p for tag, tok, p in stale if tag == "tmp"}
        olds = [(tok, p) for tag, tok, p in stale if tag == "old"]
        if olds:
            tok, old = olds[-1]                       # the most recent interrupted replace
            os.rename(tmps.get(tok, old), path)
            recovered = True
    for _, _, p in stale:
        if p.exists() or p.is_symlink():
            _remove(p)
    return recovered


def replace_atomically(tmp: Path, path: Path) -> None:
    """Move the complete ``tmp`` to ``path``: ``os.replace`` for a file; for a directory, move any old one
    aside (``<name>.old-<token of tmp>``), rename ``tmp`` into place, then delete the old one (``path`` never holds
    a partial write; a kill between the renames is finished by :func:`recover`)."""
    if not tmp.is_dir():
        os.replace(tmp, path)
        return
    old = None
    if path.exists() or path.is_symlink():
        m = _LEFTOVER.match(tmp.name)
        old = path.with_name(f"{path.name}.old-{m['pid']}-{m['hex']}") if m and m["pid"] \
            else temporary_sibling(path, "old")
        os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        if old is not None:
            os.rename(old, path)
        raise
    if old is not None:
        _remove(old)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically: a :func:`temporary_sibling` renamed onto ``path`` (a crash
    leaves the old file or the new one, never part of one)."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


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
        ``path`` is replaced only once the new one is complete. Stale temporaries of ``path`` left by killed
        saves are deleted first (:func:`recover`).

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
    recover(path)
    enc = _encode_attrs(ds)
    tmp = temporary_sibling(path)
    try:
        (_write_netcdf if fmt == "netcdf" else _write_zarr)(enc, tmp)
        replace_atomically(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    return path


def _recover_missing(path: Path) -> None:
    """If nothing is at ``path``, finish a replace of it that was killed between its renames (with a warning)."""
    if not (path.exists() or path.is_symlink()) and recover(path):
        warnings.warn(f"{path}: a save of it was killed while replacing the old store; the replace was finished "
                      f"(the new store was complete) before loading", RuntimeWarning, stacklevel=3)


def open_lazy(path: str | os.PathLike) -> xr.Dataset:
    """Open ``path`` without reading its data (the caller closes it); attrs are decoded as in :func:`load`."""
    path = Path(path)
    _recover_missing(path)
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
        If nothing is at ``path`` (after :func:`recover` found no interrupted replace to finish).
    ConfigError
        If the suffix is neither ``.nc`` nor ``.zarr``.
    """
    path = Path(path)
    _format(path)
    _recover_missing(path)
    if not path.exists():
        raise FileNotFoundError(f"no results at {path}")
    with open_lazy(path) as lazy:
        ds = lazy.load()
    for v in ds.variables.values():
        v.encoding = {}
    if validate:
        dims.validate_dataset(ds)
    return ds
