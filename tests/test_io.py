"""anvm_stats.io: lossless, atomic save/load of result Datasets (netCDF and zarr)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from anvm_stats import devices
from anvm_stats import dims, io
from anvm_stats.errors import ConfigError
from anvm_stats.models import MLP
from anvm_stats.montecarlo import sweep


FORMATS = ["nc", "zarr"]


def _need(fmt):
    if fmt == "nc":
        pytest.importorskip("h5py", reason="netCDF writing needs h5py (h5netcdf[h5py])")


@pytest.fixture(scope="module")
def result():
    """A real sweep result with a hand-made mix of dtypes and attrs on top."""
    gen = torch.Generator().manual_seed(0)
    net = MLP(8, (6,), 7, generator=gen)
    x = torch.randn(20, 8, generator=gen)
    y = torch.randint(0, 7, (20,), generator=gen)
    ds = sweep(net, devices.paper1(sigma=0.05), (x, y), grid={dims.NOISE_LEVEL: [0.02, 0.1]},
               n_instances=5, seed=3, progress=False)
    ds = ds.assign_coords(model=("model", np.array(["a", "bcd"])))
    ds["flag"] = ((dims.INSTANCE,), np.arange(5) % 2 == 0)
    ds["small"] = ((dims.INSTANCE,), np.arange(5, dtype=np.uint8))
    ds["per_model"] = (("model",), np.array([1.5, np.nan]))
    ds.attrs.update(study_seed=7, ratio=0.25, flag=True, none=None, nested={"a": [1, 2]}, empty=[],
                    quantiles=[0.05, 0.5], names=["x", "y"], mixed=[1, "a"], text="µ-σ ✓")
    ds[dims.ACCURACY].attrs["flag"] = False
    return ds


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_identical(tmp_path, result, fmt):
    _need(fmt)
    path = io.save(result, tmp_path / f"run.{fmt}")
    back = io.load(path)
    xr.testing.assert_identical(back, result)
    for k, v in result.variables.items():
        assert back[k].dtype == v.dtype, k
    assert back[dims.CORRECT_COUNT].dtype == np.int64
    for k, v in result.attrs.items():   # Python types survive (JSON-able attrs stay JSON-able)
        want = str if isinstance(v, str) else type(v)      # str subclasses (TorchVersion) come back as str
        assert type(back.attrs[k]) is want or isinstance(v, list), k
        assert back.attrs[k] == v, k
    assert io.JSON_ATTRS not in back.attrs
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"run.{fmt}"]
    # overwrite in place with a different Dataset
    io.save(result.isel(instance=slice(0, 2)), path)
    assert io.load(path).sizes[dims.INSTANCE] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"run.{fmt}"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_crash_mid_write_leaves_nothing(tmp_path, result, fmt, monkeypatch):
    _need(fmt)
    real = xr.Dataset.to_netcdf if fmt == "nc" else xr.Dataset.to_zarr

    def crashing(self, target, *a, **kw):
        real(self.isel(instance=slice(0, 1)), target, *a, **kw)   # a partial, loadable-looking write
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(xr.Dataset, "to_netcdf" if fmt == "nc" else "to_zarr", crashing)
    path = tmp_path / f"run.{fmt}"
    with pytest.raises(KeyboardInterrupt):
        io.save(result, path)
    assert list(tmp_path.iterdir()) == []
    # an older complete result survives a crashed overwrite untouched
    monkeypatch.setattr(xr.Dataset, "to_netcdf" if fmt == "nc" else "to_zarr", real)
    io.save(result, path)
    monkeypatch.setattr(xr.Dataset, "to_netcdf" if fmt == "nc" else "to_zarr", crashing)
    with pytest.raises(KeyboardInterrupt):
        io.save(result.isel(instance=slice(0, 3)), path)
    assert [p.name for p in tmp_path.iterdir()] == [f"run.{fmt}"]
    xr.testing.assert_identical(io.load(path), result)


def test_wrong_suffix_and_validation(tmp_path, result):
    for name in ("run.h5", "run", "run.nc.bak"):
        with pytest.raises(ConfigError, match="path"):
            io.save(result, tmp_path / name)
        with pytest.raises(ConfigError, match=r"\.zarr"):
            io.load(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        io.load(tmp_path / "missing.zarr")
    bare = xr.Dataset({"v": (("layer",), [1.0, 2.0])})
    io.save(bare, tmp_path / "bare.zarr")
    with pytest.raises(ValueError, match="instance"):
        io.load(tmp_path / "bare.zarr")
    xr.testing.assert_identical(io.load(tmp_path / "bare.zarr", validate=False), bare)


CHILD = textwrap.dedent("""
    import os, signal, sys
    import numpy as np, xarray as xr
    from anvm_stats import io

    path, version, point = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    ds = xr.Dataset({"v": (("instance",), np.full(4, float(version)))}, attrs={"version": version})

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "write":           # the temporary is half written
        real_z, real_n = io._write_zarr, io._write_netcdf
        def partial(write):
            def w(enc, tmp):
                write(enc.isel(instance=slice(0, 1)), tmp)
                die()
            return w
        io._write_zarr, io._write_netcdf = partial(real_z), partial(real_n)
    elif point.startswith("rename"):  # after the n-th rename/replace that anvm_stats.io makes
        n = int(point[-1])
        calls = []
        def counting(real):
            def f(a, b):
                real(a, b)
                calls.append(1)
                if len(calls) == n:
                    die()
            return f
        class Os:                      # io's view of os; zarr's own file operations are not counted
            rename, replace = staticmethod(counting(os.rename)), staticmethod(counting(os.replace))
            def __getattr__(self, name):
                return getattr(os, name)
        io.os = Os()
    io.save(ds, path)
""")


def _dataset(version: int) -> xr.Dataset:
    return xr.Dataset({"v": (("instance",), np.full(4, float(version)))}, attrs={"version": version})


def _save_killed(path: Path, version: int, point: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), str(version), point], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, (proc.returncode, proc.stderr[-2000:])


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _need(fmt):
    if fmt == "nc":
        pytest.importorskip("h5py")


@pytest.mark.slow
@pytest.mark.parametrize("fmt, point, expect", [
    ("zarr", "write", 1),       # killed mid-write: the old store stays, a partial temporary is left
    ("zarr", "rename1", 2),     # killed between the renames: nothing at path, the new store was complete
    ("zarr", "rename2", 2),     # killed before the old store was deleted
    ("nc", "write", 1),
])
def test_killed_save_is_recovered_on_load_and_cleaned_on_save(tmp_path, fmt, point, expect):
    _need(fmt)
    path = tmp_path / f"run.{fmt}"
    io.save(_dataset(1), path)
    _save_killed(path, 2, point)
    left = [n for n in _names(tmp_path) if n != path.name]
    assert left, "the kill left nothing behind: the test does not reach its point"
    if point == "rename1":
        assert not path.exists()                               # the window the issue describes
    if expect == 2 and point == "rename1":
        with pytest.warns(RuntimeWarning, match="killed"):
            back = io.load(path, validate=False)
    else:
        back = io.load(path, validate=False)
    assert back.attrs["version"] == expect
    np.testing.assert_array_equal(back["v"].values, np.full(4, float(expect)))
    io.save(_dataset(3), path)                                 # the next save cleans every stale temporary
    assert _names(tmp_path) == [path.name]
    assert io.load(path, validate=False).attrs["version"] == 3


@pytest.mark.slow
def test_repeated_kills_do_not_accumulate(tmp_path):
    path = tmp_path / "run.zarr"
    for v in range(2):
        _save_killed(path, v, "write")
    assert len(_names(tmp_path)) == 1 and not path.exists()    # each save cleaned the previous kill's temporary
    with pytest.raises(FileNotFoundError):
        io.load(path, validate=False)
    io.save(_dataset(9), path)
    assert _names(tmp_path) == [path.name]


@pytest.mark.slow
def test_temporaries_of_a_running_writer_and_of_other_paths_are_kept(tmp_path):
    path = tmp_path / "run.zarr"
    io.save(_dataset(1), path)
    mine = io.temporary_sibling(path)                           # this (running) process's temporary
    mine.mkdir()
    other = io.temporary_sibling(tmp_path / "other.zarr")
    other.mkdir()
    dead = path.with_name(f"{path.name}.tmp-{_dead_pid()}-0123456789ab")
    dead.mkdir()
    io.save(_dataset(2), path)
    assert _names(tmp_path) == sorted([path.name, mine.name, other.name])


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_write_text_replaces_whole_files_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    """Reports and study scripts write text through io.write_text: the old file survives a failed write intact
    and no temporary is left beside it."""
    from anvm_stats import io as avio
    target = tmp_path / "report.md"
    avio.write_text(target, "old\n")
    assert target.read_text() == "old\n"

    def broken(self, text, encoding=None):
        Path.write_bytes(self, b"half")
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", broken)
    with pytest.raises(OSError, match="disk full"):
        avio.write_text(target, "new\n")
    monkeypatch.undo()
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]
