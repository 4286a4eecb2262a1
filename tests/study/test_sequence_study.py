"""Sequence studies: ``sweep.metrics`` and the ``text`` data set in study files (validated with key and line), and a
tiny character-level LM study end to end (token loss in training and Hessian traces, perplexity variables and
report tables)."""

from pathlib import Path

import numpy as np
import pytest

from anvm_stats import dims
from anvm_stats.study import load_study, parse_study, run_study
from anvm_stats.study.config import StudyError
from anvm_stats.study.source import read_study

ROOT = Path(__file__).resolve().parents[2]

LM = """\
[study]
name = "tiny_lm"
seed = 0

[model]
name = "char_cnn"
args = {{ context = 4, hidden = 16 }}

[data]
name = "text"
length = 12
n_train = 128
n_test = 24

[training]
method = "{method}"
epochs = 1
lr = 0.01
batch_size = 32

[hardware]
preset = "paper1"
args = {{ sigma = 0.05 }}

[sweep]
grid = {{ noise_level = [0.05, 0.2] }}
n_instances = 6
metrics = {metrics}

[outputs]
plots = ["distribution"]
sensitivity = true
html = false
"""


def _study(tmp_path, metrics='["accuracy", "perplexity"]', method="plain"):
    p = tmp_path / "lm.toml"
    p.write_text(LM.format(metrics=metrics, method=method))
    return p


def test_shipped_sequence_studies_validate():
    for name in ("sequence_char_lm", "sequence_digits_transformer"):
        st = load_study(ROOT / "studies" / f"{name}.toml")
        assert "accuracy" in st.sweep.metrics


@pytest.mark.parametrize("metrics, key, words", [
    ('["accuracy", "bleu"]', "sweep.metrics[1]", ["bleu", "perplexity"]),
    ('["perplexity"]', "sweep.metrics", ["accuracy"]),
    ('["accuracy", "loss", "cross_entropy"]', "sweep.metrics[2]", ["repeats", "loss"]),
    ('"accuracy"', "sweep.metrics", ["a non-empty list"]),
])
def test_bad_metrics_are_refused_with_key_and_line(tmp_path, metrics, key, words):
    p = _study(tmp_path, metrics)
    with pytest.raises(StudyError) as err:
        load_study(p)
    msg = str(err.value)
    assert err.value.field == key and "lm.toml:28:" in msg, msg
    for w in words:
        assert w in msg, (w, msg)


def test_text_options_are_checked(tmp_path):
    text, data = read_study(_study(tmp_path))
    data["data"]["length"] = 0
    with pytest.raises(StudyError) as err:
        parse_study(data, text=text)
    assert err.value.field == "data.length"
    data["data"]["length"], data["data"]["image"] = 12, True
    with pytest.raises(StudyError) as err:
        parse_study(data, text=text)
    assert err.value.field == "data.image"


@pytest.mark.slow
def test_tiny_language_model_study_end_to_end(tmp_path):
    res = run_study(load_study(_study(tmp_path, '["accuracy", "perplexity", "loss"]', method="hasgd")),
                    out=tmp_path / "o", progress=False, log=lambda s: None, cache_dir=None)
    ds = res.dataset
    assert ds.attrs["tokens_per_sample"] == 12 and ds.attrs["metrics"] == "accuracy,perplexity,loss"
    assert ds["perplexity"].dims == ("noise_level", "instance")
    np.testing.assert_allclose(np.log(ds["perplexity"].values), ds["loss"].values, rtol=1e-6)
    assert 0 <= float(ds["float_accuracy"]) <= 1 and np.isfinite(ds["history_train_loss"].values).all()
    assert set(ds["sensitivity_trace"][dims.LAYER].values) == {"conv", "mix.0", "head"}
    md = (tmp_path / "o" / "report.md").read_text()
    assert "## Perplexity" in md and "## Mean cross-entropy loss" in md and "(lower is better)" in md


def test_resumable_stores_are_named_by_the_metrics_too(tmp_path):
    """A study's Dask store is named by what its sweep computes: other metrics, another store."""
    import numpy as np_

    from anvm_stats.models import build_model
    from anvm_stats.study.runner import _Ctx

    def store(metrics):
        st = load_study(_study(tmp_path, metrics))
        ctx = _Ctx(study=st, models={}, test=None, device=None, progress=False, client=object(),
                   store_dir=tmp_path / "stores")
        net = build_model("char_cnn", seed=0, context=4, hidden=16)
        return ctx.executor(net, st.hardware["base"], np_.arange(6)).store

    a, b = store('["accuracy", "perplexity"]'), store('["accuracy", "loss"]')
    assert a != b and store('["accuracy", "perplexity"]') == a
