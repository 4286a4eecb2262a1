"""anvm_stats.data_source: Data objects work as evaluation data (tensors and batch iteration)."""

from __future__ import annotations

from anvm_stats.data import digits


def test_data_works_with_data_source():
    from anvm_stats.data_source import as_tensors, iter_batches

    d = digits("test")
    x, y = as_tensors(d)
    assert x is d.x and y is d.y
    assert sum(len(b[1]) for b in iter_batches(d, 64)) == 360
