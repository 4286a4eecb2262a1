"""anvm_stats.training.hasgd: reduction to plain SGD, config errors, and an end-to-end robustness check on digits."""

import numpy as np
import pytest
import torch

from anvm_stats import devices
from anvm_stats.errors import ConfigError
from anvm_stats.training import (train_hasgd)
from tests.helpers import make_data, make_mlp, plain_sgd


@pytest.mark.parametrize("q,mode", [(None, "split"), (devices.paper1(0.0), "split"),
                                    (devices.paper1(0.0), "direct")])
def test_noise_free_is_plain_sgd_step_for_step(q, mode):
    net = make_mlp(bn=True)
    x, y = make_data(n=40)
    ref = plain_sgd(net, x, y, epochs=2, batch_size=8, lr=0.05, seed=5)
    res = train_hasgd(net, q, (x, y), samples=4, epochs=2, batch_size=8, lr=0.05, seed=5, mode=mode,
                      progress=False)
    assert res.step == 10
    for (n, a), b in zip(res.model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), n
    assert not torch.equal(res.model[0].weight, net[0].weight)   # it trained; the user's model is untouched
    assert torch.equal(net[0].weight, make_mlp(bn=True)[0].weight)


def test_split_with_one_draw_equals_direct_and_schedule_zero_epoch_is_plain():
    net = make_mlp(bn=True)
    x, y = make_data(n=32)
    q = devices.paper1(0.2)
    kw = dict(samples=1, epochs=2, batch_size=8, lr=0.05, seed=2, progress=False)
    a = train_hasgd(net, q, (x, y), mode="split", **kw).model.state_dict()
    b = train_hasgd(net, q, (x, y), mode="direct", **kw).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    sched = train_hasgd(net, devices.paper1(0.3), (x, y), sigma_schedule=[0.0, 0.1], epochs=1, batch_size=8,
                        lr=0.05, seed=2, samples=2, progress=False)
    plain = plain_sgd(net, x, y, epochs=1, batch_size=8, lr=0.05, seed=2)
    assert all(torch.equal(u, v) for u, v in zip(sched.model.state_dict().values(), plain.state_dict().values()))
    full = train_hasgd(net, devices.paper1(0.3), (x, y), sigma_schedule=lambda e: 0.1 * e, epochs=2,
                       batch_size=8, seed=2, samples=2, progress=False)
    np.testing.assert_allclose(full.history.sigma_train.values, [0.0, 0.1])


def test_config_errors_name_the_field():
    net, data = make_mlp(), make_data()
    for kw, field in [(dict(mode="sideways"), "mode"), (dict(samples=16, batch_size=8), "batch_size"),
                      (dict(spec=None, sigma_schedule=[0.1]), "sigma_schedule"), (dict(optimizer="lbfgs"), "optimizer")]:
        with pytest.raises(ConfigError) as err:
            train_hasgd(net, data=data, **{"spec": devices.paper1(0.1), **kw}, progress=False)
        assert err.value.field == field


@pytest.mark.slow
def test_hasgd_beats_plain_training_under_noise_on_digits():
    from anvm_stats.data import digits
    from anvm_stats.models import MLP
    from anvm_stats.montecarlo import evaluate
    from anvm_stats.stats import paired_difference

    train, test = digits("train"), digits("test")
    net = MLP(hidden=(64,), generator=torch.Generator().manual_seed(0))
    kw = dict(epochs=25, lr=0.1, batch_size=64, seed=0, progress=False)
    plain = train_hasgd(net, None, train, **kw).model
    robust = train_hasgd(net, devices.paper1(0.1), train, samples=8, **kw).model
    spec = devices.paper1(0.15)
    a = evaluate(robust, spec, test, n_instances=100, seed=1, progress=False).accuracy
    b = evaluate(plain, spec, test, n_instances=100, seed=1, progress=False).accuracy
    diff = paired_difference(a, b, ci=0.99)
    print("sigma_test=0.15 robust", float(a.mean()), "plain", float(b.mean()), "diff",
          float(diff.estimate), diff.interval.values)
    assert float(diff.interval.sel(ci_bound="lower")) > 0


def test_a_diverged_run_stops_with_an_error_naming_epoch_and_lr():
    """A run whose loss turns non-finite stops there (before NaN weights reach a sweep), naming epoch and lr."""
    net, data = make_mlp(bn=False), make_data(n=64)
    with pytest.raises(FloatingPointError, match=r"diverged: training loss nan in epoch \d+ \(lr 1e\+30"):
        train_hasgd(net, devices.paper1(0.1), data, epochs=5, lr=1e30, batch_size=16, seed=0, progress=False)


@pytest.mark.parametrize("mode", ["split", "direct", "local"])
def test_hasgd_trains_a_transformer_and_an_lstm_with_their_analog_arrays_perturbed(mode):
    """HA-SGD on models whose analog layers include attention (packed q/k/v) and LSTM arrays: it runs in every
    mode, changes the attention / recurrent weights differently from plain training (their noise is in the
    loss), and a noise-free q is plain training step for step."""
    from anvm_stats import models
    torch.manual_seed(0)
    net = models.build_model("token_transformer", seed=0, d_model=16, heads=2, layers=1, ff=16)
    x, y = torch.randn(24, 64), torch.randint(0, 10, (24,))
    kw = dict(samples=2, epochs=1, batch_size=8, lr=0.01, seed=3, mode=mode, progress=False)
    plain = train_hasgd(net, None, (x, y), **kw).model.state_dict()
    zero = train_hasgd(net, devices.paper1(0.0), (x, y), **kw).model.state_dict()
    noisy = train_hasgd(net, devices.paper1(0.2), (x, y), **kw).model.state_dict()
    key = "blocks.0.self_attn.in_proj_weight"
    assert all(torch.equal(plain[k], zero[k]) for k in plain)
    assert not torch.equal(plain[key], noisy[key])
    rnn = _LSTMClassifier()
    xs = torch.randn(24, 8, 8)
    plain = train_hasgd(rnn, None, (xs, y), **kw).model.lstm
    noisy = train_hasgd(rnn, devices.paper1(0.2), (xs, y), **kw).model.lstm
    assert not torch.equal(noisy.weight_hh_l0_reverse, plain.weight_hh_l0_reverse)
    assert not torch.equal(noisy.weight_hh_l0_reverse, rnn.lstm.weight_hh_l0_reverse)


class _LSTMClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(8, 12, batch_first=True, bidirectional=True)
        self.head = torch.nn.Linear(24, 10)

    def forward(self, t):
        return self.head(self.lstm(t)[0].mean(1))
