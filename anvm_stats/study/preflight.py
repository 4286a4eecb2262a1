"""Checks :func:`~anvm_stats.study.runner.run_study` makes before any training or sweep: output folders that can
be written, result arrays that fit in memory, and data the model can score. Nothing is created on disk here."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ..checks import RESULT_BYTES_PER_CELL, check_model_data, memory_bytes
from ..errors import ConfigError
from .config import Ctx, Study
from .train import build
from .values import NAME_ALLOWED, SAFE_NAME

def check_folders(paths: dict[str, str | os.PathLike | None]) -> None:
    """Refuse folders that cannot be created or written: each ``{field: path}`` must be a folder, or a path
    whose nearest existing ancestor is a writable folder. ``None`` paths are skipped.

    Raises
    ------
    ConfigError
        Naming the field (e.g. ``--out``), the path and why.
    """
    for field, p in paths.items():
        if p is None:
            continue
        path = Path(p)
        if path.exists() and not path.is_dir():
            raise ConfigError(field, str(path), "a folder (this path is a file)")
        anc = path
        while not anc.exists():
            if anc.is_symlink():
                raise ConfigError(field, str(path), f"a folder ({anc} is a broken link)")
            anc = anc.parent
        if not anc.is_dir():
            raise ConfigError(field, str(path), f"a folder that can be created ({anc} is a file)")
        if not os.access(anc, os.W_OK | os.X_OK):
            raise ConfigError(field, str(path), f"a writable folder (no write permission on {anc})")


def check_size(study: Study, n_models: int, memory: int | None = None) -> None:
    """Refuse instance counts whose results cannot fit in memory (chips x grid points x models x chips' kinds).

    ``memory`` defaults to :func:`memory_bytes`.
    """
    memory = memory_bytes() if memory is None else memory
    if memory is None:
        return
    sw = study.sweep
    key, n = ("sweep.n_instances", sw.n_instances) if sw.target_ci_width is None \
        else ("sweep.max_instances", sw.max_instances)
    counts = [(key, n)]
    if study.recovery is not None and study.recovery.n_instances is not None:
        counts.append(("recovery.n_instances", study.recovery.n_instances))
    cells = math.prod(len(v) for v in sw.grid.values()) * max(n_models, 1) * len(study.hardware)
    c = Ctx(study.text, study.source)
    for field, count in counts:
        need = count * cells * RESULT_BYTES_PER_CELL
        if need > memory:
            most = max(memory // (cells * RESULT_BYTES_PER_CELL), 1)
            raise c.error(field, count, f"at most {most} chips here: the results of {count} chips x {cells} "
                                        f"point(s) need {need / 2**30:.3g} GiB, this machine has "
                                        f"{memory / 2**30:.3g} GiB")


def check_name(study: Study) -> None:
    """Refuse a study name that is not one safe path component (it names the report folder)."""
    if not isinstance(study.name, str) or not SAFE_NAME.fullmatch(study.name):
        raise Ctx(study.text, study.source).error("study.name", study.name, NAME_ALLOWED)


def check_data(study: Study, datasets) -> None:
    """Refuse data the model of ``study`` cannot score: inputs of another size, labels outside its outputs. The
    model is built on the meta device (shapes only: nothing is allocated or computed). The error names the data
    field and points at ``[data]``'s line."""
    with torch.device("meta"):
        model = build(study.model, study.seed)
    c = Ctx(study.text, study.source)
    for d in datasets:
        try:
            check_model_data(model, d, field="data")
        except ConfigError as err:
            raise c.error(err.field, f"{d.name}: {err.value}",
                          f"{err.allowed}; check model.args against data.name") from None
