"""The training history of HA-SGD as a labelled Dataset."""

from __future__ import annotations

import numpy as np
import xarray as xr

from .. import dims
from ..data_source import describe
from ..devices.presets import ideal
from ..provenance import provenance
from ..rng import seed_entropy


def training_history(rows: list[dict], *, model, spec, data, root, device, cfg, mode: str) -> xr.Dataset:
    """Per-epoch rows of :func:`~anvm_stats.training.train_hasgd` as a Dataset (dim ``epoch``) with provenance
    and the training configuration (``cfg``: a HASGDConfig) in attrs."""
    names = ("train_loss", "train_accuracy", "eval_accuracy", "eval_accuracy_q", "lr", "sigma_train",
             "epoch_time_s", "steps")
    data_vars = {k: (dims.EPOCH, np.asarray([r[k] for r in rows], dtype=np.int64 if k == "steps" else np.float64))
                 for k in names}
    attrs = provenance(model=model, spec=spec or ideal(), dataset=describe(data),
                       seed_entropy=seed_entropy(root), device=device)
    if spec is None:
        attrs["hardware_spec"] = "none (plain SGD)"
    attrs.update(algorithm="HA-SGD", mode=mode, samples=cfg.samples, batch_size=cfg.batch_size,
                 optimizer=cfg.optimizer if isinstance(cfg.optimizer, str) else repr(cfg.optimizer),
                 momentum=cfg.momentum, weight_decay=cfg.weight_decay, epochs_planned=cfg.epochs,
                 adc_levels=-1 if cfg.adc_levels is None else cfg.adc_levels, adc_percentile=cfg.adc_percentile,
                 perturb_batchnorm=int(cfg.perturb_batchnorm))
    ds = xr.Dataset(data_vars, coords={dims.EPOCH: np.arange(len(rows))}, attrs=attrs)
    ds["train_loss"].attrs.update(long_name="mean training loss at the perturbed weights")
    return ds
