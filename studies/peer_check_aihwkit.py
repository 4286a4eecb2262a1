"""Peer check against IBM aihwkit: the same network under the same plain Gaussian weight noise
``W -> W + N(0, (sigma max|W|)^2)`` (per layer, bias digital and exact), simulated by anvm_stats and by aihwkit,
compared as accuracy distributions over chips (two-sample Kolmogorov-Smirnov test, scipy).

Usage::

    python studies/peer_check_aihwkit.py [--sigmas 0.02 0.05 0.1] [--chips 200] [--epochs 30] [--seed 0]

Prints one JSON object. Exits 0 with ``"status": "skipped: aihwkit not installed"`` when ``import aihwkit``
fails (the anvm_stats side still runs and is reported); exits 1 if aihwkit is present but its run fails.

anvm_stats side: ``OffsetMapping(symmetric, per layer)`` maps ``[-max|W|, max|W|]`` onto the device window, and
``ProgrammingNoise(relative_to="half_range", clip=False)`` adds ``sigma`` half-ranges, i.e. exactly
``sigma max|W|`` in the weight domain, to one device per weight; ``bias="digital"``.
aihwkit side (REFERENCES.md "Running aihwkit beside us"): a ``BaseNoiseModel`` subclass whose programming noise is
that same law, ``forward.is_perfect = True``, ``mapping.digital_bias = True``, no drift compensation, one tile per
layer; ``model.program_analog_weights()`` draws a new chip each call.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.stats
import torch

try:
    import anvm_stats  # noqa: F401
except ImportError:      # run from a checkout without installing: use the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anvm_stats.data import digits
from anvm_stats.hardware import HardwareSpec, OffsetMapping, ProgrammingNoise
from anvm_stats.models import MLP
from anvm_stats.montecarlo import evaluate


def train(epochs: int, seed: int) -> torch.nn.Module:
    """MLP 64-256-256-10 trained with plain SGD on the digits training split (seeded, no global RNG)."""
    from anvm_stats.training import train_hasgd

    net = MLP(64, (256, 256), 10, generator=torch.Generator().manual_seed(seed))
    return train_hasgd(net, None, digits("train"), epochs=epochs, lr=0.05, batch_size=64, seed=seed,
                       progress=False).model.eval()


def gaussian_spec(sigma: float) -> HardwareSpec:
    """Plain Gaussian weight noise ``N(0, (sigma max|W|)^2)`` per layer, digital bias."""
    return HardwareSpec(name=f"gaussian(sigma={sigma})", mapping=OffsetMapping(granularity="layer", symmetric=True),
                        effects=(ProgrammingNoise(sigma=sigma, relative_to="half_range", clip=False),),
                        bias="digital")


def accuracy(net: torch.nn.Module, data) -> float:
    with torch.no_grad():
        return float((net(data.x).argmax(1) == data.y).float().mean())


def aihwkit_accuracies(net: torch.nn.Module, data, sigma: float, chips: int, seed: int) -> np.ndarray:
    """Accuracy of ``chips`` aihwkit chips under the plain Gaussian law (aihwkit's own RNG, seeded once)."""
    from aihwkit.inference.noise.base import BaseNoiseModel
    from aihwkit.nn.conversion import convert_to_analog
    from aihwkit.simulator.configs import InferenceRPUConfig

    class PlainGaussian(BaseNoiseModel):
        """``W + N(0, (sigma max|W|)^2)`` on the tile's weights; no drift, no read noise."""

        def __init__(self, sigma_: float):
            super().__init__()
            self.sigma = sigma_

        def apply_programming_noise(self, weights):
            noisy = weights + self.sigma * weights.abs().max() * torch.randn_like(weights)
            return noisy, [None]

        def apply_drift_noise(self, weights, drift_noise_parameters, t_inference):
            return weights

        def apply_programming_noise_to_conductance(self, g_target):
            return g_target

        def apply_drift_noise_to_conductance(self, g_prog, drift_noise_param, t_inference):
            return g_prog

    rpu = InferenceRPUConfig()
    rpu.forward.is_perfect = True
    rpu.mapping.digital_bias = True
    rpu.mapping.max_input_size = 0
    rpu.mapping.max_output_size = 0
    rpu.drift_compensation = None
    rpu.noise_model = PlainGaussian(sigma)
    model = convert_to_analog(net, rpu).eval()
    out = []
    with torch.random.fork_rng(devices=[]):   # aihwkit draws from torch's global RNG: seed it inside a fork only
        torch.manual_seed(seed)
        for _ in range(chips):
            model.program_analog_weights()
            with torch.no_grad():
                out.append(float((model(data.x).argmax(1) == data.y).float().mean()))
    return np.asarray(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    ap.add_argument("--chips", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.time()
    net = train(args.epochs, args.seed)
    test = digits("test")
    report = {"network": "mlp-64-256-256-10", "data": "digits-test", "n_test": int(test.y.numel()),
              "chips": args.chips, "float_accuracy": accuracy(net, test), "sigmas": {}}
    ours = {}
    for sigma in args.sigmas:
        ds = evaluate(net, gaussian_spec(sigma), test, n_instances=args.chips, seed=args.seed, progress=False)
        ours[sigma] = ds.accuracy.values
        report["sigmas"][str(sigma)] = {"anvm_stats": {"mean": float(ours[sigma].mean()),
                                                       "sd": float(ours[sigma].std(ddof=1))}}
    try:
        import aihwkit  # noqa: F401
    except ImportError:
        report["status"] = "skipped: aihwkit not installed"
        report["wall_s"] = round(time.time() - t0, 2)
        print(json.dumps(report, indent=2))
        return 0
    try:
        for sigma in args.sigmas:
            theirs = aihwkit_accuracies(net, test, sigma, args.chips, args.seed)
            ks = scipy.stats.ks_2samp(ours[sigma], theirs)
            report["sigmas"][str(sigma)].update(
                aihwkit={"mean": float(theirs.mean()), "sd": float(theirs.std(ddof=1))},
                ks_statistic=float(ks.statistic), ks_pvalue=float(ks.pvalue))
        report["status"] = "compared"
        code = 0
    except Exception as err:  # noqa: BLE001 - report, do not hide, an aihwkit API mismatch
        report["status"] = f"error: aihwkit run failed: {err!r}"
        code = 1
    report["wall_s"] = round(time.time() - t0, 2)
    print(json.dumps(report, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
