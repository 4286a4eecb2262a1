"""Issue 15 item 7: a save killed at any point leaves nothing behind for long. The kill is real (SIGKILL of a
child process, so no ``except``/``finally`` of the writer runs), injected at each point of a save: during the
write, between the two renames of a zarr replace, and after the second rename. The next ``load`` finishes an
interrupted replace; the next ``save`` of the same path deletes the stale temporaries."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from anvm_stats import io

pytestmark = pytest.mark.slow   # each kill is a child process importing the package

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


def test_repeated_kills_do_not_accumulate(tmp_path):
    path = tmp_path / "run.zarr"
    for v in range(2):
        _save_killed(path, v, "write")
    assert len(_names(tmp_path)) == 1 and not path.exists()    # each save cleaned the previous kill's temporary
    with pytest.raises(FileNotFoundError):
        io.load(path, validate=False)
    io.save(_dataset(9), path)
    assert _names(tmp_path) == [path.name]


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
