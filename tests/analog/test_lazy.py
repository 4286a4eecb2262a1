"""Affine chips programmed lazily, and the shared-input shortcut (anvm_stats.analog.lazy): layers that read the
network input compute ``x w0^T + coef * (x z^T)`` with cached products; results equal programming the weights first
up to round-off, and never depend on the caching or the chunking."""

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import anvm_stats as av
import anvm_stats.analog.lazy as lazy
import anvm_stats.montecarlo as mc
from anvm_stats.analog.program import AnalogProgram
from anvm_stats.hardware import Periphery, ProgrammingNoise, Quantizer
from tests.helpers import make_data, make_mlp, make_resnet


def data_vars(ds):
    return ds.drop_attrs() if hasattr(ds, "drop_attrs") else ds.assign_attrs({})


def run(net, spec, data, **kw):
    return av.sweep(net, spec, data, progress=False, **kw)


class TwiceNet(nn.Module):
    """One Linear applied to the input, then again to its own (per-instance) output; a second Linear after."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.out = nn.Linear(8, 4)

    def forward(self, x):
        return self.out(torch.relu(self.fc(torch.relu(self.fc(x)))))


class ScaledInputNet(nn.Module):
    """A digital transform of the input (shared by all chips) before the first analog layer."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(torch.tanh(2 * x))))


@pytest.mark.parametrize("maker,shape,expected", [
    (make_mlp, (8,), {"0": True, "3": False, "6": False}),
    (make_resnet, (1, 6, 6), {"conv1": True, "conv2": False, "short": False, "fc": False}),
    (TwiceNet, (8,), {"fc": False, "out": False}),
    (ScaledInputNet, (8,), {"a": True, "b": False}),
])
def test_mark_shared_inputs_finds_the_layers_that_read_per_sample_inputs(maker, shape, expected):
    torch.manual_seed(0)
    net = maker().eval()
    program = av.prepare(net, av.devices.paper1(0.1))
    x, _ = make_data(n=4, shape=shape)
    program.mark_shared_inputs(x)
    marks = {m.plan.name: m.input_shared for m in program.analog_modules()}
    assert {k: marks[k] for k in expected} == expected


def test_no_layer_is_marked_off_the_cpu(monkeypatch):
    """GPUs keep programming the weights: marks made on CPU are cleared when the program runs elsewhere."""
    program = av.prepare(make_mlp(), av.devices.paper1(0.1))
    x, _ = make_data(n=4)
    program.mark_shared_inputs(x)
    assert program.analog_modules()[0].input_shared
    monkeypatch.setattr(AnalogProgram, "device", property(lambda self: torch.device("cuda")))
    program.mark_shared_inputs(x)
    assert not any(m.input_shared for m in program.analog_modules())


SPECS = {
    "paper1-column": av.devices.paper1(0.15, mu=0.02),
    "digital-bias-dac": av.HardwareSpec(mapping=av.OffsetMapping(granularity="column"), effects=(
        ProgrammingNoise(sigma=0.08, relative_to="half_range", distribution="uniform", clip=False),),
        periphery=Periphery(dac=Quantizer(bits=5)), bias="digital"),
}


@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("maker,shape", [(make_mlp, (8,)), (make_resnet, (1, 6, 6)), (ScaledInputNet, (8,))])
def test_shared_input_path_matches_programmed_weights(monkeypatch, maker, shape, spec_name):
    """Same chips, same metrics up to round-off with the shortcut switched off; the shortcut was taken."""
    torch.manual_seed(1)
    net = maker().eval()
    spec = SPECS[spec_name]
    data = make_data(seed=2, n=60, shape=shape, n_classes=4)
    grid = {"noise_level": [0.05, 0.2]}
    calls = []
    original = lazy.LazyAffine.shared_input_output
    monkeypatch.setattr(lazy.LazyAffine, "shared_input_output", lambda *a: calls.append(1) or original(*a))
    fast = run(net, spec, data, grid=grid, n_instances=10, seed=3)
    assert calls
    monkeypatch.setattr(AnalogProgram, "mark_shared_inputs", lambda self, x: None)
    calls.clear()
    slow = run(net, spec, data, grid=grid, n_instances=10, seed=3)
    assert not calls
    np.testing.assert_allclose(fast.loss.values, slow.loss.values, rtol=1e-5)
    assert np.abs(fast.correct_count.values - slow.correct_count.values).max() <= 1
    assert float(fast.loss.std()) > 0


@pytest.mark.parametrize("maker,shape", [(make_mlp, (8,)), (make_resnet, (1, 6, 6))])
def test_product_caches_and_chunking_never_change_results(monkeypatch, maker, shape):
    """Cached products (reused across grid points, DAC settings and batches by key) give exactly what recomputing
    them gives; chunk sizes and batch sizes do not matter either (several batches: keys per batch)."""
    net = maker()
    spec = av.HardwareSpec(mapping=av.OffsetMapping(), effects=(ProgrammingNoise(sigma=0.1, clip=False,
                                                                                 relative_to="range"),),
                           periphery=Periphery(dac=Quantizer(bits=6)), bias="column")
    data = make_data(seed=5, n=45, shape=shape, n_classes=4)
    grid = {"noise_level": [0.02, 0.1, 0.3], "dac_bits": [3, 8]}
    batches16 = av.RunOptions(samples_per_batch=16)
    ref = run(net, spec, data, grid=grid, n_instances=11, seed=7, options=batches16)
    monkeypatch.setattr(mc, "PRODUCT_CACHE_BYTES", 0)
    monkeypatch.setattr(mc, "NOMINAL_CACHE_BYTES", 0)
    uncached = run(net, spec, data, grid=grid, n_instances=11, seed=7, options=batches16)
    xr.testing.assert_identical(data_vars(ref), data_vars(uncached))
    for chunk in (1, 4):
        xr.testing.assert_identical(data_vars(ref), data_vars(run(net, spec, data, grid=grid, n_instances=11,
                                                                  seed=7, options=av.RunOptions(
                                                                      samples_per_batch=16,
                                                                      instances_per_chunk=chunk))))
    # the DAC setting matters (a cache keyed without it would give both settings the same results)
    assert not np.array_equal(ref.loss.sel(dac_bits=3).values, ref.loss.sel(dac_bits=8).values)


def test_product_cache_keeps_within_its_budget():
    cache = lazy.ProductCache(max_bytes=100)
    made = []

    def make(n):
        return lambda: made.append(n) or torch.zeros(n)

    a = cache.get("a", make(20))                       # 80 bytes: kept
    assert cache.get("a", make(20)) is a and made == [20]
    cache.get("b", make(10))                           # 40 more bytes: over budget, not kept
    cache.get("b", make(10))
    assert made == [20, 10, 10] and cache.used == 80
