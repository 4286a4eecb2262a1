"""Checkpoints: an interrupted and resumed HA-SGD run equals the uninterrupted one bit for bit."""

import os

import numpy as np
import pytest
import torch
from torch import nn

from anvm_stats import devices
from anvm_stats import dims
from anvm_stats.errors import ConfigError
from anvm_stats.training import load_checkpoint, train_hasgd
from tests.helpers import make_data


def net_with_dropout_and_bn():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 4))


@pytest.mark.parametrize("mode,adc", [("split", None), ("direct", 6)])
def test_resume_after_interrupt_is_bitwise_identical(tmp_path, mode, adc):
    net, data = net_with_dropout_and_bn(), make_data(n=40)
    q = devices.paper1(0.1, 0.01)
    kw = dict(samples=3, epochs=4, batch_size=8, lr=[0.05, 0.05, 0.02, 0.01],
              seed=11, mode=mode, adc_levels=adc, perturb_batchnorm=True, eval_data=data, eval_instances=2,
              progress=False)
    full = train_hasgd(net, q, data, checkpoint=tmp_path / "full.pt", **kw)
    part = train_hasgd(net, q, data, checkpoint=tmp_path / "cut.pt", stop_after_epoch=2, **kw)
    assert not part.completed and part.epoch == 2 and part.step == 10
    ck = load_checkpoint(tmp_path / "cut.pt")
    assert ck["epoch"] == 2 and ck["step"] == 10 and len(ck["history"]) == 2
    resumed = train_hasgd(net, q, data, checkpoint=tmp_path / "cut.pt", **kw)
    assert resumed.completed and resumed.step == full.step == 20
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    for var in ("train_loss", "train_accuracy", "eval_accuracy", "eval_accuracy_q", "lr", "sigma_train"):
        np.testing.assert_array_equal(full.history[var].values, resumed.history[var].values, err_msg=var)
    assert full.history.sizes[dims.EPOCH] == 4
    assert sorted(os.listdir(tmp_path)) == ["cut.pt", "full.pt"]          # no temporary files left behind
    again = train_hasgd(net, q, data, checkpoint=tmp_path / "cut.pt", **kw)  # finished: returns the stored state
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(),
                                                 full.model.state_dict().values()))


def test_checkpoint_of_other_arguments_is_refused(tmp_path):
    net, data = net_with_dropout_and_bn(), make_data(n=16)
    q = devices.paper1(0.1)
    kw = dict(samples=2, epochs=1, batch_size=8, seed=0, progress=False)
    train_hasgd(net, q, data, checkpoint=tmp_path / "a.pt", **kw)
    with pytest.raises(ConfigError) as err:
        train_hasgd(net, q, data, checkpoint=tmp_path / "a.pt", **{**kw, "samples": 4})
    assert err.value.field == "checkpoint"
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError):
        train_hasgd(net, q, data, checkpoint=tmp_path / "junk.pt", **kw)


def test_history_schema_and_provenance():
    net, data = net_with_dropout_and_bn(), make_data(n=16)
    res = train_hasgd(net, devices.paper1(0.1), data, samples=2, epochs=2, batch_size=8, seed=0,
                      eval_data=data, progress=False)
    h = res.history
    assert set(h.dims) == {dims.EPOCH}
    for var in ("train_loss", "train_accuracy", "eval_accuracy", "eval_accuracy_q", "lr", "sigma_train"):
        assert np.isfinite(h[var].values).all(), var
    for attr in dims.REQUIRED_ATTRS:
        assert attr in h.attrs, attr
    assert h.attrs["mode"] == "split" and h.attrs["samples"] == 2
    assert not res.model.training
