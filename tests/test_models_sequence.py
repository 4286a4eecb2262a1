"""Sequence models of the zoo (anvm_stats.models): the digits-rows transformer and the character-level language
models: shapes, causality, seeded construction; the convolutional LM on the analog engine today."""

import numpy as np
import pytest
import torch

import anvm_stats as av
from anvm_stats import models
from anvm_stats.data import chars

pytestmark = pytest.mark.usefixtures("one_thread")
V = models.TEXT_VOCABULARY


def test_text_vocabulary_constant_matches_the_corpus():
    assert V == len(chars.vocabulary())


@pytest.mark.parametrize("name, kw, x, out", [
    ("token_transformer", {}, torch.rand(5, 64), (5, 10)),
    ("token_transformer", {}, torch.rand(5, 1, 8, 8), (5, 10)),
    ("char_transformer", dict(length=12), torch.eye(V)[torch.randint(0, V, (3, 12))], (3, 12, V)),
    ("char_transformer", dict(length=12, inputs="ids"), torch.randint(0, V, (3, 7)), (3, 7, V)),
    ("char_cnn", {}, torch.eye(V)[torch.randint(0, V, (3, 12))], (3, 12, V)),
])
def test_shapes(name, kw, x, out):
    net = models.build_model(name, seed=0, **kw).eval()
    assert net(x).shape == out


@pytest.mark.parametrize("name", ["char_transformer", "char_cnn"])
def test_language_models_are_causal(name):
    """Changing the character at position t changes no score before t (exact), and some score at t."""
    net = models.build_model(name, seed=1, **({"length": 16} if name == "char_transformer" else {})).eval()
    ids = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(0))
    other = ids.clone()
    other[:, 9] = (other[:, 9] + 1) % V
    with torch.no_grad():
        a, b = net(torch.eye(V)[ids]), net(torch.eye(V)[other])
    assert torch.equal(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9], b[:, 9])


@pytest.mark.parametrize("name", ["token_transformer", "char_transformer", "char_cnn"])
def test_seeded_construction_leaves_the_global_rng_alone(name):
    state = torch.get_rng_state()
    a, b = models.build_model(name, seed=4), models.build_model(name, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), k
    c = models.build_model(name, seed=5)
    assert not torch.equal(next(iter(a.parameters())), next(iter(c.parameters())))


def test_bad_sequence_model_arguments():
    with pytest.raises(av.errors.ConfigError) as err:
        models.build_model("token_transformer", d_model=30, heads=4)
    assert err.value.field == "heads"
    with pytest.raises(av.errors.ConfigError) as err:
        models.build_model("char_transformer", inputs="bytes")
    assert err.value.field == "CharTransformer.inputs"


def test_char_cnn_on_chips_perplexity_and_chip_module():
    """The convolutional LM runs on the engine today: a noiseless chip's perplexity is the float network's
    (exp of the mean token cross-entropy, to float32 round-off), and av.chip reproduces an
    instance of evaluate on [N, L, V] outputs."""
    net = models.build_model("char_cnn", seed=0, hidden=32).eval()
    test = av.data.text("test", length=16, n_windows=24)
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(net(test.x).transpose(1, 2), test.y)
    ds = av.sweep(net, av.devices.paper1(0.1), test, grid={"noise_level": [0.0, 0.3]}, n_instances=4,
                  metrics=["perplexity", "accuracy"], progress=False)
    ideal = ds["perplexity"].sel(noise_level=0.0).values
    np.testing.assert_allclose(ideal, np.exp(float(ce)), rtol=1e-5)
    assert np.ptp(ds["perplexity"].sel(noise_level=0.3).values) > 0      # noisy chips differ (untrained net)
    assert ds.attrs["tokens_per_sample"] == 16
    kept = []
    av.evaluate(net, av.devices.paper1(0.1), test, instances=[2], progress=False,
                metrics=[av.Metric("keep", lambda o, t: kept.append(o.clone()) or torch.zeros(len(o)))])
    c = av.chip(net, av.devices.paper1(0.1), index=2)
    torch.testing.assert_close(torch.cat([c(test.x[:10]), c(test.x[10:])]), torch.cat(kept), rtol=1e-5, atol=1e-6)


def test_token_transformer_with_its_head_analog_equals_its_chip_module():
    """Before analog attention: the transformer runs with only ``head`` analog (attention named digital), and
    av.chip reproduces an instance of evaluate (the full transformer case comes with analog token-wise layers)."""
    net = models.build_model("token_transformer", seed=0).eval()
    test = av.data.digits("test").subset(40, seed=0)
    kw = dict(layers=["head"], digital=[f"blocks.{i}.self_attn{s}" for i in range(2) for s in ("", ".out_proj")])
    spec = av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.05), av.ReadNoise(sigma=0.05)),
                           periphery=av.Periphery(adc=av.Quantizer(bits=8)))
    kept = []
    av.evaluate(net, spec, test, instances=[3], progress=False, **kw,
                metrics=[av.Metric("keep", lambda o, t: kept.append(o.clone()) or torch.zeros(len(o)))])
    c = av.chip(net, spec, index=3, calibration_data=test, **kw)
    torch.testing.assert_close(torch.cat([c(test.x[:25]), c(test.x[25:])]), torch.cat(kept), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("adc", [False, True])
def test_fully_analog_token_transformer_chip_module_equals_evaluate(adc):
    """Every projection analog (packed q/k/v, out_proj, the MLP blocks and the head): av.chip's outputs equal the
    outputs evaluate scored for that instance, with programming noise and per-MVM read noise (decoded-output path
    without an ADC, per-signal path with one), in other batch sizes than the engine's."""
    net = models.build_model("token_transformer", seed=0).eval()
    test = av.data.digits("test").subset(40, seed=0)
    spec = av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.05), av.ReadNoise(sigma=0.05)),
                           periphery=av.Periphery(adc=av.Quantizer(bits=8)) if adc else av.Periphery())
    kept = []
    ds = av.evaluate(net, spec, test, instances=[5], progress=False,
                     metrics=[av.Metric("keep", lambda o, t: kept.append(o.clone()) or torch.zeros(len(o)))])
    analog = ds.attrs["analog_layers"].split(",")
    assert {"blocks.0.self_attn.in_proj", "blocks.1.self_attn.out_proj", "blocks.1.linear1", "head"} <= set(analog)
    c = av.chip(net, spec, index=5, calibration_data=test)
    out = torch.cat([c(test.x[:7]), c(test.x[7:])])
    torch.testing.assert_close(out, torch.cat(kept), rtol=1e-5, atol=1e-5)
    c.reset()
    again = c(test.x)
    torch.testing.assert_close(again, out, rtol=1e-5, atol=1e-5)      # read noise keyed by sample, not by call
