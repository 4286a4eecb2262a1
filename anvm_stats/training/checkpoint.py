"""Atomic training checkpoints for exact resume.

A checkpoint holds the model and optimiser state dicts, the number of completed epochs and optimiser steps, the
history rows so far, the seed entropy and a fingerprint of the training arguments. It is written to a temporary
file in the same folder and moved over the old one with ``os.replace`` (atomic on POSIX and Windows), so an
interrupted write never leaves a corrupt checkpoint. Everything that decides the rest of the run is a pure
function of (seed, epoch) or (seed, step, draw) (data order, perturbations, torch's global RNG inside each
epoch), so resuming from it reproduces the uninterrupted run bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

FORMAT = 1
_KEYS = ("format", "fingerprint", "model", "optimizer", "epoch", "step", "history", "seed_entropy")


def fingerprint(arguments: dict[str, Any]) -> str:
    """SHA-256 of the JSON of ``arguments`` (non-JSON values by ``repr``): identifies a training configuration."""
    text = json.dumps(arguments, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def save_checkpoint(path: str | os.PathLike, *, fingerprint: str, model_state: dict, optimizer_state: dict,
                    epoch: int, step: int, history: list[dict], seed_entropy: str) -> Path:
    """Write a checkpoint atomically (temporary file + ``os.replace``); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "fingerprint": fingerprint, "model": model_state, "optimizer": optimizer_state,
               "epoch": int(epoch), "step": int(step), "history": [dict(r) for r in history],
               "seed_entropy": str(seed_entropy)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, *, fingerprint: str | None = None) -> dict | None:
    """The checkpoint at ``path`` (``None`` if there is none).

    Raises
    ------
    ConfigError
        If the file is not an anvm_stats checkpoint, or ``fingerprint`` is given and differs (the run was made
        with other training arguments).
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not our checkpoint"
        raise ConfigError("checkpoint", str(path), f"a checkpoint written by train_hasgd ({err})") from None
    if not isinstance(data, dict) or set(_KEYS) - set(data) or data["format"] != FORMAT:
        raise ConfigError("checkpoint", str(path), f"a train_hasgd checkpoint of format {FORMAT}")
    if fingerprint is not None and data["fingerprint"] != fingerprint:
        raise ConfigError("checkpoint", str(path), "a checkpoint written with the same training arguments "
                                                   "(model, data, q, L, optimiser, lr, batch size, seed, mode, ...);"
                                                   " use a new path for a different run")
    return data
