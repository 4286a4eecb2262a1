"""evaluate_until: sequential stopping reaches its target width (or says the cap stopped it) and its instances
are the same chips as a fixed-size run with the same seed."""

import numpy as np
import pytest

import anvm_stats as av
from tests.helpers import make_data, make_mlp
import dataclasses
import inspect
import warnings


from anvm_stats import dims
from anvm_stats.hardware import Periphery, Quantizer
from tests.helpers import tiny_data10, tiny_mlp10



def test_stops_at_target_width_with_the_same_chips():
    net = make_mlp(sizes=(8, 16, 16, 4))
    data = make_data(n=40)
    spec = av.devices.paper1(0.3)
    ds, res = av.evaluate_until(net, spec, data, target_width=0.04, instances_per_round=8, max_instances=400, seed=4,
                                progress=False)
    assert res.stopped_by == "width" and res.width <= 0.04
    assert ds.sizes["instance"] == res.n and res.n % 8 == 0 and res.n < 400
    fixed = av.evaluate(net, spec, data, n_instances=res.n, seed=4, progress=False)
    np.testing.assert_array_equal(ds.correct_count.values, fixed.correct_count.values)
    assert ds.attrs["stopped_by"] == "width"


def test_cap_is_reported():
    net = make_mlp(sizes=(8, 16, 16, 4))
    ds, res = av.evaluate_until(net, av.devices.paper1(0.3), make_data(n=40), statistic="yield",
                                threshold=0.3, target_width=1e-4, instances_per_round=4, max_instances=12, seed=0,
                                progress=False)
    assert res.stopped_by == "cap" and res.n == 12 and ds.sizes["instance"] == 12


@pytest.mark.slow
def test_tied_first_round_no_longer_stops_on_a_zero_width_interval():
    """Issue 21's reproduction, small: at sigma 0.06 the first 64 chips of this net all score 103/360, a few later
    chips differ.  The t interval of the old rule had zero width after the first round and stopped at n=64; the
    sequential interval keeps drawing and covers the mean of 2048 other chips."""
    net = make_mlp(sizes=(8, 16, 16, 4))
    data = make_data(n=360)
    spec = av.devices.paper1(0.06)
    ds, res = av.evaluate_until(net, spec, data, target_width=0.002, instances_per_round=64, max_instances=512,
                                seed=0, progress=False)
    first = ds.accuracy.values[:64]
    assert np.all(first == first[0])                      # the tied first round of the reproduction
    assert res.n > 64 and min(res.history_width) > 0
    other = av.sweep(net, spec, data, instances=range(512, 2560), seed=0, progress=False).accuracy.values
    assert np.unique(other).size > 1                      # the chips are not all alike
    # reference mean's own sampling error: 4.4 standard errors (two-sided false-failure rate 1e-5)
    tol = 4.4 * other.std(ddof=1) / np.sqrt(other.size)
    assert res.estimate.lower - tol <= other.mean() <= res.estimate.upper + tol


# --- issue 16 vocabulary: evaluate_until ----------------------------------------------------------------------------
def test_evaluate_until_takes_calibration_data_and_seed_0_by_default():
    sig = inspect.signature(av.evaluate_until)
    assert "calibration" not in sig.parameters
    assert sig.parameters["seed"].default == 0 == inspect.signature(av.evaluate).parameters["seed"].default
    x, y = tiny_data10()
    cal = (x * 3, y)
    spec = dataclasses.replace(av.devices.paper1(0.2), periphery=Periphery(dac=Quantizer(bits=4),
                                                                           adc=Quantizer(bits=4)))
    kw = dict(target_width=1e-9, instances_per_round=2, max_instances=4, progress=False)
    ds, _ = av.evaluate_until(tiny_mlp10(), spec, (x, y), calibration_data=cal, **kw)
    ref = av.evaluate(tiny_mlp10(), spec, (x, y), n_instances=4, calibration_data=cal, progress=False)
    np.testing.assert_array_equal(ds[dims.LOSS].values, ref[dims.LOSS].values)    # same chips, same ranges
    assert ds.attrs["seed_entropy"] == ref.attrs["seed_entropy"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        other = av.evaluate(tiny_mlp10(), spec, (x, y), n_instances=4, progress=False)
    assert not np.array_equal(other[dims.LOSS].values, ref[dims.LOSS].values)   # calibration_data was used
