"""Embeddings and integer inputs: token ids keep their dtype through the engine, nn.Embedding is a digital lookup
by default and an analog one-hot MVM on a vocabulary x dim array when named in layers=."""

import pytest
import torch
from torch import nn

import anvm_stats as av
from anvm_stats.batches import evaluation_batches
from anvm_stats.errors import ConfigError, UnsupportedLayerError
from tests.helpers import reference_any


class Bag(nn.Module):
    """Mean of token embeddings -> linear classifier."""

    def __init__(self, vocab=13, d=5, classes=3, max_norm=None):
        super().__init__()
        torch.manual_seed(7)
        self.emb = nn.Embedding(vocab, d, padding_idx=0, max_norm=max_norm)
        self.fc = nn.Linear(d, classes)

    def forward(self, ids):
        return self.fc(self.emb(ids).mean(1))


def data(n=40, vocab=13, length=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, length), generator=g)
    with torch.no_grad():
        y = Bag()(ids).argmax(1)
    return ids, y


def test_token_ids_keep_their_dtype_and_the_embedding_stays_digital_by_default():
    net = Bag().eval()
    ids, y = data()
    prog = av.prepare(net, av.devices.paper1(0.1))
    assert prog.layer_names == ["fc"]
    batches = evaluation_batches(prog, (ids.to(torch.int32), y), 16)
    assert all(x.dtype == torch.int32 for x, _ in batches)
    floats = evaluation_batches(av.prepare(nn.Sequential(nn.Linear(5, 3)), av.devices.ideal()),
                                (torch.randn(4, 5, dtype=torch.float64), y[:4]))
    assert floats.batches[0][0].dtype == torch.float32
    ds = av.evaluate(net, av.devices.ideal(), (ids, y), n_instances=2, progress=False)
    assert (ds.correct_count.values == len(y)).all()
    with pytest.raises(ConfigError, match="dtype torch.int64.*token ids"):
        av.evaluate(nn.Sequential(nn.Linear(6, 3)), av.devices.ideal(), (ids, y), n_instances=1, progress=False)


def test_an_analog_embedding_is_a_one_hot_mvm_of_each_chips_table():
    net = Bag().eval()
    ids, y = data()
    prog = av.prepare(net, av.devices.paper1(0.1), layers=["emb", "fc"])
    plan = prog.plans[0]
    assert (plan.name, plan.one_hot, plan.in_features, plan.out_features) == ("emb", True, 13, 5)
    g = av.ChipSampler(prog, 1).chips(range(3))
    prog.load(g, B=ids.shape[0])
    with torch.no_grad():
        out = prog.module(ids).view(3, ids.shape[0], -1)
    prog.unload()
    for k in range(3):
        with torch.no_grad():
            assert torch.allclose(out[k], reference_any(net, prog, g[k])(ids), atol=1e-5)
    ideal = av.evaluate(net, av.devices.ideal(), (ids, y), n_instances=2, layers=["emb", "fc"], progress=False)
    assert (ideal.correct_count.values == len(y)).all()
    spec = av.HardwareSpec(effects=(av.ReadNoise(sigma=0.2),))
    runs = [av.evaluate(net, spec, (ids, y), n_instances=4, seed=2, layers=lambda n, m: n == "emb",
                        options=av.RunOptions(samples_per_batch=spb), progress=False) for spb in (None, 3)]
    assert (runs[0].correct_count.values < len(y)).any()
    assert (runs[0].correct_count.values == runs[1].correct_count.values).all()


def test_an_embedding_that_renormalises_its_table_is_refused_as_analog():
    with pytest.raises(UnsupportedLayerError, match="'emb'.*max_norm=1.0"):
        av.prepare(Bag(max_norm=1.0), av.devices.ideal(), layers=["emb"])
    assert av.prepare(Bag(max_norm=1.0), av.devices.ideal()).layer_names == ["fc"]
