"""anvm_stats.parallel: Dask sweeps identical to the in-process engine, zarr stores that resume, worker loss."""

from __future__ import annotations

import os
import signal
from dataclasses import replace

import pytest
import torch
import xarray as xr

from anvm_stats import devices
from anvm_stats import dims
from anvm_stats.errors import ConfigError
from anvm_stats.hardware.effects import ReadNoise
from anvm_stats.hardware.tile import Tile
from anvm_stats.montecarlo import RunOptions, sweep
from anvm_stats.parallel import DaskExecutor, tasks
from tests.helpers import small_job


GRID = {dims.NOISE_LEVEL: [0.02, 0.05, 0.1]}


@pytest.fixture(scope="module", autouse=True)
def worker_threads():
    """Dask workers run torch on one thread (the nanny sets OMP_NUM_THREADS=1); oneDNN's reductions depend on
    the thread count, so the in-process references of this module run on one thread too (identical results)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


N, CHUNK, SEED = 24, 6, 11


@pytest.fixture(scope="module")
def job():
    net, spec, data = small_job()
    ref = sweep(net, spec, data, grid=GRID, n_instances=N, seed=SEED, progress=False)
    return net, spec, data, ref


EXECUTOR_KEYS = ("client", "store", "task_size", "n_workers", "split_grid", "on_task")


def dask(net, spec, data, *, sampler="auto", samples_per_batch=None, **kw):
    """``sweep`` on a DaskExecutor built from the DaskExecutor keywords in ``kw``."""
    ex = DaskExecutor(**{k: kw.pop(k) for k in EXECUTOR_KEYS if k in kw})
    return sweep(net, spec, data, executor=ex, progress=False,
                 options=RunOptions(sampler=sampler, samples_per_batch=samples_per_batch), **kw)


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    from anvm_stats.parallel import local_cluster

    with local_cluster(2, gpus=0) as cluster, distributed.Client(cluster) as c:
        c.wait_for_workers(2)
        assert all(a.startswith("tcp://127.0.0.1:") for a in c.scheduler_info()["workers"])
        yield c


def assert_same(got: xr.Dataset, ref: xr.Dataset) -> None:
    """Identical values, coords and dtypes; identical attrs except the creation time."""
    xr.testing.assert_identical(got.drop_attrs(deep=False), ref.drop_attrs(deep=False))
    for k, v in ref.variables.items():
        assert got[k].dtype == v.dtype, k
    skip = {"created_at"}
    assert {k: v for k, v in got.attrs.items() if k not in skip} == \
           {k: v for k, v in ref.attrs.items() if k not in skip}


@pytest.mark.slow
def test_cluster_identical_to_single_process(job, client):
    net, spec, data, ref = job
    before = sum(client.run(tasks.prepare_count).values())
    got = dask(net, spec, data, grid=GRID, n_instances=N, seed=SEED, task_size=CHUNK, client=client,
               split_grid=True)
    assert_same(got, ref)
    # programs are prepared once per worker (cached by content hash), not once per task (12 tasks here)
    assert 1 <= sum(client.run(tasks.prepare_count).values()) - before <= 2
    # whole-grid tasks, explicit instance subset
    sub = dask(net, spec, data, grid=GRID, instances=[3, 17, 5, 9], seed=SEED, client=client, task_size=3)
    assert_same(sub, ref.sel(instance=[3, 17, 5, 9]))
    # the sampler option reaches the workers: counter-drawn chips, identical to the in-process counter run
    counter = dask(net, spec, data, grid=GRID, instances=[3, 17], seed=SEED, client=client, task_size=3,
                   sampler="counter")
    assert counter.attrs["sampler"] == "philox4x32-counter"
    local = sweep(net, spec, data, grid=GRID, instances=[3, 17], seed=SEED, progress=False,
                  options=RunOptions(sampler="counter"))
    assert_same(counter, local)
    # a tiled chip with per-MVM read noise: same counts and the same tile attrs (n_tiles, per layer) as in process
    tiled = replace(spec, tile=Tile(rows=16, cols=8), effects=spec.effects + (ReadNoise(sigma=0.02),))
    got = dask(net, tiled, data, instances=[3, 17, 5], seed=SEED, client=client, task_size=2)
    local = sweep(net, tiled, data, instances=[3, 17, 5], seed=SEED, progress=False)
    assert local.attrs["n_tiles"] > 1 and "n_tiles_per_layer" in local.attrs
    assert_same(got, local)


def mean_logit(outputs, targets):
    """A user metric (a module-level function: it travels to the workers by reference)."""
    return outputs.mean(1)


@pytest.mark.slow
def test_metrics_reach_the_workers(job, client, tmp_path):
    """``metrics=`` on a Dask sweep: the same variables and values as in process, and part of the store's
    fingerprint (a store of other metrics is refused)."""
    net, spec, data, _ = job
    metrics = ["perplexity", mean_logit]
    local = sweep(net, spec, data, grid=GRID, instances=[3, 17, 5], seed=SEED, progress=False, metrics=metrics)
    got = dask(net, spec, data, grid=GRID, instances=[3, 17, 5], seed=SEED, client=client, task_size=2,
               metrics=metrics, store=tmp_path / "m.zarr")
    assert_same(got, local)
    assert set(got.data_vars) == {"perplexity", "mean_logit"}
    with pytest.raises(ConfigError):
        dask(net, spec, data, grid=GRID, instances=[3, 17, 5], seed=SEED, client=client, task_size=2,
             metrics=["perplexity"], store=tmp_path / "m.zarr")


class Stop(Exception):
    pass


@pytest.mark.slow
def test_interrupted_run_resumes_only_missing_tasks(job, client, tmp_path):
    net, spec, data, ref = job
    store = tmp_path / "run.zarr"
    kw = dict(grid=GRID, n_instances=N, seed=SEED, task_size=CHUNK, client=client, store=store, split_grid=True)
    n_tasks = (N // CHUNK) * len(GRID[dims.NOISE_LEVEL])
    first: list[int] = []

    def stop_after_3(task, n_done, n_total):
        first.append(task.index)
        assert n_total == n_tasks
        if len(first) == 3:
            raise Stop

    with pytest.raises(Stop):
        dask(net, spec, data, on_task=stop_after_3, **kw)
    assert store.is_dir() and not [p for p in tmp_path.iterdir() if p != store]
    second: list[int] = []
    got = dask(net, spec, data, on_task=lambda t, d, n: second.append(t.index), **kw)
    assert len(second) == n_tasks - 3 and not set(first) & set(second)
    assert sorted(first + second) == list(range(n_tasks))
    assert_same(got, ref)
    # a third call finds everything done: no task runs, same Dataset (even without a cluster)
    third: list[int] = []
    again = dask(net, spec, data, on_task=lambda *a: third.append(1), **{**kw, "client": None, "n_workers": None})
    assert third == []
    xr.testing.assert_identical(again, got)


@pytest.mark.slow
def test_store_of_another_study_is_refused(job, client, tmp_path):
    net, spec, data, _ = job
    store = tmp_path / "run.zarr"
    kw = dict(grid=GRID, n_instances=12, task_size=12, client=client, store=store)
    dask(net, spec, data, seed=SEED, **kw)
    with pytest.raises(ConfigError, match=r"differs in: seed \(store entropy=11"):
        dask(net, spec, data, seed=SEED + 1, **kw)
    with pytest.raises(ConfigError, match=r"differs in: spec "):
        dask(net, devices.paper1(sigma=0.05, mu=0.01), data, seed=SEED, **kw)
    with pytest.raises(ConfigError, match=r"differs in: model "):
        dask(small_job(seed=1)[0], spec, data, seed=SEED, **kw)
    with pytest.raises(ConfigError, match=r"chunking .*; grid "):
        dask(net, spec, data, seed=SEED, **{**kw, "grid": {dims.NOISE_LEVEL: [0.02]}, "task_size": 6})
    (tmp_path / "other.zarr").mkdir()
    with pytest.raises(ConfigError, match="store"):
        dask(net, spec, data, seed=SEED, **{**kw, "store": tmp_path / "other.zarr"})


@pytest.mark.slow
def test_store_records_the_resolved_sampler_and_refuses_a_mixed_resume(job, client, tmp_path):
    """The fingerprint holds the sampler "auto" resolved to on the workers (never "auto") and their device; a
    resume that would draw chips another way, or with another batch size, is refused naming the option."""
    from anvm_stats.parallel.store import stored_fingerprint

    net, spec, data, _ = job
    store = tmp_path / "run.zarr"
    kw = dict(grid=GRID, n_instances=12, task_size=6, client=client, store=store, seed=SEED)

    def stop(task, n_done, n_total):
        raise Stop

    with pytest.raises(Stop):
        dask(net, spec, data, on_task=stop, **kw)            # one task stored, drawn with "auto" on CPU workers
    fp = stored_fingerprint(store)
    assert (fp["sampler"], fp["device"], fp["samples_per_batch"]) == ("generator", "cpu", "default")
    with pytest.raises(ConfigError, match=r"sampler \(store generator, this run counter; RunOptions.sampler"):
        dask(net, spec, data, sampler="counter", **kw)
    with pytest.raises(ConfigError, match=r"samples_per_batch \(store default, this run 16; "
                                          r"RunOptions.samples_per_batch"):
        dask(net, spec, data, samples_per_batch=16, **kw)
    got = dask(net, spec, data, sampler="generator", **kw)   # the same chips as "auto" here: resumes
    assert got.attrs["sampler"] == "per-instance-generator"


def test_auto_sampler_on_workers_of_mixed_devices_is_refused():
    from anvm_stats.parallel.executor import _resolve_sampler

    assert _resolve_sampler("auto", "cpu") == "generator" and _resolve_sampler("auto", "cuda") == "counter"
    assert _resolve_sampler("counter", "cpu+cuda") == "counter"
    with pytest.raises(ConfigError, match="RunOptions.sampler.*mix devices"):
        _resolve_sampler("auto", "cpu+cuda")


@pytest.mark.parametrize("kw,field", [(dict(task_size=0), "DaskExecutor.task_size"),
                                      (dict(retries=-1), "DaskExecutor.retries"),
                                      (dict(client="localhost:8786"), "DaskExecutor.client")])
def test_bad_executor_options(kw, field):
    with pytest.raises(ConfigError) as info:
        DaskExecutor(**kw)
    assert info.value.field == field


@pytest.mark.slow
def test_worker_killed_mid_run_loses_and_duplicates_nothing(client):
    net, spec, (x, y) = small_job(seed=2)
    data = (x.repeat(8, 1), y.repeat(8))   # heavier tasks so that some are in flight when the worker dies
    n = 48
    ref = sweep(net, spec, data, grid=GRID, n_instances=n, seed=SEED, progress=False)
    pids = client.run(os.getpid)
    killed: list[int] = []
    seen: list[int] = []

    def kill_busy_worker(task, n_done, n_total):
        seen.append(task.index)
        if killed:
            return
        busy = {a: len(k) for a, k in client.processing().items() if k}
        assert busy, "no task in flight when the kill was due"
        addr = max(busy, key=busy.get)
        os.kill(pids[addr], signal.SIGKILL)
        killed.append(n_done)

    got = dask(net, spec, data, grid=GRID, n_instances=n, seed=SEED, task_size=4, client=client,
                            split_grid=True, on_task=kill_busy_worker)
    n_tasks = (n // 4) * 3
    assert killed and killed[0] < n_tasks
    assert sorted(seen) == list(range(n_tasks))          # every task stored exactly once
    assert_same(got, ref)
    client.wait_for_workers(2, timeout=60)               # the nanny restarts the worker for later tests
    assert set(client.run(os.getpid).values()) != set(pids.values())


@pytest.mark.slow
def test_last_worker_lost_inputs_are_scattered_again():
    """With one worker, killing it loses every copy of the scattered inputs: the run scatters them again."""
    distributed = pytest.importorskip("distributed")
    from anvm_stats.parallel import local_cluster

    net, spec, (x, y) = small_job(seed=3)
    data = (x.repeat(4, 1), y.repeat(4))
    ref = sweep(net, spec, data, grid=GRID, n_instances=16, seed=SEED, progress=False)
    with local_cluster(1, gpus=0) as cluster, distributed.Client(cluster) as c:
        c.wait_for_workers(1)
        pid = next(iter(c.run(os.getpid).values()))
        seen: list[int] = []

        def kill_once(task, n_done, n_total):
            if not seen:
                os.kill(pid, signal.SIGKILL)
            seen.append(task.index)

        got = dask(net, spec, data, grid=GRID, n_instances=16, seed=SEED, task_size=2, client=c,
                                on_task=kill_once)
    assert sorted(seen) == list(range(8))
    assert_same(got, ref)
