"""Issue 15 item 2 (cached weights are verified by SHA-256; a corrupt or tampered entry is reported and retrained,
never used) and item 4 (weights files that are text or of another architecture: one line naming the field)."""

import hashlib
import sys
import types

import pytest
import torch

from anvm_stats.cli import main
from anvm_stats.models import build_model
from anvm_stats.study import load_study, run_study


STUDY = """\
[study]
name = "w"
seed = 1

[model]
name = "mlp"
args = { in_features = 64, hidden = [8], n_classes = 10 }
{weights}
[data]
name = "digits"
n_train = 100
n_test = 40

[sweep]
n_instances = 2

[training]
method = "plain"
epochs = 1
lr = 0.05
"""


@pytest.fixture
def trainer(monkeypatch):
    """A seeded stand-in trainer (one SGD step per batch) that counts its calls."""
    calls = []

    def train_hasgd(model, spec, data, *, seed=0, lr=0.05, **kw):
        calls.append(seed)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        for x, y in data.batches(32):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return types.SimpleNamespace(model=model.eval(), history={"train_loss": [float(loss.detach())]})

    import anvm_stats.study.train
    monkeypatch.setattr(anvm_stats.study.train, "train_hasgd", train_hasgd)
    return calls


def _run(tmp_path, cache, logs, out="o"):
    path = tmp_path / "w.toml"
    path.write_text(STUDY.replace("{weights}", ""))
    return run_study(load_study(path), out=tmp_path / out, progress=False, log=logs.append, cache_dir=cache)


def _flip_signs(entry):
    blob = torch.load(entry, weights_only=True)
    blob["state_dict"] = {k: -v for k, v in blob["state_dict"].items()}
    torch.save(blob, entry)


@pytest.mark.parametrize("damage", ["tamper", "truncate", "no_sidecar"])
def test_damaged_cache_entry_is_reported_and_retrained(tmp_path, trainer, damage):
    cache = tmp_path / "cache"
    logs = []
    first = _run(tmp_path, cache, logs, "a")
    (entry,) = cache.glob("*.pt")
    side = entry.with_name(entry.name + ".sha256")
    assert side.read_text().strip() == hashlib.sha256(entry.read_bytes()).hexdigest()
    again = _run(tmp_path, cache, logs, "b")                       # intact: used, no training
    assert trainer == [1] and any("from cache" in s and "SHA-256 verified" in s for s in logs)
    if damage == "tamper":
        _flip_signs(entry)
    elif damage == "truncate":
        entry.write_bytes(entry.read_bytes()[:100])
    else:
        side.unlink()
    logs.clear()
    third = _run(tmp_path, cache, logs, "c")
    assert trainer == [1, 1], "a damaged entry was used"
    assert any(str(entry) in s and "not used" in s for s in logs), logs
    assert not any("from cache" in s for s in logs)
    for res in (again, third):                                   # retrained: the same network as the first run
        assert float(res.dataset["float_accuracy"]) == float(first.dataset["float_accuracy"])
    assert side.read_text().strip() == hashlib.sha256(entry.read_bytes()).hexdigest()


def test_text_weights_file_is_one_line_naming_the_field(tmp_path, capsys):
    text = tmp_path / "weights.pt"
    text.write_text("these are not weights\n")
    path = tmp_path / "w.toml"
    path.write_text(STUDY.replace("{weights}", f'weights = "{text}"').split("[training]")[0])
    assert main(["run", str(path), "--quiet", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.weights" in err and str(text) in err and "torch.save" in err, err


def test_weights_of_another_architecture_named_in_one_line(tmp_path, capsys):
    other = tmp_path / "other.pt"
    torch.save(build_model("mlp", seed=0, in_features=64, hidden=[32, 32], n_classes=10).state_dict(), other)
    path = tmp_path / "w.toml"
    path.write_text(STUDY.replace("{weights}", f'weights = "{other}"').split("[training]")[0])
    assert main(["run", str(path), "--quiet", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for word in ("model.weights", str(other), "another architecture", "unexpected: layers.4.weight",
                 "layers.0.weight [32, 64] vs [8, 64]"):
        assert word in err, (word, err)


def test_stale_temporaries_of_a_cache_entry_are_deleted_when_it_is_rewritten(tmp_path, trainer):
    import subprocess

    cache = tmp_path / "cache"
    _run(tmp_path, cache, [], "a")
    (entry,) = cache.glob("*.pt")
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    stale = [entry.with_name(f"{entry.name}.tmp-{dead}-0123456789ab"),
             entry.with_name(f"{entry.name}.sha256.tmp-{dead}-ba9876543210")]
    for p in stale:
        p.write_bytes(b"half a write")
    entry.with_name(entry.name + ".sha256").unlink()              # forces a rewrite
    _run(tmp_path, cache, [], "b")
    assert trainer == [1, 1]
    assert sorted(p.name for p in cache.iterdir()) == sorted([entry.name, entry.name + ".sha256"])
