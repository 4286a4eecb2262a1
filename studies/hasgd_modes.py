"""HA-SGD modes and optimizers, compared fairly: does training with device noise help, and which estimator?

Usage::

    OMP_NUM_THREADS=1 python studies/hasgd_modes.py [--seeds 5] [--epochs 30] [--chips 128] [--lenet-seeds 3]
                                                   [--lenet-epochs 15] [--wide-seeds 3] [--wide-epochs 20]
                                                   [--out reports/hasgd_modes]

Writes ``OUT/results.nc`` (every chip's accuracy), ``OUT/hasgd_modes.json`` and ``OUT/report.md`` (atomically).
A TOML study cannot express this comparison (modes x optimizers x equal-time epoch counts measured during the run),
hence a script, as ``studies/peer_check_aihwkit.py``.

What is measured (one thread, ``torch.set_num_threads(1)``):

* **Digits MLP** 64-128-128-10 (paper 1 Fig. 7's network), training noise ``q = paper1(sigma=0.1)``, L = 8 draws
  per step, batch 64, tested on paper-1 chips at sigma 0.1, 0.15 and 0.2. Configurations: plain training and
  HA-SGD in each mode (``direct`` = Algorithm 1, ``split``, ``local``), each with SGD (lr 0.05, momentum 0.9) and
  Adam (lr 1e-3); weight decay 5e-4 everywhere (the trainer's default). ``--seeds`` training seeds; seed ``s``
  initialises, orders and perturbs every configuration from ``s`` and tests all of them on the same 128 chips
  drawn from ``s`` (paired within a seed). Differences to the plain net of the same optimizer are reported with
  the two-level interval across seeds (``anvm_stats.stats.seed_difference``: seed-to-seed variation and the
  within-seed chip error).
* **Equal epochs** (``--epochs`` for all) and **equal wall time**: each configuration is retrained with
  ``round(epochs x T / t)`` epochs, ``t`` its own median training time at equal epochs and ``T`` that of the
  default (split, SGD), so every net gets the default's training time (plain nets get more epochs, ``direct``
  fewer).
* **Gradient variance** of each estimator at one trained plain net and one mini-batch of 64: the mean squared
  distance of 200 independent HA-SGD gradients (steps 0..199, fresh device draws each) from their mean.
* **LeNet-5** (BatchNorm) on 8x8 digit images, SGD, ``--lenet-seeds`` seeds, ``--lenet-epochs`` epochs, the
  same modes: the folded-BatchNorm training noise (default ``perturb_batchnorm=True``) at work.
* **Wide MLP** 64-512-512-10 under Adam (``--wide-seeds``, ``--wide-epochs``): plain vs split vs local.
* **ResNet-20 cost only**: seconds per optimiser step (batch 64 of CIFAR-shaped random tensors, 3x32x32) of plain
  training and of each mode; no accuracy.

Wall times are this machine's under whatever else ran on it (the report gives the medians over seeds); accuracies
do not depend on them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

try:
    import anvm_stats  # noqa: F401
except ImportError:      # run from a checkout without installing: use the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anvm_stats import devices, dims, stats
from anvm_stats.data import digits
from anvm_stats.io import save, write_text
from anvm_stats.models import build_model
from anvm_stats.montecarlo import sweep
from anvm_stats.training import gradient_estimator, perturb_targets, train_hasgd

MODES = ("plain", "direct", "split", "local")
OPTIMIZERS = {"sgd": {"lr": 0.05, "momentum": 0.9}, "adam": {"lr": 1e-3}}
SIGMA_TRAIN, SAMPLES, BATCH = 0.1, 8, 64
TEST_SIGMAS = (0.1, 0.15, 0.2)
MLP = {"in_features": 64, "hidden": [128, 128], "n_classes": 10}
WIDE = {"in_features": 64, "hidden": [512, 512], "n_classes": 10}
LENET = {"in_channels": 1, "n_classes": 10, "input_size": 8}
DEFAULT = ("split", "sgd")


def train(arch: str, args: dict, data, mode: str, opt: str, epochs: int, seed: int):
    """One trained net and its training wall time (s): plain (``q=None``) or HA-SGD in ``mode``."""
    q = None if mode == "plain" else devices.paper1(SIGMA_TRAIN)
    r = train_hasgd(build_model(arch, seed=seed, **args), q, data, samples=SAMPLES, epochs=epochs,
                    batch_size=BATCH, optimizer=opt, mode="split" if mode == "plain" else mode, seed=seed,
                    progress=False, **OPTIMIZERS[opt])
    return r.model.eval(), float(r.history["epoch_time_s"].sum())


def chips(net, test, seed: int, n: int) -> np.ndarray:
    """Accuracy ``[sigma, chip]`` on ``n`` paper-1 chips drawn from ``seed`` at each test sigma."""
    ds = sweep(net, devices.paper1(SIGMA_TRAIN), test, grid={"noise_level": list(TEST_SIGMAS)}, n_instances=n,
               seed=seed, progress=False)
    return ds[dims.ACCURACY].transpose(dims.NOISE_LEVEL, dims.INSTANCE).values


def run_block(name: str, arch: str, args: dict, data, test, configs, seeds, epochs, n_chips, log,
              epochs_of=None) -> tuple[xr.DataArray, dict]:
    """Train every ``(mode, opt)`` of ``configs`` for every seed; accuracy dims (config, train_seed, noise_level,
    instance) and the training seconds per config and seed. ``epochs_of[(mode, opt)]`` overrides ``epochs``."""
    labels = [f"{m}/{o}" for m, o in configs]
    acc = np.zeros((len(configs), len(seeds), len(TEST_SIGMAS), n_chips))
    secs = {lbl: [] for lbl in labels}
    for j, s in enumerate(seeds):
        for i, (m, o) in enumerate(configs):
            ep = (epochs_of or {}).get((m, o), epochs)
            net, t = train(arch, args, data, m, o, ep, s)
            acc[i, j] = chips(net, test, s, n_chips)
            secs[labels[i]].append(t)
            log(f"[{name}] seed {s} {labels[i]:>12} {ep:3d} epochs {t:7.1f} s  acc@0.15 {acc[i, j, 1].mean():.4f}")
    da = xr.DataArray(acc, dims=("config", dims.TRAIN_SEED, dims.NOISE_LEVEL, dims.INSTANCE), name=dims.ACCURACY,
                      coords={"config": labels, dims.TRAIN_SEED: list(seeds), dims.NOISE_LEVEL: list(TEST_SIGMAS)})
    return da, secs


def differences(da: xr.DataArray) -> list[dict]:
    """Each HA-SGD config minus the plain net of the same optimizer (paired within seeds), two-level interval."""
    rows = []
    for lbl in da["config"].values:
        mode, opt = str(lbl).split("/")
        if mode == "plain" or f"plain/{opt}" not in da["config"].values:
            continue
        d = stats.seed_difference(da.sel(config=lbl, drop=True), da.sel(config=f"plain/{opt}", drop=True))
        for k, s in enumerate(TEST_SIGMAS):
            di = d.isel({dims.NOISE_LEVEL: k})
            lo, hi = (float(v) for v in di["interval"].values)
            rows.append({"config": str(lbl), "vs": f"plain/{opt}", "sigma_test": s,
                         "difference": float(di["estimate"]), "ci95": [lo, hi],
                         "verdict": "gain" if lo > 0 else ("loss" if hi < 0 else "no difference shown"),
                         "per_seed": [float(v) for v in di["per_seed"].values],
                         "between_seed_sd": float(di["between_seed_sd"])})
    return rows


def accuracies(da: xr.DataArray) -> list[dict]:
    rows = []
    for lbl in da["config"].values:
        a = stats.across_seeds(da.sel(config=lbl, drop=True))
        for k, s in enumerate(TEST_SIGMAS):
            ai = a.isel({dims.NOISE_LEVEL: k})
            rows.append({"config": str(lbl), "sigma_test": s, "mean": float(ai["estimate"]),
                         "ci95": [float(v) for v in ai["interval"].values]})
    return rows


def gradient_variance(net, data, n_steps: int = 200) -> dict:
    """Mean squared distance of ``n_steps`` HA-SGD gradients (one per step index: fresh draws) from their mean,
    per mode, at ``net`` and the first 64 training samples; and its ratio to ``direct``'s."""
    x, y = data.x[:BATCH], data.y[:BATCH]
    q = devices.paper1(SIGMA_TRAIN)
    net = net.train()
    targets = perturb_targets(net)
    out = {}
    for mode in ("direct", "split", "local"):
        est = gradient_estimator(mode, SAMPLES)
        grads = []
        for step in range(n_steps):
            net.zero_grad()
            pert = est.draw(net, q, seed=12345, step=step, targets=targets, batch=BATCH)
            est.accumulate(net, x, y, pert, targets)
            grads.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]).double())
        g = torch.stack(grads)
        out[mode] = {"variance": float((g - g.mean(0)).square().sum(1).mean()),
                     "mean_norm": float(g.mean(0).norm())}
    for mode in out:
        out[mode]["ratio_to_direct"] = out[mode]["variance"] / out["direct"]["variance"]
    net.eval()
    return out


def resnet_step_times(n_steps: int = 3) -> dict:
    """Seconds per optimiser step of ResNet-20 on a batch of 64 CIFAR-shaped random tensors (median of
    ``n_steps`` after one warm-up), plain and each mode; one thread."""
    from anvm_stats.data import Data
    g = torch.Generator().manual_seed(0)
    data = Data(x=torch.randn(BATCH * (n_steps + 1), 3, 32, 32, generator=g),
                y=torch.randint(0, 10, (BATCH * (n_steps + 1),), generator=g), name="cifar-shaped-random",
                n_classes=10)
    out = {}
    for mode in MODES:
        q = None if mode == "plain" else devices.paper1(SIGMA_TRAIN)
        r = train_hasgd(build_model("resnet20", seed=0, n_classes=10), q, data, samples=SAMPLES, epochs=1,
                        batch_size=BATCH, mode="split" if mode == "plain" else mode, seed=0, progress=False)
        out[mode] = float(r.history["epoch_time_s"].sum()) / (n_steps + 1)
    for mode in MODES:
        out[f"{mode}_vs_plain"] = out[mode] / out["plain"]
    return out


def _table(headers, rows) -> str:
    return "\n".join(["| " + " | ".join(headers) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
                     + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def _diff_table(rows: list[dict], secs: dict, epochs: dict | None = None) -> str:
    out = []
    for r in rows:
        lo, hi = r["ci95"]
        e = "" if epochs is None else str(epochs[r["config"]])
        out.append([r["config"], r["vs"], r["sigma_test"], f"{100 * r['difference']:+.2f}", f"[{100 * lo:+.2f}, "
                    f"{100 * hi:+.2f}]", r["verdict"], ", ".join(f"{100 * v:+.1f}" for v in r["per_seed"])]
                   + ([e] if epochs is not None else []) + [f"{np.median(secs[r['config']]):.1f}"])
    headers = ["config", "minus", "test sigma", "difference (points)", "95% CI across seeds", "verdict",
               "per-seed differences"] + (["epochs"] if epochs is not None else []) + ["train s (median)"]
    return _table(headers, out)


def _acc_table(rows: list[dict]) -> str:
    return _table(["config", "test sigma", "mean accuracy", "95% CI across seeds"],
                  [[r["config"], r["sigma_test"], f"{r['mean']:.4f}", f"[{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}]"]
                   for r in rows])


def markdown(rep: dict) -> str:
    a = rep["args"]
    lines = ["# HA-SGD modes and optimizers (studies/hasgd_modes.py)", "",
             f"Training noise q = paper1(sigma={SIGMA_TRAIN}), L = {SAMPLES} draws per step, batch {BATCH}; chips: "
             f"paper-1 at test sigma {list(TEST_SIGMAS)}, {a['chips']} per seed (drawn from the training seed, "
             "shared by every configuration of that seed). Differences are HA-SGD minus the plain net of the same "
             "optimizer, in accuracy points, mean over training seeds; the 95% interval is the two-level interval "
             "across seeds (anvm_stats.stats.seed_difference): it covers which networks training produced and "
             "which chips were drawn (not the finite test set of 360 images). 'gain' / 'loss' when it excludes 0. "
             f"One thread; wall {rep['wall_s']:.0f} s.", "",
             "## Findings", "", *[f"* {f}" for f in rep["findings"]], "",
             f"## Digits MLP 64-128-128-10, equal epochs ({a['epochs']}), {a['seeds']} seeds", "",
             _diff_table(rep["mlp"]["differences"], rep["mlp"]["train_s"]), "",
             _acc_table(rep["mlp"]["accuracy"]), "",
             f"## Digits MLP, equal wall time (each config retrained for the default's median time, "
             f"{rep['mlp_time']['budget_s']:.1f} s)", "",
             _diff_table(rep["mlp_time"]["differences"], rep["mlp_time"]["train_s"], rep["mlp_time"]["epochs"]), "",
             f"## Gradient variance per step (MLP, one mini-batch of 64, {a['grad_steps']} steps of fresh draws)", "",
             _table(["mode", "E||g - mean g||^2", "ratio to direct", "||mean g||"],
                    [[m, f"{v['variance']:.4g}", f"{v['ratio_to_direct']:.2f}", f"{v['mean_norm']:.4g}"]
                     for m, v in rep["gradient_variance"].items()]), ""]
    if rep.get("lenet"):
        lines += [f"## LeNet-5 (BatchNorm) on 8x8 digits, SGD, {a['lenet_epochs']} epochs, {a['lenet_seeds']} seeds",
                  "", _diff_table(rep["lenet"]["differences"], rep["lenet"]["train_s"]), "",
                  _acc_table(rep["lenet"]["accuracy"]), ""]
    if rep.get("wide"):
        lines += [f"## Wide MLP 64-512-512-10, Adam, {a['wide_epochs']} epochs, {a['wide_seeds']} seeds", "",
                  _diff_table(rep["wide"]["differences"], rep["wide"]["train_s"]), "",
                  _acc_table(rep["wide"]["accuracy"]), ""]
    if rep.get("resnet20_step_s"):
        r = rep["resnet20_step_s"]
        lines += ["## ResNet-20, cost only (batch 64 of 3x32x32 random tensors, one thread)", "",
                  _table(["mode", "s per step", "x plain"], [[m, f"{r[m]:.3f}", f"{r[f'{m}_vs_plain']:.2f}"]
                                                            for m in MODES]), ""]
    lines += ["## Rerun", "", f"`OMP_NUM_THREADS=1 PYTHONPATH=. python {rep['command']}`", ""]
    return "\n".join(lines)


def findings(rep: dict) -> list[str]:
    """Plain sentences from the numbers: per block and test sigma, which configurations gain across seeds (the
    two-level interval above 0), which lose, which show no difference."""
    out = []
    for key, title in (("mlp", "MLP, equal epochs"), ("mlp_time", "MLP, equal wall time"), ("lenet", "LeNet-5"),
                       ("wide", "wide MLP, Adam")):
        if not rep.get(key):
            continue
        for sigma in (0.15, 0.2):
            rows = [r for r in rep[key]["differences"] if r["sigma_test"] == sigma]
            by = {v: [r["config"] for r in rows if r["verdict"] == v] for v in ("gain", "loss", "no difference shown")}
            out.append(f"{title}, test sigma {sigma:g}: gain across seeds for {by['gain'] or 'none'}; loss for "
                       f"{by['loss'] or 'none'}; no difference shown for {by['no difference shown'] or 'none'}.")
    return out


def render(json_path: Path) -> None:
    """Rewrite ``report.md`` beside ``json_path`` from the JSON a run wrote (findings recomputed)."""
    rep = json.loads(Path(json_path).read_text())
    rep["findings"] = findings(rep)
    rep["args"].setdefault("grad_steps", 200)
    write_text(Path(json_path).with_name("report.md"), markdown(rep))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--chips", type=int, default=128)
    ap.add_argument("--lenet-seeds", type=int, default=3)
    ap.add_argument("--lenet-epochs", type=int, default=15)
    ap.add_argument("--wide-seeds", type=int, default=3)
    ap.add_argument("--wide-epochs", type=int, default=20)
    ap.add_argument("--grad-steps", type=int, default=200, help="gradients per mode for the variance")
    ap.add_argument("--resnet-steps", type=int, default=3, help="timed ResNet-20 steps per mode (0: skip)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--render", type=Path, default=None, help="only rewrite report.md from this run's JSON")
    args = ap.parse_args(argv)
    if args.render is not None:
        render(args.render)
        return 0
    torch.set_num_threads(1)
    start = time.time()
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    train_d, test = digits("train"), digits("test")
    seeds = list(range(args.seeds))
    configs = [(m, o) for o in OPTIMIZERS for m in MODES]
    rep = {"args": vars(args) | {"out": None if args.out is None else str(args.out)},
           "command": " ".join(["studies/hasgd_modes.py", *(sys.argv[1:] if argv is None else argv)])}
    mlp, secs = run_block("mlp", "mlp", MLP, train_d, test, configs, seeds, args.epochs, args.chips, log)
    rep["mlp"] = {"differences": differences(mlp), "accuracy": accuracies(mlp), "train_s": secs}
    budget = float(np.median(secs["/".join(DEFAULT)]))
    eq = {(m, o): max(1, round(args.epochs * budget / float(np.median(secs[f"{m}/{o}"])))) for m, o in configs}
    mlp_t, secs_t = run_block("mlp-time", "mlp", MLP, train_d, test, configs, seeds, args.epochs, args.chips, log,
                              epochs_of=eq)
    rep["mlp_time"] = {"budget_s": budget, "epochs": {f"{m}/{o}": e for (m, o), e in eq.items()},
                       "differences": differences(mlp_t), "accuracy": accuracies(mlp_t), "train_s": secs_t}
    plain_net, _ = train("mlp", MLP, train_d, "plain", "sgd", args.epochs, 0)
    rep["gradient_variance"] = gradient_variance(plain_net, train_d, args.grad_steps)
    parts = {"mlp": mlp, "mlp_equal_time": mlp_t}
    if args.lenet_seeds:
        tri, tei = digits("train", image=True), digits("test", image=True)
        le, secs_l = run_block("lenet", "lenet5", LENET, tri, tei, [(m, "sgd") for m in MODES],
                               list(range(args.lenet_seeds)), args.lenet_epochs, args.chips, log)
        rep["lenet"] = {"differences": differences(le), "accuracy": accuracies(le), "train_s": secs_l}
        parts["lenet"] = le
    if args.wide_seeds:
        wi, secs_w = run_block("wide", "mlp", WIDE, train_d, test, [(m, "adam") for m in ("plain", "split", "local")],
                               list(range(args.wide_seeds)), args.wide_epochs, args.chips, log)
        rep["wide"] = {"differences": differences(wi), "accuracy": accuracies(wi), "train_s": secs_w}
        parts["wide_adam"] = wi
    if args.resnet_steps:
        rep["resnet20_step_s"] = resnet_step_times(args.resnet_steps)
    rep["wall_s"] = time.time() - start
    rep["findings"] = findings(rep)
    text = json.dumps(rep, indent=2)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        ds = xr.Dataset({f"accuracy_{k}": v.rename({"config": f"config_{k}", dims.TRAIN_SEED: f"train_seed_{k}"})
                         for k, v in parts.items()})
        ds.attrs.update(study="hasgd_modes", command=rep["command"])
        save(ds, args.out / "results.nc")
        write_text(args.out / "hasgd_modes.json", text + "\n")
        write_text(args.out / "report.md", markdown(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
