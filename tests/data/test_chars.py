"""The embedded text corpus and its character windows (anvm_stats.data.chars)."""

import numpy as np
import pytest
import torch

import anvm_stats as av
from anvm_stats.data import chars
from anvm_stats.errors import ConfigError


def test_corpus_is_the_projects_own_ascii_prose_with_its_source_named():
    head = chars.CORPUS.read_text().splitlines()[:2]
    assert head[0].startswith("# ") and "README.md" in head[0] and "text_corpus.py" in head[1]
    text = chars.corpus()
    assert len(text) > 20_000 and "# anvm_stats text corpus" not in text
    assert all(32 <= ord(c) < 127 or c == "\n" for c in text)
    assert chars.decode(chars.encode(text[:500])) == text[:500]
    assert list(chars.vocabulary()) == sorted(set(text))


def test_windows_and_shifted_targets_split_by_position():
    tr, te = av.data.text("train", length=16, n_windows=300), av.data.text("test", length=16, one_hot=False)
    V = len(chars.vocabulary())
    assert tr.x.shape == (300, 16, V) and tr.y.shape == (300, 16) and tr.n_classes == V and te.n == 256
    assert torch.equal(tr.x.argmax(-1)[:, 1:], tr.y[:, :-1])          # targets: the inputs shifted by one
    assert torch.equal(te.x[:, 1:].long(), te.y[:, :-1])
    text = chars.corpus()
    cut = int(len(text) * 0.9)
    train_part, test_part = text[:cut], text[cut:]
    for i in range(0, 300, 37):                                       # every window lies in its own split
        assert chars.decode(tr.x[i].argmax(-1)) + chars.decode(tr.y[i, -1:]) in train_part
    for i in range(0, 256, 41):
        assert chars.decode(te.x[i].long()) + chars.decode(te.y[i, -1:]) in test_part


def test_windows_are_seeded():
    a, b = av.data.text("train", n_windows=64, seed=3), av.data.text("train", n_windows=64, seed=3)
    c = av.data.text("train", n_windows=64, seed=4)
    assert torch.equal(a.y, b.y) and not torch.equal(a.y, c.y)
    assert torch.equal(av.data.load("text", None, "train", n_windows=64, seed=3).y, a.y)


@pytest.mark.parametrize("kw, field", [
    (dict(split="valid"), "split"), (dict(length=0), "length"), (dict(length=10**6), "length"),
    (dict(n_windows=0), "n_windows"), (dict(test_fraction=1.0), "test_fraction"), (dict(one_hot=1), "one_hot"),
])
def test_bad_arguments(kw, field):
    with pytest.raises(ConfigError) as err:
        av.data.text(**kw)
    assert err.value.field == field


def test_data_accepts_token_labels_but_still_checks_them():
    x, y = torch.zeros(4, 3, 5), torch.ones(4, 3, dtype=torch.int64)
    assert av.data.Data(x=x, y=y, name="t", n_classes=5).y.shape == (4, 3)
    with pytest.raises(ConfigError) as err:
        av.data.Data(x=x, y=y * 7, name="t", n_classes=5)
    assert err.value.field == "Data.y"
    with pytest.raises(ConfigError):
        av.data.Data(x=x, y=torch.tensor(1), name="t", n_classes=5)
    assert np.isclose(float(av.data.text("test").x.sum()), 256 * 32)   # one-hot: one 1 per character


def test_token_ids_stay_integers_and_an_embedding_model_evaluates_on_them():
    """Data keeps integer inputs as int64 token ids (real inputs become float32), so an nn.Embedding LM runs on
    text(one_hot=False) through the engine; its ideal chip scores the float model's exact token counts."""
    te = av.data.text("test", length=8, n_windows=20, one_hot=False)
    assert te.x.dtype == torch.int64 and av.data.Data(x=te.x.to(torch.int32), y=te.y, name="t",
                                                       n_classes=te.n_classes).x.dtype == torch.int64

    class LM(torch.nn.Module):
        def __init__(self, v):
            super().__init__()
            self.emb = torch.nn.Embedding(v, 16)
            self.out = torch.nn.Linear(16, v)

        def forward(self, ids):
            return self.out(torch.tanh(self.emb(ids)))

    torch.manual_seed(0)
    net = LM(te.n_classes).eval()
    ds = av.evaluate(net, av.HardwareSpec(), te, n_instances=2, progress=False)
    with torch.no_grad():
        correct = int((net(te.x).argmax(-1) == te.y).sum())
    assert ds.attrs["tokens_per_sample"] == 8
    assert ds["correct_count"].values.tolist() == [correct, correct]
