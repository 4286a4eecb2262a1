"""The ``anvm-stats`` command.

::

    anvm-stats run STUDY.toml [--out DIR] [--seed N] [--device cpu|cuda] [--quiet] [--instances N]
                              [--epochs N] [--set KEY=VALUE ...] [--cache DIR | --no-cache]
    anvm-stats report RESULTS.nc [--out DIR]
    anvm-stats show RESULTS.nc
    anvm-stats bench [--device cpu|cuda]          # from a source checkout (the top-level benchmarks package)
    anvm-stats presets                            # the device presets and their sources
    anvm-stats quickstart [--out DIR] [...]      # the study shipped in the package, into reports/quickstart/

Exit codes: 0 ok; 2 bad input (an invalid study file or option, missing data files: one line on stderr);
1 failure (one line; ``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
import traceback
from pathlib import Path

from . import dims
from .devices.presets import PRESETS
from .errors import ConfigError
from .report import write_report
from .report.summary import format_text, paired_tables, point_table, seed_note, seed_table, settings
from .study import builtin_study
from .study.config import StudyError
from .study.preflight import check_folders
from .study.runner import load_results, run_study
from .study.schema import apply_overrides, parse_study
from .study.source import read_study


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors are bad input too: exit 2
        self.print_usage(sys.stderr)
        self.exit(2, f"anvm-stats: error: {message}\n")


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError("--set", item, "KEY=VALUE with a dotted study key, e.g. training.epochs=2")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value
        except RecursionError:
            raise ConfigError("--set", item, "KEY=VALUE with a value nested a few levels deep") from None
    return out


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="report folder (default reports/<study name>)")
    p.add_argument("--seed", type=int, help="override [study] seed")
    p.add_argument("--device", choices=("cpu", "cuda"), help="torch device (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    p.add_argument("--instances", type=int, help="fixed number of chips per point (overrides [sweep])")
    p.add_argument("--epochs", type=int, help="override training epochs (all models)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any study key, e.g. --set sweep.grid.noise_level=[0.05,0.1]")
    p.add_argument("--cache", default=".anvm_cache", help="folder of cached trained weights (default .anvm_cache)")
    p.add_argument("--no-cache", action="store_true", help="always train, never read or write the cache")
    p.add_argument("--scheduler", help="Dask scheduler address (tcp://host:port): run the sweeps on that cluster")
    p.add_argument("--workers", type=int, help="run the sweeps on a local Dask cluster of N workers (loopback)")
    p.add_argument("--store", help="folder of resumable zarr stores: results stream in as tasks finish and a re-run "
                                   "of a killed study computes only what is missing (implies Dask)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="anvm-stats", description="Evaluate deep networks on many simulated analog CIM chips.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="train if needed, sweep, write results and report")
    r.add_argument("study", help="study TOML file")
    _run_args(r)
    q = sub.add_parser("quickstart", help="run the shipped quickstart study into reports/quickstart/")
    _run_args(q)
    rp = sub.add_parser("report", help="(re)write the report of a results file")
    rp.add_argument("results")
    rp.add_argument("--out", help="report folder (default: beside the results file)")
    rp.add_argument("--quiet", action="store_true")
    s = sub.add_parser("show", help="print a summary table of a results file")
    s.add_argument("results")
    b = sub.add_parser("bench", help="run the benchmarks of a source checkout and print their JSON")
    b.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    sub.add_parser("presets", help="list the device presets (for [hardware] preset = ...) with their sources")
    return p


def _overrides(args) -> dict:
    ov = _parse_set(args.set)
    if args.seed is not None:
        ov["study.seed"] = args.seed
    if args.instances is not None:
        ov["sweep.n_instances"] = args.instances
    return ov


def _apply_cli(data: dict, args) -> dict:
    """Overrides that must rewrite several keys: --instances drops a target width, --epochs every variant."""
    if args.instances is not None and isinstance(data.get("sweep"), dict):
        data["sweep"].pop("target_ci_width", None)
    if args.epochs is not None and isinstance(data.get("training"), dict):
        data["training"]["epochs"] = args.epochs
        for v in (data["training"].get("variants") or {}).values():
            if isinstance(v, dict) and "epochs" in v:
                v["epochs"] = args.epochs
    return data


def _load(path: Path, args):
    text, data = read_study(path)
    data = _apply_cli(apply_overrides(data, _overrides(args)), args)
    return parse_study(data, text=text, source=str(path))


def cmd_run(args, study_path: Path, default_out: Path | None = None) -> int:
    study = _load(study_path, args)
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr))
    out = Path(args.out) if args.out else (default_out or Path("reports") / study.name)
    t0 = time.perf_counter()
    if args.workers is not None and args.workers < 1:
        raise StudyError("--workers", args.workers, "a positive number of workers")
    check_folders({"--out": out, "--cache": None if args.no_cache else args.cache, "--store": args.store})
    res = run_study(study, out=out, device=args.device, progress=not args.quiet,
                    cache_dir=None if args.no_cache else args.cache, log=log,
                    scheduler=args.scheduler, workers=args.workers, store=args.store)
    if not args.quiet:
        print(f"wrote {res.results_path}, {res.report['markdown']}"
              + (f", {res.report['html']}" if "html" in res.report else "")
              + f" in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_report(args) -> int:

    path = Path(args.results)
    ds = load_results(path)
    out = Path(args.out) if args.out else path.parent
    rep = write_report(ds, out, log=(lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr)))
    if not args.quiet:
        print(f"wrote {rep['markdown']}" + (f", {rep['html']}" if "html" in rep else ""))
    return 0


def cmd_show(args) -> int:

    ds = load_results(Path(args.results))
    thr, ci, _ = settings(ds)
    name = ds.attrs.get("study", Path(args.results).stem)
    print(f"{name}: {ds.attrs.get('model', '')} on {ds.attrs.get('dataset', '')}, "
          f"{ds.sizes.get('instance', 0)} chips per point")
    if "float_accuracy" in ds:
        fa = ds["float_accuracy"]
        seeds = dims.TRAIN_SEED in fa.dims
        if seeds:                          # mean over training seeds, the per-seed range after it
            lo, hi, fa = fa.min(dims.TRAIN_SEED), fa.max(dims.TRAIN_SEED), fa.mean(dims.TRAIN_SEED)

        def one(sel: dict) -> str:
            text = f"{float(fa.sel(sel)):.4f}"
            return text + (f" ({float(lo.sel(sel)):.4f}..{float(hi.sel(sel)):.4f})" if seeds else "")
        print("float accuracy" + (f", mean over {ds.sizes[dims.TRAIN_SEED]} training seeds (min..max)" if seeds
                                  else "") + ": " + (one({}) if fa.ndim == 0 else
                                                      ", ".join(f"{m}={one({'model': m})}" for m in fa["model"].values)))
    print()
    print(f"accuracy over chips{seed_note(ds)}:")
    print(format_text(point_table(ds)))
    if dims.TRAIN_SEED in ds.dims:
        print(f"\naccuracy across training seeds (two-level {int(ci * 100)}% CI):")
        print(format_text(seed_table(ds, ci=ci)))
    for key, table in paired_tables(ds).items():
        print(f"\npaired differences ({key}, {int(ci * 100)}% CI):")
        print(format_text(table))
    return 0


def _benchmarks():
    """The top-level ``benchmarks`` package of the checkout this ``anvm_stats`` was imported from, or None."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "__init__.py").is_file():
        return None
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import importlib

    return importlib.import_module("benchmarks")


def cmd_bench(args) -> int:
    bench = _benchmarks()
    if bench is None:
        print("anvm-stats: error: the benchmarks are not part of the installed package: run `anvm-stats bench` "
              "from a source checkout of anvm_stats (an editable install, or PYTHONPATH set to the checkout)",
              file=sys.stderr)
        return 1
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("anvm-stats: error: --device cuda: no CUDA device is available to torch here (allowed: cpu, or cuda "
              "on a machine with a GPU and a CUDA build of torch)", file=sys.stderr)
        return 2
    print(json.dumps(bench.run_benchmarks(device=args.device), indent=2, default=str))
    return 0


def cmd_presets(args) -> int:
    width = max(len(name) for name in PRESETS)
    for name, p in PRESETS.items():
        print(f"{name:<{width}}  {p.source}")
    return 0


def quickstart_path() -> Path:
    """The quickstart study shipped in the package."""
    return Path(str(builtin_study("quickstart")))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``anvm-stats``; returns the exit code (0 ok, 2 bad input, 1 failure)."""
    parser = build_parser()
    args = parser.parse_args(argv)

    try:
        if args.command == "run":
            return cmd_run(args, Path(args.study))
        if args.command == "quickstart":
            return cmd_run(args, quickstart_path(), default_out=Path("reports") / "quickstart")
        if args.command == "report":
            return cmd_report(args)
        if args.command == "show":
            return cmd_show(args)
        if args.command == "presets":
            return cmd_presets(args)
        return cmd_bench(args)
    except (StudyError, ConfigError, FileNotFoundError) as err:
        if args.debug:
            traceback.print_exc()
        msg = str(err) if isinstance(err, ConfigError) else f"{err}"
        print(f"anvm-stats: error: {msg}".splitlines()[0], file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("anvm-stats: interrupted", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - the command's contract: one line and exit 1
        if args.debug:
            traceback.print_exc()
        print(f"anvm-stats: failed: {type(err).__name__}: {err}".splitlines()[0]
              + ("" if args.debug else " (--debug for the traceback)"), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
