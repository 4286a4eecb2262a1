"""Study files: one TOML file describes a whole experiment (model, data, training, chip, sweep, outputs).

Everything is validated up front by :func:`load_study` / :func:`parse_study`; an error is a :class:`StudyError`
(a :class:`~anvm_stats.errors.ConfigError`) naming the key, the value, what is allowed and the line.

Tables and keys
---------------
``[study]``
    ``name`` (required; letters, digits, ``_.-``: the report folder), ``description``, ``seed`` (int >= 0,
    default 0: model init, training and chip draws all derive from it).
``[model]``
    ``name`` (required; a zoo name of :func:`anvm_stats.models.build_model`: mlp, lenet5, resnet20, resnet32,
    resnet, wrn), ``args`` (table of constructor arguments, e.g. ``{hidden = [256, 256]}``), ``seed`` (init
    seed, default the study seed), ``weights`` (path of a saved ``state_dict``: skips training).
``[data]``
    ``name``: digits (embedded, default), text (the embedded corpus as character windows, for language models),
    cifar10, cifar100, mnist, fashion_mnist; ``root`` (folder of the files; required except for digits and
    text); ``split_seed``, ``test_fraction``, ``image`` (digits); ``split_seed``, ``test_fraction``, ``length``,
    ``one_hot`` (text: :func:`anvm_stats.data.text`); ``normalize`` (cifar); ``label`` (cifar100: fine|coarse);
    ``n_train``, ``n_test`` (seeded subsets, for speed).
``[training]``
    ``method``: plain | hasgd; ``epochs``, ``lr``, ``batch_size``, ``samples`` (L draws per step);
    ``sigma_train`` (a number, or a list: one trained model per value, a ``model`` dim in the results);
    ``q``: "same" (the ``[hardware]`` chip, default) or a hardware table (below); ``options`` (table passed to
    the trainer as keywords); ``variants`` (table of named tables overriding the keys above: one model each);
    ``seeds`` (training seeds: a count ``S`` = seeds ``study.seed .. study.seed + S - 1``, or a list of distinct
    integers >= 0; default 5 when the study trains two or more models, i.e. compares trained networks, else 1).
    With two or more seeds every model is trained once per seed (the seed sets its initial weights, unless
    ``model.seed`` fixes them, its data order and its training noise) and evaluated on chips drawn from that
    seed: the results get a ``train_seed`` dim, models are paired on chips within a seed, and reports give
    differences with a two-level interval across seeds (:mod:`anvm_stats.stats.seeds`). ``seeds = 1`` is the
    single-seed study (training and chips from ``study.seed``). Not with ``sweep.target_ci_width``.
    Omit ``[training]`` only together with ``model.weights``.
``[hardware]``
    Either a :meth:`HardwareSpec.from_dict <anvm_stats.hardware.HardwareSpec.from_dict>` table (``mapping``,
    ``effects`` (array of tables with ``kind``), ``periphery``, ``tile``, ``parasitics``, ``g_min``, ``bias``, ``fold_batchnorm``,
    ``name``), or ``preset`` = a name of ``anvm_stats.devices.PRESETS`` with ``args`` (the preset's keywords);
    spec keys next to a preset override the preset's. ``variants``: table of named tables overriding the base
    (``args`` merged key by key, other keys replaced): one chip each, a ``hardware`` dim in the results.
``[sweep]``
    ``grid``: knob -> list of values; knobs: noise_level, t_inference, adc_bits, dac_bits, stuck_at_rate
    (:meth:`HardwareSpec.with_knobs`), and adc_levels, dac_levels, mean_shift (set by the study runner on the
    spec's converters / programming-noise mean). ``n_instances`` (chips per point, default 256) or
    ``target_ci_width`` (stop once every point's mean-accuracy interval is this narrow) with ``max_instances``
    (default 4096) and ``instances_per_round`` (chips drawn between two looks at the intervals, default 64);
    ``metrics`` (built-in names of :data:`anvm_stats.metrics.BUILTIN` holding ``"accuracy"``, e.g.
    ``["accuracy", "perplexity"]``: one result variable each, reported with its intervals; default a classifier's
    variables);
    the engine's :class:`~anvm_stats.montecarlo.RunOptions` ``instances_per_chunk`` (chips evaluated together:
    speed and memory only, it never changes a result) and ``samples_per_batch`` (evaluation samples per forward,
    default up to 1024: it changes the per-chip ``loss`` at float32 round-off, ~1e-7, as the sum over samples
    is taken in another order; accuracy counts are unaffected in practice but not guaranteed to be, as a
    round-off can flip an argmax tie). ``cost`` (default false): add energy, latency and area per inference at
    every point (:func:`anvm_stats.cost.grid_cost`) and a report section with accuracy-vs-energy fronts. The old names ``batch_instances``, ``chunk_size`` and
    ``eval_batch_size`` are refused with a message naming the new key.
``[recovery]`` (optional)
    Per-chip calibration after programming (``anvm_stats.calibration.calibrate``, used when it exists):
    ``n_calibration`` (samples from the training split, default 64), ``n_instances`` (default: the sweep's),
    ``options`` (table passed on).
``[outputs]``
    ``format``: nc | zarr; ``plots``: subset of distribution, mean_quantiles, yield, sensitivity, training;
    ``yield_threshold`` (accuracy a chip must reach, default 0.9), ``ci`` (default 0.95), ``quantiles``
    (default [0.05, 0.5, 0.95]), ``sensitivity`` (compute per-layer Hessian traces, default false), ``html``
    (default true), ``embed``: base64 | link.
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any

from .. import models
from ..calibration import CalibrationOptions, calibrate
from ..errors import ConfigError
from ..hardware.spec import KNOBS, HardwareSpec
from ..metrics import BUILTIN
from ..training import HASGDConfig, train_hasgd
from .config import (PLOTS, Ctx, DataConfig, ModelConfig, OutputsConfig, RecoveryConfig, Study, StudyError,
                     SweepConfig, TrainingConfig)
from .hardware_table import hardware_tables, resolve_hardware
from .source import read_study
from .values import check_knobs, distinct, grid_values, safe_name

EXTRA_KNOBS = ("adc_levels", "dac_levels", "mean_shift")
ALL_KNOBS = tuple(KNOBS) + EXTRA_KNOBS
DATASETS = ("digits", "text", "cifar10", "cifar100", "mnist", "fashion_mnist")
METHODS = ("plain", "hasgd")
FORMATS = ("nc", "zarr")
_SECTIONS = ("study", "model", "data", "training", "hardware", "sweep", "recovery", "outputs")
_DATA_OPTS = {"digits": ("split_seed", "test_fraction", "image"),
              "text": ("split_seed", "test_fraction", "length", "one_hot"), "cifar10": ("normalize",),
              "cifar100": ("normalize", "label"), "mnist": (), "fashion_mnist": ()}
_TRAIN_KEYS = ("method", "epochs", "lr", "batch_size", "samples", "sigma_train", "q", "options")


def _model(c: Ctx, raw: dict) -> ModelConfig:
    c.table(raw, "model", ("name", "args", "seed", "weights"))
    if "name" not in raw:
        raise c.error("model.name", None, f"a zoo model name, one of {list(models.MODELS)} (required)")
    name = c.string("model.name", raw["name"])
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in models.MODELS:
        raise c.error("model.name", name, f"one of {list(models.MODELS)}")
    args = c.table(raw.get("args", {}), "model.args",
                   tuple(p for p in inspect.signature(models.MODELS[key]).parameters if p not in ("self",
                                                                                                  "generator")))
    mseed = c.number("model.seed", raw["seed"], low=0, integer=True) if "seed" in raw else None
    weights = c.string("model.weights", raw["weights"]) if "weights" in raw else None
    try:
        import torch

        with torch.device("meta"):  # checks the arguments without allocating (WRN-28-10 has 36 M parameters)
            models.build_model(name, seed=0, **args)
    except ConfigError as err:
        raise c.wrap("model.args", err) from None
    except TypeError as err:
        raise c.error("model.args", args, f"valid arguments of {name} ({err})") from None
    return ModelConfig(name=name, args=dict(args), seed=mseed, weights=weights)


def _data(c: Ctx, raw: dict) -> DataConfig:
    c.table(raw, "data", ("name", "root", "n_train", "n_test") + tuple(sorted({k for v in _DATA_OPTS.values()
                                                                              for k in v})))
    name = c.string("data.name", raw.get("name", "digits"), DATASETS)
    opts = {}
    for k in raw:
        if k in ("name", "root", "n_train", "n_test"):
            continue
        if k not in _DATA_OPTS[name]:
            raise c.error(f"data.{k}", raw[k], f"an option of {name}: one of {list(_DATA_OPTS[name])}")
        opts[k] = raw[k]
    if "split_seed" in opts:
        c.number("data.split_seed", opts["split_seed"], low=0, integer=True)
    if "test_fraction" in opts:
        c.number("data.test_fraction", opts["test_fraction"], low=0, high=1, low_open=True, high_open=True)
    for k in ("image", "normalize", "one_hot"):
        if k in opts:
            c.boolean(f"data.{k}", opts[k])
    if "length" in opts:
        c.number("data.length", opts["length"], low=1, integer=True)
    if "label" in opts:
        c.string("data.label", opts["label"], ("fine", "coarse"))
    root = raw.get("root")
    if name not in ("digits", "text") and root is None:
        raise c.error("data.root", None, f"the folder holding the {name} files (required for {name})")
    if root is not None:
        c.string("data.root", root)
    n = {k: c.number(f"data.{k}", raw[k], low=1, integer=True) if k in raw else None for k in ("n_train", "n_test")}
    return DataConfig(name=name, root=root, options=opts, **n)


#: keywords of train_hasgd() the runner sets itself or that a TOML file cannot express
_TRAIN_SET = ("model", "spec", "data", "samples", "epochs", "lr", "batch_size", "seed", "progress", "checkpoint",
              "loss_fn", "eval_data", "stop_after_epoch")


def _trainer_options(opts) -> tuple[str, ...]:
    params = inspect.signature(train_hasgd).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return tuple(opts) if isinstance(opts, dict) else ()
    return tuple(p for p in params if p not in _TRAIN_SET)


def _one_training(c: Ctx, t: dict, path: str, label: str, hw_raw: dict) -> TrainingConfig:
    method = c.string(f"{path}.method", t.get("method", "plain"), METHODS)
    kw: dict[str, Any] = {"label": label, "method": method}
    for k, integer, low in (("epochs", True, 0), ("batch_size", True, 1), ("samples", True, 1)):
        if k in t:
            kw[k] = c.number(f"{path}.{k}", t[k], low=low, integer=integer)
    if "lr" in t:
        kw["lr"] = c.number(f"{path}.lr", t["lr"], low=0, low_open=True)
    kw["options"] = dict(c.table(t.get("options", {}), f"{path}.options", _trainer_options(t.get("options"))))
    try:
        HASGDConfig(**{k: v for k, v in kw["options"].items() if k in HASGDConfig.__dataclass_fields__})
    except ConfigError as err:
        raise c.wrap(f"{path}.options", err) from None
    sigma = t.get("sigma_train")
    if sigma is not None:
        sigma = c.number(f"{path}.sigma_train", sigma, low=0)
    q_raw = t.get("q", "same")
    if method == "plain":
        if sigma not in (None, 0, 0.0) or "q" in t:
            raise c.error(f"{path}.{'sigma_train' if sigma else 'q'}", sigma if sigma else q_raw,
                          "no training noise with method = 'plain' (use method = 'hasgd')")
        return TrainingConfig(**kw)
    if q_raw == "same":
        q = resolve_hardware(c, hw_raw, "hardware")
    elif isinstance(q_raw, dict):
        q = resolve_hardware(c, q_raw, f"{path}.q")
    else:
        raise c.error(f"{path}.q", q_raw, "'same' or a hardware table")
    if sigma is not None:
        try:
            q = q.with_knobs(noise_level=float(sigma))
        except ConfigError as err:
            raise c.error(f"{path}.sigma_train", sigma, f"a training spec with a noise_level knob ({err})") from None
    return TrainingConfig(q=q, sigma_train=None if sigma is None else float(sigma), **kw)


#: training seeds of a study that compares two or more trained models, unless ``[training] seeds`` says otherwise
DEFAULT_COMPARISON_SEEDS = 5


def _seeds(c: Ctx, raw: dict, study_seed: int, n_models: int) -> tuple[int, ...]:
    """The training seeds of ``[training] seeds`` (see the module docstring)."""
    if "seeds" not in raw:
        n = DEFAULT_COMPARISON_SEEDS if n_models >= 2 else 1
        return tuple(range(study_seed, study_seed + n))
    v = raw["seeds"]
    if isinstance(v, list):
        if not v:
            raise c.error("training.seeds", v, "a count >= 1 or a non-empty list of distinct integers >= 0")
        for i, x in enumerate(v):
            c.number(f"training.seeds[{i}]", x, low=0, integer=True)
        distinct(c, "training.seeds", v, integer=True)
        return tuple(int(x) for x in v)
    n = c.number("training.seeds", v, low=1, integer=True)
    c.number("training.seeds", study_seed + n - 1, integer=True)     # the last seed stays an int64
    return tuple(range(study_seed, study_seed + n))


def _training(c: Ctx, raw: dict, hw_raw: dict) -> tuple[TrainingConfig, ...]:
    c.table(raw, "training", _TRAIN_KEYS + ("variants", "seeds"))
    base = {k: v for k, v in raw.items() if k not in ("variants", "seeds")}
    variants = raw.get("variants")
    sig = base.get("sigma_train")
    if isinstance(sig, list):
        if variants is not None:
            raise c.error("training.sigma_train", sig, "a single number when [training.variants] is given")
        if not sig:
            raise c.error("training.sigma_train", sig, "a non-empty list of distinct numbers")
        for i, s in enumerate(sig):
            c.number(f"training.sigma_train[{i}]", s, low=0)
        distinct(c, "training.sigma_train", sig)
        out = []
        for s in sig:
            out.append(_one_training(c, {**base, "sigma_train": s}, "training", f"sigma_train={s:g}", hw_raw))
        return tuple(out)
    if variants is None:
        return (_one_training(c, base, "training", base.get("method", "plain"), hw_raw),)
    c.table(variants, "training.variants", tuple(variants) if isinstance(variants, dict) else ())
    if not variants:
        raise c.error("training.variants", variants, "at least one named variant table")
    out = []
    for label, v in variants.items():
        c.table(v, f"training.variants.{label}", _TRAIN_KEYS)
        out.append(_one_training(c, {**base, **v}, f"training.variants.{label}", str(label), hw_raw))
    return tuple(out)


#: old ``[sweep]`` keys -> the engine's names (refused, naming the new key)
RENAMED_SWEEP_KEYS = {"batch_instances": "instances_per_round", "chunk_size": "instances_per_chunk",
                      "eval_batch_size": "samples_per_batch"}


def _sweep(c: Ctx, raw: dict, hardware: dict[str, HardwareSpec]) -> SweepConfig:
    for old, new in RENAMED_SWEEP_KEYS.items():
        if isinstance(raw, dict) and old in raw:
            raise c.error(f"sweep.{old}", raw[old], f"the key sweep.{new} (sweep.{old} was renamed)")
    c.table(raw, "sweep", ("grid", "n_instances", "target_ci_width", "max_instances", "instances_per_round",
                           "samples_per_batch", "instances_per_chunk", "metrics", "cost"))
    grid_raw = raw.get("grid", {})
    c.table(grid_raw, "sweep.grid", ALL_KNOBS)
    grid = {k: grid_values(c, k, v) for k, v in grid_raw.items()}
    check_knobs(c, grid, hardware)
    kw: dict[str, Any] = {"grid": grid}
    if "n_instances" in raw and "target_ci_width" in raw:
        raise c.error("sweep.target_ci_width", raw["target_ci_width"], "either n_instances or target_ci_width")
    for k, low in (("n_instances", 1), ("max_instances", 2), ("instances_per_round", 2), ("samples_per_batch", 1),
                   ("instances_per_chunk", 1)):
        if k in raw:
            kw[k] = c.number(f"sweep.{k}", raw[k], low=low, integer=True)
    if "target_ci_width" in raw:
        kw["target_ci_width"] = c.number("sweep.target_ci_width", raw["target_ci_width"], low=0, high=1,
                                         low_open=True)
        kw["n_instances"] = None
    if "metrics" in raw:
        kw["metrics"] = _metric_names(c, raw["metrics"])
    if "cost" in raw:
        kw["cost"] = c.boolean("sweep.cost", raw["cost"])
    mx, bt = kw.get("max_instances", 4096), kw.get("instances_per_round", 64)
    if mx < bt:
        raise c.error("sweep.max_instances", mx, f"at least instances_per_round ({bt})")
    return SweepConfig(**kw)


def _metric_names(c: Ctx, raw) -> tuple[str, ...]:
    """``sweep.metrics``: distinct built-in metric names, ``accuracy`` among them."""
    if not isinstance(raw, list) or not raw:
        raise c.error("sweep.metrics", raw, f"a non-empty list of built-in metric names: {sorted(BUILTIN)}")
    names = tuple(c.string(f"sweep.metrics[{i}]", m, tuple(sorted(BUILTIN))) for i, m in enumerate(raw))
    variables = [BUILTIN[n].name for n in names]         # "cross_entropy" and "loss" are one variable
    for i, v in enumerate(variables):
        if v in variables[:i]:
            raise c.error(f"sweep.metrics[{i}]", raw[i], f"distinct metrics ({raw[i]!r} repeats "
                                                         f"{raw[variables.index(v)]!r})")
    if "accuracy" not in names:
        raise c.error("sweep.metrics", raw, "a list holding 'accuracy' (the report's tables, yield and stopping "
                                            "rule read it)")
    return names


#: keywords of calibrate() the runner sets itself
_RECOVERY_SET = ("model", "spec", "data", "recovery_data", "n_instances", "instances", "seed", "n_recovery", "progress",
                 "device")


def _recovery(c: Ctx, raw: dict) -> RecoveryConfig:
    c.table(raw, "recovery", ("n_calibration", "n_instances", "options"))
    kw: dict[str, Any] = {}
    for k in ("n_calibration", "n_instances"):
        if k in raw:
            kw[k] = c.number(f"recovery.{k}", raw[k], low=1, integer=True)
    opts = raw.get("options", {})
    allowed = tuple(p for p in inspect.signature(calibrate).parameters if p not in _RECOVERY_SET)
    kw["options"] = dict(c.table(opts, "recovery.options", allowed))
    fields = {k: v for k, v in kw["options"].items() if k in CalibrationOptions.__dataclass_fields__}
    try:
        CalibrationOptions(**fields)
    except ConfigError as err:
        raise c.wrap("recovery.options", err) from None
    return RecoveryConfig(**kw)


def _outputs(c: Ctx, raw: dict) -> OutputsConfig:
    c.table(raw, "outputs", ("format", "plots", "yield_threshold", "ci", "quantiles", "sensitivity", "html",
                             "embed"))
    kw: dict[str, Any] = {}
    if "format" in raw:
        kw["format"] = c.string("outputs.format", raw["format"], FORMATS)
    if "plots" in raw:
        if not isinstance(raw["plots"], list):
            raise c.error("outputs.plots", raw["plots"], f"a list drawn from {list(PLOTS)}")
        for i, p in enumerate(raw["plots"]):
            c.string(f"outputs.plots[{i}]", p, PLOTS)
        kw["plots"] = tuple(raw["plots"])
    if "yield_threshold" in raw:
        kw["yield_threshold"] = float(c.number("outputs.yield_threshold", raw["yield_threshold"], low=0, high=1))
    if "ci" in raw:
        kw["ci"] = float(c.number("outputs.ci", raw["ci"], low=0, high=1, low_open=True, high_open=True))
    if "quantiles" in raw:
        q = raw["quantiles"]
        if not isinstance(q, list) or not q:
            raise c.error("outputs.quantiles", q, "a non-empty list of levels in (0, 1)")
        kw["quantiles"] = tuple(float(c.number(f"outputs.quantiles[{i}]", v, low=0, high=1, low_open=True,
                                               high_open=True)) for i, v in enumerate(q))
    for k in ("sensitivity", "html"):
        if k in raw:
            kw[k] = c.boolean(f"outputs.{k}", raw[k])
    if "embed" in raw:
        kw["embed"] = c.string("outputs.embed", raw["embed"], ("base64", "link"))
    return OutputsConfig(**kw)


def parse_study(data: dict, *, text: str = "", source: str | None = None) -> Study:
    """Validate a parsed study table (``text`` is the TOML it came from, for line numbers)."""
    c = Ctx(text, source)
    c.table(data, "study file", _SECTIONS)
    st = c.table(data.get("study", {}), "study", ("name", "description", "seed"))
    if "name" not in st:
        raise c.error("study.name", None, "a name for the study (required; letters, digits, _ . -)")
    name = safe_name(c, "study.name", st["name"])
    desc = c.string("study.description", st.get("description", ""))
    seed = c.number("study.seed", st.get("seed", 0), low=0, integer=True)
    if "model" not in data:
        raise c.error("model", None, "a [model] table with a zoo name (required)")
    model = _model(c, data["model"])
    dcfg = _data(c, data.get("data", {}))
    hw_raw, hardware, has_variants = hardware_tables(c, data.get("hardware", {"preset": "ideal"}))
    seeds = (seed,)
    if "training" in data:
        training = _training(c, data["training"], hw_raw)
        seeds = _seeds(c, data["training"], seed, len(training))
    elif model.weights is None:
        raise c.error("training", None, "a [training] table (or model.weights with trained weights)")
    else:
        training = ()
    sweep = _sweep(c, data.get("sweep", {}), hardware)
    if len(seeds) > 1 and sweep.target_ci_width is not None:
        raise c.error("sweep.target_ci_width", sweep.target_ci_width,
                      f"n_instances with {len(seeds)} training seeds (each seed's chips are drawn on their own)")
    recovery = _recovery(c, data["recovery"]) if "recovery" in data else None
    outputs = _outputs(c, data.get("outputs", {}))
    return Study(name=name, description=desc, seed=seed, model=model, data=dcfg, training=training,
                 train_seeds=seeds, hardware=hardware, hardware_variants=has_variants, sweep=sweep, recovery=recovery,
                 outputs=outputs, source=source, text=text)


def apply_overrides(data: dict, overrides: dict[str, Any]) -> dict:
    """Set dotted keys (``{"training.epochs": 1}``) in a copy of a parsed study table."""
    out = copy.deepcopy(data)
    for dotted, value in overrides.items():
        node = out
        parts = dotted.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise StudyError(dotted, value, f"a key inside a table ({p!r} is not a table)")
        node[parts[-1]] = value
    return out


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> Study:
    """Read and validate a study file.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    StudyError
        For invalid TOML or any invalid key (the message names key, value, allowed values and line).
    """
    text, data = read_study(path)
    if overrides:
        data = apply_overrides(data, overrides)
    return parse_study(data, text=text, source=str(path))
