"""Train-if-needed: data loading for studies, and trained weights cached under a content hash.

The cache key is the SHA-256 of the model config, the training config (method, epochs, lr, batch size, L, the
training spec q), the study seed and the bytes of the training data; a hit loads ``<cache>/<key>.pt`` (state dict
plus training history) instead of training. Entries are written atomically, each with a sidecar
``<key>.pt.sha256`` holding the SHA-256 of its bytes; an entry whose bytes do not match (corrupt, tampered, or
written without a sidecar) is reported with its path and retrained, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import xarray as xr
from torch import nn

from .. import dims
from ..metrics import token_loss
from ..training import train_hasgd
from .config import DataConfig, ModelConfig, StudyError, TrainingConfig

DEFAULT_CACHE = ".anvm_cache"


def load_data(cfg: DataConfig, device: str | torch.device | None = None):
    """``(train, test)`` :class:`anvm_stats.data.Data` of a study (seeded subsets with ``n_train``/``n_test``).

    Raises
    ------
    FileNotFoundError
        When a file-backed data set is missing under ``root`` (the message names the expected files).
    """
    from ..data import load

    opts = dict(cfg.options)
    if "split_seed" in opts:
        opts["seed"] = opts.pop("split_seed")
    out = []
    for split, n in (("train", cfg.n_train), ("test", cfg.n_test)):
        d = load(cfg.name, cfg.root, split, **opts)
        if n is not None:
            if n > d.n:
                raise StudyError(f"data.n_{split}", n, f"at most the {d.n} samples of the {split} split")
            d = d.subset(n, seed=0)
        out.append(d.to(device) if device is not None else d)
    return tuple(out)


def build(cfg: ModelConfig, seed: int) -> nn.Module:
    """The zoo model of ``cfg`` with initial weights from ``cfg.seed`` (default ``seed``)."""
    from ..models import build_model

    return build_model(cfg.name, seed=cfg.seed if cfg.seed is not None else seed, **cfg.args)


def data_digest(data) -> str:
    """SHA-256 of the inputs and labels of a Data (its content, not its name)."""
    h = hashlib.sha256()
    for t in (data.x, data.y):
        a = np.ascontiguousarray(t.detach().cpu().numpy())
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def cache_key(model: ModelConfig, training: TrainingConfig, data: DataConfig, seed: int, digest: str) -> str:
    """Content hash naming a trained model in the cache."""
    blob = {"model": {"name": model.name, "args": model.args, "seed": model.seed},
            "data": {"name": data.name, "options": data.options, "n_train": data.n_train, "digest": digest},
            "training": training.cache_key(), "seed": seed}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:24]


def history_dict(history) -> dict[str, list[float]]:
    """Per-epoch curves of a TrainResult.history (Dataset with an ``epoch`` dim, or dict of lists)."""
    if history is None:
        return {}
    if isinstance(history, xr.Dataset):
        return {str(k): [float(x) for x in np.asarray(v.values, dtype=float).ravel()]
                for k, v in history.data_vars.items() if v.dims == (dims.EPOCH,)}
    out = {}
    for k, v in dict(history).items():
        try:
            arr = np.asarray(v, dtype=float)
        except (TypeError, ValueError):
            continue
        if arr.ndim == 1:
            out[str(k)] = arr.tolist()
    return out


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the bytes of ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sidecar(path: Path) -> Path:
    """The file recording the SHA-256 of cache entry ``path``."""
    return path.with_name(path.name + ".sha256")


def read_cached(path: Path, key: str, model: nn.Module) -> tuple[dict | None, str]:
    """``(history, "")`` after loading a verified cache entry into ``model``, or ``(None, why)`` if the entry must
    not be used (its recorded SHA-256 is missing or differs from its bytes, or it does not load)."""
    from ..errors import ConfigError
    from ..models import apply_state_dict

    try:
        recorded = sidecar(path).read_text().strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None, f"no valid SHA-256 recorded in {sidecar(path)}"
    actual = file_sha256(path)
    if actual != recorded:
        return None, f"SHA-256 {actual[:16]}... differs from the recorded {recorded[:16]}..."
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("key") != key:
            return None, "it was written for another cache key"
        apply_state_dict(model, blob, field="cache entry", source=str(path))
    except (ConfigError, RuntimeError, OSError, pickle.UnpicklingError) as err:
        return None, str(err)
    return dict(blob.get("history", {})), ""


def write_cached(path: Path, key: str, trained: nn.Module, history: dict) -> None:
    """Write a cache entry and its SHA-256 sidecar, each atomically (entry first: an entry without a matching
    sidecar is never used). Temporaries left by killed writers of the same entry are deleted first."""
    from ..io import recover, temporary_sibling

    path.parent.mkdir(parents=True, exist_ok=True)
    side = sidecar(path)
    recover(path)
    recover(side)
    tmp, side_tmp = temporary_sibling(path), temporary_sibling(side)
    try:
        state = {k: v.detach().cpu() for k, v in trained.state_dict().items()}
        torch.save({"state_dict": state, "history": history, "key": key}, tmp)
        side_tmp.write_text(file_sha256(tmp) + "\n")
        os.replace(tmp, path)
        os.replace(side_tmp, side)
    finally:
        tmp.unlink(missing_ok=True)
        side_tmp.unlink(missing_ok=True)


def train_or_load(model_cfg: ModelConfig, training: TrainingConfig, data_cfg: DataConfig, train_data, *,
                  seed: int, cache_dir: str | Path | None = DEFAULT_CACHE, device=None, progress: bool = True,
                  log: Callable[[str], None] = lambda s: None) -> tuple[nn.Module, dict, bool]:
    """Train one model of a study, or load it from the cache.

    Returns
    -------
    (model, history, cached)
        The trained network in eval mode on ``device``, its per-epoch curves ``{name: [epochs]}``, and whether it
        came from the cache. ``cache_dir=None`` disables the cache. A cache entry that fails its SHA-256 check
        is logged with its path and retrained (then overwritten).
    """
    model = build(model_cfg, seed)
    key = cache_key(model_cfg, training, data_cfg, seed, data_digest(train_data))
    path = Path(cache_dir) / f"{key}.pt" if cache_dir is not None else None
    if path is not None and path.exists():
        history, why = read_cached(path, key, model)
        if history is not None:
            log(f"[{training.label}] trained weights from cache {path} (SHA-256 verified)")
            return model.to(device or "cpu").eval(), history, True
        log(f"[{training.label}] cache entry {path} is not used ({why}); retraining")
        model = build(model_cfg, seed)   # the failed load may have touched the weights
    fn = train_hasgd
    kw = dict(samples=training.samples, epochs=training.epochs, batch_size=training.batch_size,
              seed=seed, progress=progress, **training.options)
    if training.lr is not None:
        kw["lr"] = training.lr
    if train_data.y.dim() > 1:              # token labels [N, L]: the mean cross-entropy over every token
        kw["loss_fn"] = token_loss
    log(f"[{training.label}] training: {training.method}, {training.epochs} epochs")
    if device is not None:
        model, train_data = model.to(device), train_data.to(device)
    result = fn(model, training.q, train_data, **kw)
    trained = getattr(result, "model", result)
    history = history_dict(getattr(result, "history", None))
    if path is not None:
        write_cached(path, key, trained, history)
    return trained.eval(), history, False


def load_weights(model_cfg: ModelConfig, seed: int, device=None) -> nn.Module:
    """The zoo model with the state dict at ``model_cfg.weights`` (a file or a cache entry with ``state_dict``).

    Raises
    ------
    FileNotFoundError
        If the file is missing.
    ConfigError
        Naming ``model.weights``, for a file that is not a state dict (e.g. text) or is of another architecture.
    """
    from ..models import load_weights_file

    return load_weights_file(build(model_cfg, seed), model_cfg.weights, field="model.weights").to(
        device or "cpu").eval()
