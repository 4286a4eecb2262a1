"""Benchmark: one epoch of HA-SGD in each mode (split, direct, local) against plain SGD, same model, data and loop.

Every run goes through :func:`~anvm_stats.training.train_hasgd` (plain SGD is ``spec=None``), so a ratio measures
what HA-SGD adds.
``split`` and ``direct`` draw ``L x P`` base normals per step (P analog devices) and map them to weights; that
part does not depend on the batch size while the plain step grows with it, so their ratio falls with larger
batches and with layers that reuse each weight many times per sample (convolutions). ``direct`` also runs ``L``
forward/backward passes. ``local`` (Linear layers by the local reparameterisation, convs as in ``split``) draws
``B x O`` normals per Linear layer and adds one GEMM of ``x^2`` with the weight variances per layer.

The modes are timed round-robin (plain, split, direct, local, plain, ...) and each time is the best of
``repeats``, so a change of machine load during the run affects all modes alike. The load average is reported.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Sequence

import torch

from anvm_stats.data import digits
from anvm_stats.devices.presets import paper1
from anvm_stats.errors import ConfigError, check, check_number
from anvm_stats.models import build_model
from anvm_stats.training import draw_local, draw_perturbations, perturb_targets, train_hasgd

#: target of the issue: vectorised HA-SGD with L=8 costs at most this many plain-SGD epochs
TARGET_RATIO = 1.5
MODES = ("plain", "split", "direct", "local")
MODEL_NAMES = ("mlp", "lenet5", "resnet20", "resnet32", "resnet20-cifar", "wrn28-10-cifar")
#: the compute-bound case of the paper's experiments: ResNet-20 on random CIFAR-shaped inputs (3 x 32 x 32); and
#: WideResNet-28-10 (36.5 M weights: a GPU-sized model), as (zoo name, inputs, zoo keywords)
CIFAR_SHAPED = {"resnet20-cifar": ("resnet20", 512, {}),
                "wrn28-10-cifar": ("wrn", 1024, {"depth": 28, "widen": 10})}


def _data(model_name: str, seed: int):
    if model_name in CIFAR_SHAPED:
        g = torch.Generator().manual_seed(seed)
        n = CIFAR_SHAPED[model_name][1]
        return (torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g),
                f"random CIFAR-shaped 3x32x32 (n={n})")
    image = model_name not in ("mlp",)
    d = digits("train", seed=seed, image=image)
    return d.x, d.y, d.name


def _model(model_name: str, seed: int) -> torch.nn.Module:
    if model_name in CIFAR_SHAPED:
        zoo, _, kw = CIFAR_SHAPED[model_name]
        return build_model(zoo, seed=seed, n_classes=10, in_channels=3, **kw)
    kw = {"mlp": dict(in_features=64), "lenet5": dict(in_channels=1, input_size=8),
          "resnet20": dict(in_channels=1), "resnet32": dict(in_channels=1)}
    if model_name not in kw:
        raise ConfigError("model_name", model_name, f"one of {list(kw)}")
    return build_model(model_name, seed=seed, n_classes=10, **kw[model_name])


@contextlib.contextmanager
def _threads(n: int | None):
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _step_time(fn, dev: torch.device, repeats: int = 5) -> float:
    best = float("inf")
    for step in range(repeats):
        t = time.perf_counter()
        fn(step)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        best = min(best, time.perf_counter() - t)
    return best


def _bench_model(model_name: str, modes: Sequence[str], *, samples: int, epochs: int, batch_size: int,
                 sigma: float, seed: int, dev: torch.device, repeats: int) -> dict:
    x, y, name = _data(model_name, seed)
    x, y = x.to(dev), y.to(dev)
    net = _model(model_name, seed).to(dev)
    q = paper1(sigma)
    common = dict(batch_size=batch_size, seed=seed, progress=False, lr=0.01)
    runs = {m: (dict(spec=None) if m == "plain" else dict(spec=q, samples=samples, mode=m)) for m in modes}
    for m, kw in runs.items():                                              # warm-up (one step each)
        train_hasgd(net, data=(x[:batch_size], y[:batch_size]), epochs=1, **common, **kw)
    times = {m: float("inf") for m in modes}
    for _ in range(repeats):
        for m, kw in runs.items():
            res = train_hasgd(net, data=(x, y), epochs=epochs, **common, **kw)
            times[m] = min(times[m], float(res.history["epoch_time_s"].sum()) / epochs)
    targets = perturb_targets(net)
    draw = {"split": _step_time(lambda s: draw_perturbations(net, q, samples=samples, seed=seed, step=s,
                                                             targets=targets), dev)}
    if "local" in modes:
        draw["local"] = _step_time(lambda s: draw_local(net, q, samples=samples, seed=seed, step=s,
                                                        targets=targets), dev)
    plain = times.get("plain")
    ratios = {m: t / plain for m, t in times.items() if m != "plain"} if plain else {}
    return {
        "n_parameters": sum(p.numel() for p in net.parameters()), "data": name, "n_train": int(x.shape[0]),
        "steps_per_epoch": -(-x.shape[0] // batch_size), "epoch_s": times, "ratio": ratios,
        "meets_target": {m: bool(r <= TARGET_RATIO) for m, r in ratios.items()},
        "draw_step_s": draw,
    }


def bench_hasgd(model_name: str | Sequence[str] = ("mlp", "resnet20-cifar"), samples: int = 8, epochs: int = 1, *,
                batch_size: int = 128, sigma: float = 0.1, seed: int = 0, device: str = "cpu", repeats: int = 3,
                modes: Sequence[str] = MODES, threads: int | None = None) -> dict:
    """Time ``epochs`` epoch(s) of plain SGD and of HA-SGD (``samples`` draws of ``paper1(sigma)``) per mode.

    Parameters
    ----------
    model_name : str or sequence of str, each in :data:`MODEL_NAMES`
        Zoo model(s) sized for the 8x8 digits (``anvm_stats.data.digits``), or ``"resnet20-cifar"``: ResNet-20 on
        512 random CIFAR-shaped inputs, the compute-bound regime of the paper's CIFAR experiments
        (``"wrn28-10-cifar"``: WideResNet-28-10 on 1,024, for GPUs). The digits MLP is the overhead-bound
        extreme (a plain step is a few small ops, so the fixed per-step work of HA-SGD - moments or ``L x P``
        draws, per-sample noise - weighs several plain steps); with ResNet-20 on 32x32 inputs the same work is a
        small fraction of a step (measurements: ``reports/bench/``).
    modes : sequence of {"plain", "split", "direct", "local"}
        Ratios need ``"plain"``.
    repeats : int
        Each time is the best of this many runs (round-robin over the modes).
    threads : int, optional
        ``torch.set_num_threads`` for the benchmark (restored afterwards); default: as set.

    Returns
    -------
    dict
        JSON-able: settings, ``load_average`` (1, 5, 15 min, at the end), ``target_ratio`` and per model
        (``models[name]``): ``epoch_s[mode]``, ``ratio[mode]`` (epoch time over plain SGD's), ``meets_target``,
        ``draw_step_s`` (drawing the perturbations of one step alone: ``split`` for ``L x P`` draws, ``local``
        for the moments plus conv draws), ``steps_per_epoch``, ``n_parameters``, data.
    """
    names = [model_name] if isinstance(model_name, str) else list(model_name)
    for n in names:
        check(n in MODEL_NAMES, "model_name", n, f"one of {MODEL_NAMES}")
    for m in modes:
        check(m in MODES, "modes", m, f"a subset of {MODES}")
    check_number("repeats", repeats, low=1, integer=True)
    dev = torch.device(device)
    with _threads(threads):
        n_threads = torch.get_num_threads()
        models = {n: _bench_model(n, list(dict.fromkeys(modes)), samples=samples, epochs=epochs,
                                  batch_size=batch_size, sigma=sigma, seed=seed, dev=dev, repeats=repeats)
                  for n in names}
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "benchmark": "hasgd", "batch_size": batch_size, "samples": samples, "sigma": sigma, "epochs": epochs,
        "repeats": repeats, "device": str(dev), "torch_threads": n_threads, "load_average": list(load),
        "target_ratio": TARGET_RATIO, "models": models,
    }
