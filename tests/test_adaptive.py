"""evaluate_until: sequential stopping reaches its target width (or says the cap stopped it) and its instances
are the same chips as a fixed-size run with the same seed."""

import numpy as np
import xarray as xr

import anvm_stats as av
from conftest import make_data, make_mlp


def test_stops_at_target_width_with_the_same_chips():
    net = make_mlp(sizes=(8, 16, 16, 4))
    data = make_data(n=40)
    spec = av.devices.paper1(0.3)
    ds, res = av.evaluate_until(net, spec, data, target_width=0.04, batch_size=8, max_instances=400, seed=4,
                                progress=False)
    assert res.stopped_by == "width" and res.width <= 0.04
    assert ds.sizes["instance"] == res.n and res.n % 8 == 0 and res.n < 400
    fixed = av.evaluate(net, spec, data, n_instances=res.n, seed=4, progress=False)
    np.testing.assert_array_equal(ds.correct_count.values, fixed.correct_count.values)
    assert ds.attrs["stopped_by"] == "width"


def test_cap_is_reported():
    net = make_mlp(sizes=(8, 16, 16, 4))
    ds, res = av.evaluate_until(net, av.devices.paper1(0.3), make_data(n=40), statistic="yield",
                                threshold=0.3, target_width=1e-4, batch_size=4, max_instances=12, seed=0,
                                progress=False)
    assert res.stopped_by == "cap" and res.n == 12 and ds.sizes["instance"] == 12
