"""User metrics: Metric descriptions, built-ins, and metrics= on evaluate / sweep / evaluate_until (per-instance
reductions against direct computations, token outputs, intervals against scipy, bad input)."""

import math

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

import anvm_stats as av
from anvm_stats import metrics as M
from anvm_stats.errors import ConfigError
from tests.helpers import assert_one_line_error, logits, make_data, make_mlp

pytestmark = pytest.mark.usefixtures("one_thread")
SPEC = av.devices.paper1(0.1)


def run(net, data, **kw):
    kw.setdefault("progress", False)
    return av.evaluate(net, SPEC, data, **kw)


def kept_outputs(net, data, instances, **kw):
    """Every instance's outputs in the engine, ``[K, N, ...]``, through a metric that keeps them."""
    kept = []

    def keep(outputs, targets):
        kept.append(outputs.clone())
        return torch.zeros(outputs.shape[0])

    ds = run(net, data, instances=instances, metrics=[M.Metric("keep", keep)] + kw.pop("metrics", []), **kw)
    K = len(instances)
    return ds, torch.cat([o.view(K, -1, *o.shape[1:]) for o in kept], dim=1)


@pytest.fixture(scope="module")
def regression():
    net = make_mlp(sizes=(8, 16, 16, 3))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(30, 8, generator=g)
    return net, (x, torch.randn(30, 3, generator=g))


# -- a regression net: a user MSE against the direct per-instance computation ----------------------------------------

def test_user_mse_equals_the_direct_per_instance_computation(regression):
    net, (x, y) = regression
    idx = list(range(6))

    def mse(outputs, targets):
        return ((outputs - targets) ** 2).mean(1)

    ds, out = kept_outputs(net, (x, y), idx, metrics=[mse], options=av.RunOptions(samples_per_batch=8))
    assert set(ds.data_vars) == {"keep", "mse"} and ds.attrs["metrics"] == "keep,mse"
    # exact: the reduction of the engine's own outputs (float64 sums of per-sample values, / n)
    direct = mse(out.reshape(-1, 3), y.repeat(len(idx), 1)).double().view(len(idx), -1).mean(1).numpy()
    np.testing.assert_allclose(ds["mse"].values, direct, rtol=1e-12)
    # and the chips themselves: programmed from the sampler, one plain forward each (float32 round-off)
    program = av.prepare(net, SPEC)
    g = av.ChipSampler(program, 0).chips(idx)
    ref = ((logits(program, g, x).double() - y.double()) ** 2).mean((1, 2)).numpy()
    np.testing.assert_allclose(ds["mse"].values, ref, rtol=1e-5)
    assert ds["mse"].attrs["higher_is_better"] == 1 and ds["mse"].attrs["reduction"] == "mean"
    builtin = run(net, (x, y), instances=idx, metrics=["mse"], options=av.RunOptions(samples_per_batch=8))
    exact = ((out.double() - y.double()) ** 2).mean(-1).mean(-1).numpy()      # the built-in works in float64
    np.testing.assert_allclose(builtin["mse"].values, exact, rtol=1e-12)
    assert builtin["mse"].attrs["higher_is_better"] == 0


def test_float_targets_need_a_metric_of_them(regression):
    net, data = regression
    with pytest.raises(ConfigError) as err:
        run(net, data, n_instances=2)                       # the defaults score class labels
    assert err.value.field == "data.y"
    with pytest.raises(ConfigError) as err:
        run(net, data, n_instances=2, metrics=["mse", "accuracy"])
    assert err.value.field == "data.y"


def test_metric_values_do_not_depend_on_chunking(regression):
    net, data = regression
    a = run(net, data, n_instances=7, metrics=["mse"])
    b = run(net, data, n_instances=7, metrics=["mse"], options=av.RunOptions(instances_per_chunk=2))
    c = run(net, data, instances=[6, 2], metrics=["mse"])
    np.testing.assert_array_equal(a["mse"].values, b["mse"].values)
    np.testing.assert_array_equal(a["mse"].sel(instance=[6, 2]).values, c["mse"].values)


def test_sweep_metrics_over_a_grid(regression):
    net, data = regression
    ds = av.sweep(net, SPEC, data, grid={"noise_level": [0.0, 0.2]}, n_instances=8, metrics=["mse"], progress=False)
    assert ds["mse"].dims == ("noise_level", "instance")
    zero = ds["mse"].sel(noise_level=0.0).values
    assert np.ptp(zero) < 1e-9 * zero.mean()        # no noise: every chip is the nominal one
    assert ds["mse"].sel(noise_level=0.2).mean() > zero.mean()


# -- intervals of a metric variable against scipy --------------------------------------------------------------------

def test_intervals_of_a_metric_variable_match_scipy(regression):
    net, data = regression
    ds = run(net, data, n_instances=40, metrics=["mse"])
    v = ds["mse"].values
    est = av.stats.mean(ds["mse"], ci=0.9)
    lo, hi = scipy.stats.t.interval(0.9, len(v) - 1, loc=v.mean(), scale=scipy.stats.sem(v))
    np.testing.assert_allclose(est["interval"].values, [lo, hi], rtol=1e-12)
    assert est.attrs["variable"] == "mse"
    t = float(np.median(v))
    y = av.stats.yield_(ds["mse"], threshold=t, ci=0.95)
    k = int((v >= t).sum())
    ref = scipy.stats.binomtest(k, len(v)).proportion_ci(0.95, method="exact")
    np.testing.assert_allclose(y["interval"].values, [ref.low, ref.high], rtol=1e-9)


# -- classifiers: the defaults unchanged, built-ins by name -----------------------------------------------------------

@pytest.fixture(scope="module")
def classifier():
    return make_mlp(sizes=(8, 16, 16, 7)), make_data(n=40, n_classes=7)


def test_builtin_names_give_the_default_variables_bit_for_bit(classifier):
    net, data = classifier
    ref = run(net, data, n_instances=6)
    ds = run(net, data, n_instances=6, metrics=["accuracy", "loss", "top5_accuracy"])
    for v in ("accuracy", "loss", "top5_accuracy", "correct_count"):
        np.testing.assert_array_equal(ds[v].values, ref[v].values)
    assert "metrics" not in ref.attrs and ds.attrs["metrics"] == "accuracy,loss,top5_accuracy"
    # the built-ins' per-sample functions (for users' own loops) agree with the engine's rank-based pass
    own = run(net, data, n_instances=6, metrics=[M.Metric("acc", M.token_correct),
                                                M.Metric("ce", M.token_cross_entropy), M.Metric("t5", M.token_top5)])
    np.testing.assert_array_equal(own["acc"].values, ref["accuracy"].values)
    np.testing.assert_array_equal(own["t5"].values, ref["top5_accuracy"].values)
    np.testing.assert_allclose(own["ce"].values, ref["loss"].values, rtol=1e-6)
    ppl = run(net, data, n_instances=6, metrics=["perplexity"])
    np.testing.assert_allclose(ppl["perplexity"].values, np.exp(ref["loss"].values), rtol=1e-6)


# -- token outputs: a language model scored per token -----------------------------------------------------------------

V, W, L = 6, 4, 3        # vocabulary, context window, predicted tokens


@pytest.fixture(scope="module")
def language_model():
    """An MLP over a one-hot window of W tokens giving [B, L, V] scores (its analog layers see 2-d inputs)."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        net = nn.Sequential(nn.Flatten(), nn.Linear(W * V, 24), nn.ReLU(), nn.Linear(24, L * V),
                            nn.Unflatten(1, (L, V))).eval()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, V, (50, W), generator=g)
    return net, (nn.functional.one_hot(ids, V).float(), torch.randint(0, V, (50, L), generator=g))


def test_token_outputs_are_scored_per_token(language_model):
    net, (x, y) = language_model
    idx = [0, 3, 4]
    ds, out = kept_outputs(net, (x, y), idx, metrics=["accuracy", "loss", "perplexity"])
    assert ds.attrs["tokens_per_sample"] == L
    token_ce = torch.nn.functional.cross_entropy(out.double().permute(0, 3, 1, 2), y.expand(len(idx), -1, -1),
                                                 reduction="none")                 # [K, N, L]
    correct = (out.argmax(-1) == y).sum((1, 2)).numpy()
    np.testing.assert_array_equal(ds["correct_count"].values, correct)
    np.testing.assert_allclose(ds["accuracy"].values, correct / (len(x) * L), rtol=1e-15)
    np.testing.assert_allclose(ds["loss"].values, token_ce.mean((1, 2)).numpy(), rtol=1e-6)
    # perplexity: exp of the mean per-sample token cross-entropy (equal windows: exp of the mean token loss)
    np.testing.assert_allclose(ds["perplexity"].values, np.exp(token_ce.mean(2).mean(1).numpy()), rtol=1e-6)
    np.testing.assert_allclose(np.log(ds["perplexity"].values), ds["loss"].values, rtol=1e-6)
    default = run(net, (x, y), instances=idx)                      # the defaults work on tokens too
    np.testing.assert_array_equal(default["correct_count"].values, correct)
    assert "top5_accuracy" in default and default.attrs["tokens_per_sample"] == L


def test_token_labels_must_match_the_outputs(language_model):
    net, (x, y) = language_model
    with pytest.raises(ConfigError) as err:
        run(net, (x, y[:, :2]), n_instances=2)
    assert err.value.field == "data.x" and "[N, L..., classes]" in str(err.value)
    with pytest.raises(ConfigError) as err:
        run(net, (x, y + V), n_instances=2, metrics=["perplexity"])
    assert err.value.field == "data.y"


# -- evaluate_until on a user metric ---------------------------------------------------------------------------------

def test_evaluate_until_stops_on_a_user_metric(regression):
    net, data = regression
    ds, res = av.evaluate_until(net, SPEC, data, target_width=2.0, variable="mse", metrics=["mse"],
                                bounds=(0.0, 10.0), instances_per_round=8, max_instances=64, progress=False)
    assert set(ds.data_vars) == {"mse"} and ds.sizes["instance"] == res.n
    np.testing.assert_allclose(res.estimate.estimate, ds["mse"].mean().item(), rtol=1e-12)
    with pytest.raises(ConfigError) as err:
        av.evaluate_until(net, SPEC, data, target_width=0.1, metrics=["mse"], progress=False)
    assert_one_line_error(err.value, "variable", ["accuracy", "mse"])


# -- bad input --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("metrics, field, word", [
    (["accuracy", "nope"], "metrics[1]", "nope"), ([3], "metrics[0]", "int"), ([], "metrics", "at least one"),
    (["mse", M.MSE], "metrics", "repeated"), ([M.Metric("correct_count", M.squared_error)], "metrics[0]", "correct"),
])
def test_bad_metrics_name_the_field(regression, metrics, field, word):
    net, data = regression
    with pytest.raises(ConfigError) as err:
        run(net, data, n_instances=2, metrics=metrics)
    assert_one_line_error(err.value, field, [word])


def test_a_metric_must_give_one_value_per_sample(regression):
    net, data = regression
    with pytest.raises(ConfigError) as err:
        run(net, data, n_instances=2, metrics=[M.Metric("whole", lambda o, t: ((o - t) ** 2).mean())])
    assert_one_line_error(err.value, "metrics.whole", ["[]", "per-sample"])


@pytest.mark.parametrize("kw, field", [
    (dict(name="two words", fn=M.squared_error), "Metric.name"),
    (dict(name="m", fn=3), "Metric(m).fn"),
    (dict(name="m", fn=M.squared_error, reduction="median"), "Metric(m).reduction"),
    (dict(name="m", fn=M.squared_error, higher_is_better="yes"), "Metric(m).higher_is_better"),
    (dict(name="m", fn=M.squared_error, bounds=(1.0, 0.0)), "Metric(m).bounds"),
])
def test_bad_metric_descriptions(kw, field):
    with pytest.raises(ConfigError) as err:
        M.Metric(**kw)
    assert err.value.field == field


def test_builtins_describe_themselves():
    assert M.resolve_metrics(None) is None
    assert M.resolve_metrics("perplexity") == (M.PERPLEXITY,)
    assert M.BUILTIN["cross_entropy"] is M.CROSS_ENTROPY and M.CROSS_ENTROPY.name == "loss"
    assert not M.PERPLEXITY.higher_is_better and M.ACCURACY.higher_is_better
    assert M.PERPLEXITY.reduce(math.log(3.0)) == pytest.approx(3.0)
    fn_metric, = M.resolve_metrics([M.squared_error])
    assert fn_metric.name == "squared_error" and fn_metric.reduction == "mean"


def test_a_metric_may_not_take_a_grid_dims_name(regression):
    net, data = regression
    with pytest.raises(ConfigError) as err:
        av.sweep(net, SPEC, data, grid={"noise_level": [0.1]}, n_instances=2, progress=False,
                 metrics=[M.Metric("noise_level", M.squared_error)])
    assert_one_line_error(err.value, "metrics", ["noise_level", "grid"])
    ds = run(net, data, n_instances=2, metrics=["mse"])
    assert "tokens_per_sample" not in ds.attrs                        # float targets [N, 3] are not tokens
