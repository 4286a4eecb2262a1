"""anvm_stats.io: lossless, atomic save/load of result Datasets (netCDF and zarr)."""

from __future__ import annotations

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
