"""Peer check against IBM aihwkit: the same trained network under the same noise law, simulated by anvm_stats and
by aihwkit, compared as distributions over chips of the number of correctly classified test images.

Usage::

    python studies/peer_check_aihwkit.py [--sigmas 0.02 0.05 0.1] [--chips 200] [--epochs 30] [--seed 0]
                                         [--pcm-times 1 3600 86400 3.15e7] [--no-pcm-read-noise]
                                         [--out reports/peer] [--stem peer_check]

Prints one JSON object; with ``--out DIR`` also writes ``DIR/STEM.json`` and ``DIR/STEM.md`` (written
to a temporary sibling and renamed: nothing half-written). Exits 0 with ``"status": "skipped: aihwkit not
installed"`` when ``import aihwkit`` fails (the anvm_stats side still runs and is reported); exits 1 if aihwkit is
present but its run fails.

What is compared: per chip the integer count of correct test images on both sides (``correct_count``), never
accuracies computed in two precisions (a float32 mean on one side and a float64 ``count / n`` on the other are
never tied, which made a two-sample Kolmogorov-Smirnov test report p = 3e-55 for identical distributions). Three
two-sample tests (scipy.stats), each with its p-value: Kolmogorov-Smirnov (whole distribution; with tied integer
values its p-value is conservative), Welch's t (means, unequal variances) and Levene (spreads, median-centred,
i.e. Brown-Forsythe). The noise law of each side is stated in the output (``NOISE_LAWS``).

Two comparisons:

* ``gaussian``: plain Gaussian weight noise ``W -> W + N(0, (sigma max|W|)^2)`` per layer, bias digital and exact.
* ``pcm``: aihwkit's ``PCMLikeNoiseModel`` (Nandakumar 2019 programming noise, state-dependent drift, 1/f read
  noise) with ``GlobalDriftCompensation``, read at aihwkit ``t_inference = tau`` for each ``tau`` of
  ``--pcm-times``, against anvm_stats' ``pcm_nandakumar2019`` preset (bias digital) under
  ``drift_sweep(compensation="global")`` at ``t = tau + 20 s`` (aihwkit counts time from its ``t0 = 20 s``, we
  count from programming; see anvm_stats.devices.pcm). Known differences of the two PCM laws are listed in
  ``anvm_stats.devices.presets.PCM_NANDAKUMAR_VS_AIHWKIT``.

Rerun (aihwkit is not a dependency of anvm_stats; it builds from its sdist, see /work/shared/REFERENCES.md):
``PYTHONPATH=. <venv with aihwkit>/bin/python studies/peer_check_aihwkit.py --out reports/peer``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import scipy.stats
import torch

try:
    import anvm_stats  # noqa: F401
except ImportError:      # run from a checkout without installing: use the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anvm_stats import devices
from anvm_stats.calibration import drift_sweep
from anvm_stats.data import digits
from anvm_stats.hardware import HardwareSpec, OffsetMapping, ProgrammingNoise
from anvm_stats.io import write_text
from anvm_stats.models import MLP
from anvm_stats.montecarlo import RunOptions, evaluate

#: the noise law each side simulates, per comparison (printed with the results)
NOISE_LAWS = {
    "gaussian": {
        "anvm_stats": "OffsetMapping(symmetric, per layer) + ProgrammingNoise(sigma, relative_to='half_range', "
                      "clip=False), bias='digital': W + sigma max|W| Z per weight, Z ~ N(0, 1), one draw per chip",
        "aihwkit": "BaseNoiseModel subclass whose programming noise is W + sigma max|W| torch.randn_like(W) per "
                   "tile; forward.is_perfect = True, mapping.digital_bias = True, one tile per layer, no drift, "
                   "no drift compensation; program_analog_weights() draws one chip",
    },
    "pcm": {
        "anvm_stats": "devices.pcm_nandakumar2019 with bias='digital' (DifferentialMapping per layer, "
                      "PCMProgrammingNoise, PCMDrift(model='nandakumar', t0=20 s), PCMReadNoise (none with "
                      "--no-pcm-read-noise), g_min=0), "
                      "drift_sweep(compensation='global') at t = tau + 20 s, the test set in one batch "
                      "(one read-noise draw per chip and time)",
        "aihwkit": "PCMLikeNoiseModel(g_max=25 uS) (SinglePairConductanceConverter, t_0=20 s; read_noise_scale=0 "
                   "with --no-pcm-read-noise), "
                   "GlobalDriftCompensation, forward.is_perfect = True, mapping.digital_bias = True, one tile per "
                   "layer; program_analog_weights() then drift_analog_weights(tau) per chip",
    },
}


def compare_counts(ours, theirs) -> dict:
    """Two-sample tests on per-chip correct counts (integers on both sides).

    Parameters
    ----------
    ours, theirs : array-like of int, shape (n,), (m,)
        Correct counts per chip.

    Returns
    -------
    dict
        Means and sds of the counts, the Welch 95 % interval of the mean difference (ours - theirs), and statistic
        and p-value of the Kolmogorov-Smirnov, Welch t and Levene (median-centred) tests.

    Raises
    ------
    TypeError
        If either side is not an integer array (accuracies in two float precisions are never tied).
    """
    a, b = np.asarray(ours), np.asarray(theirs)
    for name, x in (("ours", a), ("theirs", b)):
        if not np.issubdtype(x.dtype, np.integer):
            raise TypeError(f"compare_counts: {name} has dtype {x.dtype}; expected integer correct counts")
        if x.ndim != 1 or x.size < 2:
            raise ValueError(f"compare_counts: {name} has shape {x.shape}; expected (n,) with n >= 2")
    ks = scipy.stats.ks_2samp(a, b)
    welch = scipy.stats.ttest_ind(a, b, equal_var=False)
    lo, hi = welch.confidence_interval(0.95)
    lev = scipy.stats.levene(a, b, center="median")
    return {"n": [int(a.size), int(b.size)], "mean": [float(a.mean()), float(b.mean())],
            "sd": [float(a.std(ddof=1)), float(b.std(ddof=1))],
            "mean_difference": float(a.mean() - b.mean()), "mean_difference_ci95": [float(lo), float(hi)],
            "ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
            "welch_t": float(welch.statistic), "welch_pvalue": float(welch.pvalue),
            "levene_w": float(lev.statistic), "levene_pvalue": float(lev.pvalue)}


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


def pcm_spec(read_noise: bool = True) -> HardwareSpec:
    """The package's aihwkit-law PCM preset with a digital bias (aihwkit: ``mapping.digital_bias = True``)."""
    return replace(devices.pcm_nandakumar2019(read_noise=read_noise), bias="digital")


def correct_count(net: torch.nn.Module, data) -> int:
    with torch.no_grad():
        return int((net(data.x).argmax(1) == data.y).sum())


def ours_gaussian(net, data, sigma: float, chips: int, seed: int) -> np.ndarray:
    ds = evaluate(net, gaussian_spec(sigma), data, n_instances=chips, seed=seed, progress=False)
    return ds.correct_count.values.astype(np.int64)


def ours_pcm(net, data, taus, chips: int, seed: int, read_noise: bool = True) -> np.ndarray:
    """Correct counts ``[T, chips]`` at ``t = tau + 20 s`` with measured global drift compensation."""
    t0 = 20.0
    n = int(data.y.numel())
    ds = drift_sweep(net, pcm_spec(read_noise), data, times=[t0 + float(t) for t in taus], n_instances=chips, seed=seed,
                     compensation="global", options=RunOptions(samples_per_batch=n), progress=False)
    return ds.correct_count.transpose("t_inference", "instance").values.astype(np.int64)


def _analog(net, noise_model, drift_compensation):
    from aihwkit.nn.conversion import convert_to_analog
    from aihwkit.simulator.configs import InferenceRPUConfig

    rpu = InferenceRPUConfig()
    rpu.forward.is_perfect = True
    rpu.mapping.digital_bias = True
    rpu.mapping.max_input_size = 0
    rpu.mapping.max_output_size = 0
    rpu.drift_compensation = drift_compensation
    rpu.noise_model = noise_model
    return convert_to_analog(net, rpu).eval()


def aihwkit_gaussian(net, data, sigma: float, chips: int, seed: int) -> np.ndarray:
    """Correct counts of ``chips`` aihwkit chips under the plain Gaussian law (aihwkit's RNG, seeded once)."""
    from aihwkit.inference.noise.base import BaseNoiseModel

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

    model = _analog(net, PlainGaussian(sigma), None)
    out = []
    with torch.random.fork_rng(devices=[]):   # aihwkit draws from torch's global RNG: seed it inside a fork only
        torch.manual_seed(seed)
        for _ in range(chips):
            model.program_analog_weights()
            out.append(correct_count(model, data))
    return np.asarray(out, dtype=np.int64)


def aihwkit_pcm(net, data, taus, chips: int, seed: int, read_noise: bool = True) -> np.ndarray:
    """Correct counts ``[T, chips]`` of aihwkit PCM chips, each programmed once and read at every ``tau``."""
    from aihwkit.inference import GlobalDriftCompensation, PCMLikeNoiseModel

    noise = PCMLikeNoiseModel(g_max=25.0, read_noise_scale=1.0 if read_noise else 0.0)
    model = _analog(net, noise, GlobalDriftCompensation())
    out = np.zeros((len(taus), chips), dtype=np.int64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for c in range(chips):
            model.program_analog_weights()
            for k, tau in enumerate(taus):
                model.drift_analog_weights(float(tau))
                out[k, c] = correct_count(model, data)
    return out


def markdown(report: dict) -> str:
    """The report's tables as markdown."""
    read_noise = "on" if report["pcm_read_noise"] else "off"
    lines = [f"# Peer check: anvm_stats vs aihwkit ({report['status']})", "",
             (f"Command: `{report['command']}`; PCM 1/f read noise: {read_noise} on both sides; wall time "
              f"{report['wall_s']} s."), "",
             (f"Network {report['network']} on {report['data']} ({report['n_test']} images, float correct count "
              f"{report['float_correct_count']}), {report['chips']} chips per side, seed {report['seed']}. "
              "Compared per chip: the integer number of correct test images. Tests: two-sample Kolmogorov-Smirnov "
              "(conservative with ties), Welch t (means), Levene median-centred (spreads); scipy.stats."), ""]
    for key, rows in report["comparisons"].items():
        if not rows:
            continue
        lines += [f"## {key}", "", f"* anvm_stats: {NOISE_LAWS[key]['anvm_stats']}",
                  f"* aihwkit: {NOISE_LAWS[key]['aihwkit']}", "",
                  ("| point | mean ours | mean aihwkit | sd ours | sd aihwkit | diff [95 % CI] | KS p | Welch p | "
                   "Levene p |"), "|---|---|---|---|---|---|---|---|---|"]
        for point, r in rows.items():
            if "ks_pvalue" not in r:
                lines.append(f"| {point} | {r['mean'][0]:.2f} | - | {r['sd'][0]:.2f} | - | - | - | - | - |")
                continue
            lo, hi = r["mean_difference_ci95"]
            lines.append(f"| {point} | {r['mean'][0]:.2f} | {r['mean'][1]:.2f} | {r['sd'][0]:.2f} | {r['sd'][1]:.2f}"
                         f" | {r['mean_difference']:+.2f} [{lo:+.2f}, {hi:+.2f}] | {r['ks_pvalue']:.3g} | "
                         f"{r['welch_pvalue']:.3g} | {r['levene_pvalue']:.3g} |")
        lines.append("")
    lines += [("Rerun: `PYTHONPATH=. <python with aihwkit 1.2.0>/bin/python studies/peer_check_aihwkit.py "
               "--out reports/peer` (see reports/peer/README.md)."), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sigmas", type=float, nargs="*", default=[0.02, 0.05, 0.1])
    ap.add_argument("--pcm-times", type=float, nargs="*", default=[1.0, 3600.0, 86400.0, 3.15e7])
    ap.add_argument("--chips", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-pcm-read-noise", dest="pcm_read_noise", action="store_false",
                    help="PCM comparison without 1/f read noise on both sides (aihwkit read_noise_scale=0)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--stem", default="peer_check", help="file names under --out: STEM.json, STEM.md")
    args = ap.parse_args(argv)
    start = time.time()
    net = train(args.epochs, args.seed)
    test = digits("test")
    report = {"network": "mlp-64-256-256-10", "data": "digits-test", "n_test": int(test.y.numel()),
              "chips": args.chips, "seed": args.seed, "float_correct_count": correct_count(net, test),
              "command": " ".join(["studies/peer_check_aihwkit.py", *(sys.argv[1:] if argv is None else argv)]),
              "pcm_read_noise": args.pcm_read_noise,
              "noise_laws": NOISE_LAWS, "comparisons": {"gaussian": {}, "pcm": {}}}
    ours = {("gaussian", f"sigma={s:g}"): ours_gaussian(net, test, s, args.chips, args.seed) for s in args.sigmas}
    if args.pcm_times:
        pcm = ours_pcm(net, test, args.pcm_times, args.chips, args.seed, args.pcm_read_noise)
        ours.update({("pcm", f"tau={t:g}s"): pcm[k] for k, t in enumerate(args.pcm_times)})
    for (key, point), c in ours.items():
        report["comparisons"][key][point] = {"n": [int(c.size)], "mean": [float(c.mean())],
                                             "sd": [float(c.std(ddof=1))]}
    code = 0
    try:
        import aihwkit
        report["aihwkit_version"] = aihwkit.__version__
    except ImportError:
        report["status"] = "skipped: aihwkit not installed"
    else:
        try:
            for s in args.sigmas:
                theirs = aihwkit_gaussian(net, test, s, args.chips, args.seed)
                point = f"sigma={s:g}"
                report["comparisons"]["gaussian"][point] = compare_counts(ours[("gaussian", point)], theirs)
            if args.pcm_times:
                theirs = aihwkit_pcm(net, test, args.pcm_times, args.chips, args.seed, args.pcm_read_noise)
                for k, t in enumerate(args.pcm_times):
                    point = f"tau={t:g}s"
                    report["comparisons"]["pcm"][point] = compare_counts(ours[("pcm", point)], theirs[k])
            report["status"] = "compared"
        except Exception as err:  # noqa: BLE001 - report, do not hide, an aihwkit API mismatch
            report["status"] = f"error: aihwkit run failed: {err!r}"
            code = 1
    report["wall_s"] = round(time.time() - start, 2)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_text(args.out / f"{args.stem}.json", text + "\n")
        write_text(args.out / f"{args.stem}.md", markdown(report))
    return code


if __name__ == "__main__":
    sys.exit(main())
