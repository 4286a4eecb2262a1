"""Per-chip calibration after programming (anvm_stats.calibration.calibrate) and paired method comparisons."""

import dataclasses

import numpy as np
import pytest

from anvm_stats import devices
from anvm_stats import dims
from anvm_stats.calibration import CalibrationOptions, calibrate, compare_recovery
from anvm_stats.data import digits
from anvm_stats.errors import ConfigError
from anvm_stats.hardware import ReadNoise
from anvm_stats.montecarlo import evaluate
from anvm_stats.stats import paired_difference
from tests.helpers import make_data, make_mlp, make_resnet, train_digits_mlp


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits_net(one_thread):
    return train_digits_mlp()


@pytest.fixture(scope="module")
def splits():
    return digits("train"), digits("test")


ZERO_NOISE = [devices.ideal(), devices.paper1(sigma=0.0), devices.xiao_state_independent(0.0, adc_bits=6)]


@pytest.mark.parametrize("spec", ZERO_NOISE, ids=lambda s: s.name)
@pytest.mark.parametrize("kw", [dict(params="column_affine"), dict(params="sparse"),
                                dict(params="sparse", sparse_select="sensitivity")], ids=str)
def test_zero_noise_changes_nothing(digits_net, splits, spec, kw):
    tr, te = splits
    ds = calibrate(digits_net, spec, te, recovery_data=tr, n_instances=3, seed=0, steps=8, n_recovery=64,
                   progress=False, **kw)
    np.testing.assert_array_equal(ds.accuracy_after.values, ds.accuracy_before.values)
    np.testing.assert_array_equal(ds.loss_after.values, ds.loss_before.values)
    assert (ds.parameter_shift.values <= 1e-6).all()
    assert (ds.objective_before.values == 0).all()


def test_zero_noise_batchnorm_and_conv():
    net = make_resnet()
    x, y = make_data(n=32, shape=(1, 8, 8), n_classes=5)
    spec = dataclasses.replace(devices.ideal(), fold_batchnorm=False)
    for params in ("batchnorm", "column_affine", "sparse"):
        ds = calibrate(net, spec, (x, y), recovery_data=(x, y), n_instances=3, seed=0, steps=5, params=params,
                       progress=False)
        np.testing.assert_array_equal(ds.loss_after.values, ds.loss_before.values)
        assert (ds.parameter_shift.values <= 1e-6).all()


def test_noisy_chip_moves_parameters_and_lowers_objective():
    net, (x, y) = make_mlp(bn=True), make_data(n=48)
    spec = dataclasses.replace(devices.paper1(sigma=0.1), fold_batchnorm=False)
    for params in ("batchnorm", "column_affine", "sparse"):
        ds = calibrate(net, spec, (x, y), recovery_data=(x, y), n_instances=4, seed=1, steps=20, params=params,
                       progress=False)
        assert (ds.parameter_shift.values > 1e-4).all()
        assert (ds.objective_after.values < ds.objective_before.values).all()


@pytest.mark.parametrize("kw", [dict(params="column_affine"), dict(params="sparse", sparse_select="sensitivity")],
                         ids=str)
def test_calibration_recovers_rram_digits(digits_net, splits, kw):
    # Measured gains are ~+0.11 (column_affine) and ~+0.13 (sparse) with paired standard errors ~0.012: the
    # lower 99.99 % bound sits ~5 standard errors above zero; a fixed seed makes the test deterministic.
    tr, te = splits
    spec = devices.rram_charan()
    ds = calibrate(digits_net, spec, te, recovery_data=tr, n_instances=16, seed=0, n_recovery=256, progress=False, **kw)
    d = paired_difference(ds.accuracy_after, ds.accuracy_before, ci=0.9999)
    assert float(d.interval.sel(ci_bound="lower")) > 0
    float_acc = float((digits_net(te.x).argmax(1) == te.y).float().mean())
    assert float(ds.accuracy_after.mean()) <= float_acc + 0.02   # recovery, not better than the float network


def test_chips_are_evaluates_chips(splits, digits_net):
    tr, te = splits
    spec = devices.rram_charan()
    ev = evaluate(digits_net, spec, te, n_instances=12, seed=3, progress=False)
    ds = calibrate(digits_net, spec, te, recovery_data=tr, n_instances=12, seed=3, steps=1, instances_per_chunk=5,
                   progress=False)
    # the same chips; calibration's hooks keep its forwards instance-major while evaluate folds sample-major
    # (grouped oneDNN kernels), so losses agree to float round-off
    np.testing.assert_array_equal(ds.accuracy_before.values, ev.accuracy.values)
    np.testing.assert_allclose(ds.loss_before.values, ev.loss.values, rtol=1e-6)
    sub = calibrate(digits_net, spec, te, recovery_data=tr, instances=[7, 2], seed=3, steps=1, progress=False)
    np.testing.assert_array_equal(sub.accuracy_before.values, ev.accuracy.sel(instance=[7, 2]).values)


def test_chips_match_with_read_noise_adc_and_conv():
    net, (x, y) = make_resnet(), make_data(n=32, shape=(1, 8, 8), n_classes=5)
    base = devices.xiao_state_independent(0.1, adc_bits=5)
    spec = dataclasses.replace(base, effects=base.effects + (ReadNoise(sigma=0.05),))
    ev = evaluate(net, spec, (x, y), n_instances=6, seed=4, progress=False)
    ds = calibrate(net, spec, (x, y), recovery_data=(x, y), n_instances=6, seed=4, steps=3, instances_per_chunk=4,
                   progress=False)
    np.testing.assert_array_equal(ds.accuracy_before.values, ev.accuracy.values)
    np.testing.assert_allclose(ds.loss_before.values, ev.loss.values, rtol=1e-6)


def test_instances_adapt_independently(digits_net, splits):
    """Gradients never mix across chips: chip 5 adapted with 7 others equals chip 5 adapted alone."""
    tr, te = splits
    spec = devices.paper1(sigma=0.2)
    kw = dict(recovery_data=tr, seed=2, steps=10, n_recovery=128, progress=False)
    together = calibrate(digits_net, spec, te, n_instances=8, **kw)
    alone = calibrate(digits_net, spec, te, instances=[5], **kw)
    np.testing.assert_allclose(alone.objective_after.values, together.objective_after.sel(instance=[5]).values,
                               rtol=1e-4)
    np.testing.assert_allclose(alone.loss_after.values, together.loss_after.sel(instance=[5]).values, rtol=1e-4)


def test_sparse_set_size_and_determinism(digits_net, splits):
    tr, te = splits
    spec = devices.paper1(sigma=0.2)
    kw = dict(recovery_data=tr, n_instances=3, steps=3, n_recovery=64, params="sparse", sparse_fraction=0.02,
              progress=False)
    a = calibrate(digits_net, spec, te, seed=0, **kw)
    b = calibrate(digits_net, spec, te, seed=0, **kw)
    c = calibrate(digits_net, spec, te, seed=1, **kw)
    total = (64 + 1) * 64 + (64 + 1) * 10   # augmented weights W~ = [W, b/s] of both layers
    assert a.attrs["n_digital"] == round(0.02 * total)
    for v in ("accuracy_after", "loss_after", "objective_after"):
        np.testing.assert_array_equal(a[v].values, b[v].values)
    assert not np.array_equal(a.loss_after.values, c.loss_after.values)
    dims.validate_dataset(a)


def test_config_errors(digits_net, splits):
    tr, te = splits
    with pytest.raises(ConfigError, match="params"):
        calibrate(digits_net, devices.ideal(), te, recovery_data=tr, params="everything", progress=False)
    with pytest.raises(ConfigError, match="sparse_fraction"):
        CalibrationOptions(sparse_fraction=0.0)
    with pytest.raises(ConfigError, match="batchnorm"):   # folded (default) -> no BatchNorm left to adapt
        calibrate(make_mlp(bn=True), devices.ideal(), make_data(), recovery_data=make_data(), params="batchnorm",
                  n_instances=2, progress=False)


def test_compare_recovery_is_paired(digits_net, splits):
    tr, te = splits
    spec = devices.paper1(sigma=0.2)
    ds = compare_recovery({"naive": digits_net, "again": digits_net}, spec, te, recovery_data=tr, n_instances=8,
                          seed=0, params=("column_affine",), steps=10, n_recovery=128)
    assert list(ds.recovery.values) == ["naive", "naive+column_affine", "again", "again+column_affine"]
    # the same network on the same chips: identical per chip, zero gain with a zero-width interval
    np.testing.assert_array_equal(ds.accuracy.sel(recovery="again").values, ds.accuracy.sel(recovery="naive").values)
    assert float(ds.gain.sel(recovery="again")) == 0.0
    np.testing.assert_array_equal(ds.gain_interval.sel(recovery="again").values, [0.0, 0.0])
    ref = paired_difference(ds.accuracy.sel(recovery="naive+column_affine"), ds.accuracy.sel(recovery="naive"))
    np.testing.assert_allclose(ds.gain_interval.sel(recovery="naive+column_affine").values, ref.interval.values)
