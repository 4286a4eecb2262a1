"""anvm_stats.parallel.tasks: the task plan covers every cell once; model and data hashes see every change."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anvm_stats import dims
from anvm_stats.parallel import plan_tasks, tasks
from tests.helpers import small_job
import inspect





@pytest.mark.parametrize("split", [False, True])
def test_plan_covers_every_cell_once(split):
    values = [np.array([0.1, 0.2, 0.3]), np.array([4, 8])]
    plan = plan_tasks(values, 23, 5, split)
    count = np.zeros((3, 2, 23), int)
    for t in plan:
        r = t.region(["a", "b"])
        count[r["a"], r["b"], r[dims.INSTANCE]] += 1
    assert (count == 1).all()
    assert [t.index for t in plan] == list(range(len(plan)))
    assert len(plan) == 5 * (6 if split else 1)


def test_hashes_see_weights_and_data():
    net, _, (x, y) = small_job()
    h = tasks.hash_model(net)
    assert tasks.hash_model(small_job()[0]) == h
    with torch.no_grad():
        net.layers[0].weight[0, 0] += 1e-6
    assert tasks.hash_model(net) != h
    d = tasks.hash_data((x, y))
    assert tasks.hash_data([(x[:20], y[:20]), (x[20:], y[20:])]) != d   # batch boundaries matter
    y2 = y.clone()
    y2[0] = (y2[0] + 1) % 7
    assert tasks.hash_data((x, y2)) != d


def test_dask_task_planning_says_task_size():
    from anvm_stats.parallel import plan_tasks
    from anvm_stats.parallel.store import ZarrSink, fingerprint

    assert "task_size" in inspect.signature(plan_tasks).parameters
    assert "task_size" in inspect.signature(fingerprint).parameters
    assert "task_size" in inspect.signature(ZarrSink).parameters
    tasks = plan_tasks([np.array([0.1, 0.2])], 5, task_size=2, split_grid=False)
    assert [(t.start, t.stop) for t in tasks] == [(0, 2), (2, 4), (4, 5)]
