"""Prepared runs on a lent GPU: the CUDA tests, the sampler's rate and the GPU benchmarks, as JSON.

Usage (from the repository root, on the GPU machine)::

    PYTHONPATH=. python3 scripts/gpu_check.py OUT_DIR [STEP ...]

``STEP`` names entries of :data:`STEPS` (default: :data:`DEFAULT_STEPS`, the session-4 record run); ``claims``
is the strict-reference run of issue 19 (``tests_claims``, ``engine_mlp_65536``, ``engine_mlp_16384``,
``convnet_wrn28_10``, ``bf16_paired``, ``profile_engine_65536``). Each step is guarded: a failure is recorded with
its traceback and the next step still runs. Results go to ``OUT_DIR/cuda.json`` (rewritten after every step),
test logs to ``OUT_DIR/pytest.log`` and kernel profiles to ``OUT_DIR/profile*.txt``. CI never runs this (no GPU).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from benchmarks import engine as bench
from benchmarks.common import best_time, digits_mlp

import anvm_stats as av
from anvm_stats.analog.program import prepare
from anvm_stats.counter_rng import fill_counter
from anvm_stats.rng import Stream

#: the GPU (the CPU for a dry run of the script on a machine without one)
CUDA = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run_pytest(out: Path, args: list[str], timeout: int = 240) -> dict:
    """``pytest -q`` on ``args`` (log to ``OUT_DIR/pytest.log``): return code and the log's tail."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    with open(out / "pytest.log", "a") as log:
        log.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}\n")
    return {"returncode": proc.returncode, "tail": (proc.stdout + proc.stderr)[-1500:]}


def tests(out: Path) -> dict:
    return run_pytest(out, [
        "tests/test_counter_rng.py", "tests/test_counter_rng_triton.py", "tests/test_sampler.py",
        "tests/analog/test_fused.py", "tests/analog/test_kernels.py", "tests/hessian/test_hvp.py",
        "tests/test_montecarlo.py::test_cuda_runs_are_chunk_invariant_and_use_counter_draws",
        "tests/test_montecarlo.py::test_cuda_and_cpu_engines_evaluate_the_same_chips"])


def tests_claims(out: Path) -> dict:
    """The CUDA tests of the engine and sampler, and the bf16 paired test (run on the host's CPU threads)."""
    return run_pytest(out, ["tests/test_counter_rng_triton.py", "tests/analog/test_fused.py",
                            "tests/analog/test_affine_gemm.py", "tests/analog/test_chain.py", "tests/test_montecarlo.py",
                            "-k", "cuda or bf16 or triton or fused or interpreter"], timeout=150)


def sampler(out: Path) -> dict:
    buf = torch.empty(16384, 85_000, device=CUDA)
    g = torch.Generator(device=CUDA).manual_seed(0)
    fill = lambda: fill_counter("normal", buf, (1, 2), range(16384), Stream.PROGRAM)  # noqa: E731
    fill()
    t_counter = best_time(fill, CUDA, 5)
    torch.randn(buf.shape, generator=g, device=CUDA, out=buf)
    t_randn = best_time(lambda: torch.randn(buf.shape, generator=g, device=CUDA, out=buf), CUDA, 5)
    return {"draws": buf.numel(), "counter_normals_per_s": buf.numel() / t_counter,
            "torch_randn_per_s": buf.numel() / t_randn, "counter_vs_randn": t_randn / t_counter}


def profile_engine(out: Path, n_instances: int = 16384) -> dict:
    """A kernel table (torch profiler) of one engine run of the digits MLP on ``n_instances`` chips."""
    from torch.profiler import ProfilerActivity, profile as prof

    net, x, y = digits_mlp(CUDA)
    spec = av.devices.paper1(0.05)
    program = prepare(net, spec, fuse_relu=True)
    run = lambda: av.sweep(net, spec, (x, y), n_instances=n_instances, seed=0, progress=False,  # noqa: E731
                           program=program)
    run()
    torch.cuda.synchronize()
    with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        run()
        torch.cuda.synchronize()
    name = f"profile_mlp_{n_instances}.txt"
    (out / name).write_text(p.key_averages().table(sort_by="cuda_time_total", row_limit=25))
    return {"written": name}


def convnet_default_layout(out: Path) -> dict:
    """For comparison: the convnet benchmark with convolutions in the default (NCHW) layout."""
    import anvm_stats.analog.program as program_mod
    before = program_mod.CHANNELS_LAST_DEVICES
    program_mod.CHANNELS_LAST_DEVICES = frozenset({"cpu"})
    try:
        return bench.bench_convnet("cuda")
    finally:
        program_mod.CHANNELS_LAST_DEVICES = before


def engine_unfused(out: Path) -> dict:
    """For comparison: hidden layers with baddbmm and a separate ReLU (no fused epilogue)."""
    from anvm_stats.analog import kernels, program as program_mod
    before = program_mod.select_kernel
    program_mod.select_kernel = lambda device: kernels.GenericKernel()   # programs prepared by the bench
    try:
        return bench.bench_engine("cuda", n_instances=16384)
    finally:
        program_mod.select_kernel = before


def hasgd(out: Path) -> dict:
    from benchmarks.training import bench_hasgd
    return bench_hasgd(("resnet20-cifar", "wrn28-10-cifar"), device="cuda", modes=("plain", "split", "local"),
                       repeats=2)


def read_noise(out: Path) -> dict:
    """Per-forward noise (read noise + ADC output noise): counter streams vs per-instance generators."""
    net, x, y = digits_mlp(CUDA)
    spec = av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.05), av.ReadNoise(sigma=0.02)),
                           periphery=av.Periphery(output_noise=0.01))
    res = {}
    for name, k in (("counter", 16384), ("generator", 1024)):
        run = lambda: av.evaluate(net, spec, (x, y), n_instances=k, seed=0, progress=False,  # noqa: E731
                                  options=av.RunOptions(sampler=name), device=CUDA)
        run()
        res[f"{name}_chips_per_s"] = k / best_time(run, CUDA, 2)
    res["counter_vs_generator"] = res["counter_chips_per_s"] / res["generator_chips_per_s"]
    return res


def _paired_precision(net, x, y, n: int) -> dict:
    """The same ``n`` chips in float32 and in bf16 on CUDA: mean and sd of the correct counts, and whether bf16
    moves them by less than the float32 estimates' chip-sampling error (z at a two-sided 1e-5)."""
    from scipy import stats

    spec = av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.05),))
    res = {}
    for precision in ("float32", "bf16"):
        ds = av.sweep(net, spec, (x, y), n_instances=n, seed=0, progress=False, device=CUDA,
                      options=av.RunOptions(precision=precision))
        res[precision] = ds["correct_count"].values.ravel().astype(float)
    c32, c16 = res["float32"], res["bf16"]
    z, sd = stats.norm.isf(0.5e-5), c32.std(ddof=1)
    return {"n_chips": n, "n_samples": int(len(y)), "mean_correct_float32": c32.mean(), "mean_correct_bf16": c16.mean(),
            "sd_float32": sd, "sd_bf16": c16.std(ddof=1), "chips_differing": int((c32 != c16).sum()),
            "mean_within_bound": bool(abs(c16.mean() - c32.mean()) <= z * sd / np.sqrt(n)),
            "sd_within_bound": bool(abs(c16.std(ddof=1) - sd) <= z * sd / np.sqrt(2 * (n - 1)))}


def bf16_paired(out: Path) -> dict:
    """Issue 19 item 5's paired check on the GPU (bf16 tensor cores): a trained digits MLP and ResNet-20 on
    CIFAR-shaped random images labelled by the float network's own output."""
    from tests.helpers import train_digits_mlp
    from anvm_stats.data import digits

    te = digits("test")
    res = {"digits_mlp": _paired_precision(train_digits_mlp().to(CUDA), te.x.to(CUDA), te.y.to(CUDA), 1024)}
    net = av.models.resnet20(generator=torch.Generator().manual_seed(0)).to(CUDA).eval()
    x = torch.randn(512, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(CUDA)
    with torch.no_grad():
        y = net(x).argmax(1)
    res["resnet20"] = _paired_precision(net, x, y, 256)
    return res


def fused_configs(out: Path) -> dict:
    """The fused affine linear kernel (:mod:`anvm_stats.analog.affine_gemm`) on the digits MLP's three layers at
    16,384 chips: each tile configuration's time, draws in the sampler's layout (chip stride 85,002 floats) and
    padded to a multiple of 16 (the sampler's layout on CUDA since session 7), against the library path (``addcmul``
    + ``bmm`` + fused bias/ReLU); the shipped configurations (``affine_gemm.tile_config``) beside them."""
    from anvm_stats.analog import affine_gemm
    from anvm_stats.analog.fused import bias_relu_

    torch.backends.cuda.matmul.allow_tf32 = True
    K, B = 16384, 360
    g = torch.Generator(device=CUDA).manual_seed(0)
    configs = {"wide": [(128, 128, 32, 8, 3), (128, 256, 32, 8, 3), (128, 256, 32, 8, 4), (128, 256, 16, 8, 5),
                        (64, 256, 32, 8, 3), (128, 128, 64, 8, 3), (256, 128, 32, 8, 4),
                        (128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (256, 128, 32, 8, 3), (128, 128, 32, 4, 4)],
               "narrow": [(128, 16, 32, 4, 3), (64, 16, 64, 4, 3), (256, 16, 32, 8, 3), (128, 16, 64, 4, 4),
                          (64, 16, 32, 2, 4)]}
    layers = {"l1_shared_64x256": (64, 256, True), "l2_256x256": (256, 256, False), "l3_256x10": (256, 10, False)}
    res, best = {}, {}
    for name, (n_in, n_out, shared) in layers.items():
        x = torch.randn(B if shared else K * B, n_in, device=CUDA, generator=g).relu_()
        w0 = torch.randn(n_out, n_in, device=CUDA, generator=g) * 0.1
        coef = torch.full((n_out, 1), 0.005, device=CUDA)
        bias = torch.randn(K, n_out, device=CUDA, generator=g) * 0.1
        relu = n_out > 16
        flops = 2.0 * K * B * n_out * n_in
        row = {}
        for stride in (85_002, 85_008):
            block = torch.randn(K, stride, device=CUDA, generator=g)
            z = block[:, 16_640:16_640 + n_out * n_in].view(K, n_out, n_in)
            ref = None
            for c in configs["narrow" if n_out <= 16 else "wide"]:
                cfg = dict(zip(("BM", "BN", "BK", "num_warps", "num_stages"), c))
                try:
                    run = lambda: affine_gemm.launch(x, w0, coef, z, bias, shared=shared, K=K, B=B,  # noqa: E731
                                                     relu=relu, config=cfg, precision="tf32")
                    y = run()
                    t = best_time(run, CUDA, 5)
                except Exception as err:  # noqa: BLE001 - a configuration that does not compile
                    row[f"{stride}:{c}"] = repr(err)[:200]
                    continue
                if ref is None:
                    w = torch.addcmul(w0, z, coef)
                    xk = x.expand(K, *x.shape) if shared else x.view(K, B, n_in)
                    ref = torch.bmm(xk, w.transpose(1, 2)) + bias[:, None, :]
                    ref = ref.relu() if relu else ref
                    del w
                row[f"{stride}:{c}"] = {"ms": t * 1e3, "tflops": flops / t / 1e12,
                                        "max_rel_err": float((y - ref).abs().max() / ref.abs().max())}
                if stride == 85_008 and t < best.get(name, (9e9,))[0]:
                    best[name] = (t, cfg)
            del block, z

        def library():
            w = torch.addcmul(w0, zlib, coef)
            xk = x.expand(K, *x.shape) if shared else x.view(K, B, n_in)
            y = torch.bmm(xk, w.transpose(1, 2))
            return bias_relu_(y, bias) if relu else y.add_(bias[:, None, :])
        zlib = torch.randn(K, 85_002, device=CUDA, generator=g)[:, 16_640:16_640 + n_out * n_in].view(K, n_out, n_in)
        library()
        row["library_ms"] = best_time(library, CUDA, 5) * 1e3
        del zlib
        res[name] = row
    res["best_in_sampler_layout"] = {name: best[name][1] for name in best}
    res["shipped"] = {name: affine_gemm.tile_config(n_out, n_in) for name, (n_in, n_out, _) in layers.items()}
    return res


def engine_chunks(out: Path) -> dict:
    """The engine alone on the digits MLP at 65,536 chips, by chips per chunk (default: the memory budget's)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    net, x, y = digits_mlp(CUDA)
    spec = av.devices.paper1(0.05)
    program = prepare(net, spec, fuse_relu=True)
    res = {}
    for chunk in (None, 8192, 16384, 32768, 65536):
        run = lambda: av.sweep(net, spec, (x, y), n_instances=65536, seed=0, progress=False,  # noqa: E731
                               program=program, options=av.RunOptions(instances_per_chunk=chunk))
        run()
        res[str(chunk or "default")] = 65536 / best_time(run, CUDA, 3)
    return {"chips_per_s": res}


def mlp3_configs(out: Path) -> dict:
    """The three-layer kernel (``affine_gemm.affine_mlp3``: the digits MLP as one kernel) at 16,384 chips by tile
    configuration, against the three per-layer fused calls (shipped configurations) on the same draws."""
    from anvm_stats.analog import affine_gemm

    torch.backends.cuda.matmul.allow_tf32 = True
    K, B = 16384, 360
    g = torch.Generator(device=CUDA).manual_seed(0)
    widths = [(256, 64), (256, 256), (10, 256)]
    block = torch.randn(K, 85_008, device=CUDA, generator=g)
    layers, off = [], 0
    for o, i in widths:
        layers.append((0.1 * torch.randn(o, i, device=CUDA, generator=g), torch.full((o, 1), 0.005, device=CUDA),
                       block[:, off:off + o * i].view(K, o, i), 0.1 * torch.randn(K, o, device=CUDA, generator=g)))
        off += o * i + o
    x = torch.rand(B, 64, device=CUDA, generator=g)

    def per_layer():
        h, shared = x, True
        for j, (w0, coef, z, bias) in enumerate(layers):
            h = affine_gemm.launch(h, w0, coef, z, bias, shared=shared, K=K, B=B, relu=j < 2, precision="tf32")
            h, shared = h.view(K * B, -1), False
        return h.view(K, B, -1)

    ref = per_layer()
    res = {"per_layer_ms": best_time(per_layer, CUDA, 5) * 1e3, "shipped": affine_gemm.mlp3_config(256)}
    flops = 2.0 * K * B * sum(o * i for o, i in widths)
    for c in [(128, 64, 8, 1), (128, 64, 4, 1), (128, 32, 8, 1), (256, 32, 8, 1), (128, 32, 8, 2), (64, 16, 4, 3),
              (64, 32, 8, 2)]:
        cfg = dict(zip(("BM", "BH", "num_warps", "num_stages"), c))
        run = lambda: affine_gemm.launch_mlp3(x, layers, shared=True, K=K, B=B, config=cfg,  # noqa: E731
                                              precision="tf32")
        try:
            y = run()
            t = best_time(run, CUDA, 5)
        except Exception as err:  # noqa: BLE001 - a configuration that does not compile
            res[str(c)] = repr(err)[:200]
            continue
        res[str(c)] = {"ms": t * 1e3, "tflops": flops / t / 1e12,
                       "max_rel_err_vs_per_layer": float((y - ref).abs().max() / ref.abs().max()),
                       "argmax_agreement": float((y.argmax(-1) == ref.argmax(-1)).float().mean())}
    return res


#: step name -> function(OUT_DIR) -> JSON-able result
STEPS = {
    "tests": tests, "tests_claims": tests_claims, "sampler": sampler,
    "engine_mlp_16384": lambda out: bench.bench_engine("cuda", n_instances=16384),
    "engine_mlp_65536": lambda out: bench.bench_engine("cuda", n_instances=65536),
    "engine_mlp_16384_unfused": engine_unfused, "profile_engine": profile_engine,
    "profile_engine_65536": lambda out: profile_engine(out, 65536),
    "convnet_wrn28_10": lambda out: bench.bench_convnet("cuda"), "convnet_wrn28_10_nchw": convnet_default_layout,
    "sweep_mlp_1024": lambda out: bench.bench_sweep("cuda", n_instances=1024), "hasgd_L8": hasgd,
    "read_noise_mlp": read_noise, "bf16_paired": bf16_paired, "fused_configs": fused_configs, "mlp3_configs": mlp3_configs,
    "engine_chunks": engine_chunks,
}
#: the record run of session 4
DEFAULT_STEPS = ("tests", "sampler", "engine_mlp_16384", "engine_mlp_65536", "engine_mlp_16384_unfused",
                 "profile_engine", "convnet_wrn28_10", "convnet_wrn28_10_nchw", "sweep_mlp_1024", "hasgd_L8",
                 "read_noise_mlp")
#: issue 19's strict references
GROUPS = {"claims": ("tests_claims", "engine_mlp_65536", "engine_mlp_16384", "convnet_wrn28_10", "bf16_paired",
                     "profile_engine_65536"),
          "final": ("tests_claims", "mlp3_configs", "engine_mlp_65536", "engine_mlp_16384", "engine_chunks",
                    "convnet_wrn28_10", "bf16_paired", "profile_engine_65536", "fused_configs"),
          "engine": ("engine_mlp_65536", "engine_mlp_16384", "engine_chunks", "profile_engine_65536", "mlp3_configs"),
          "fused": ("tests_claims", "fused_configs", "engine_mlp_65536", "engine_mlp_16384", "profile_engine_65536")}


def main(out_dir: str, names: list[str]) -> int:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [s for n in names or DEFAULT_STEPS for s in GROUPS.get(n, (n,))]
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        sys.exit(f"unknown steps {unknown}; steps: {sorted(STEPS)}, groups: {sorted(GROUPS)}")
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
                     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "steps": names}
    try:
        import triton
        results["triton"] = triton.__version__
    except ImportError:
        results["triton"] = None
    for name in names:
        t = time.perf_counter()
        try:
            results[name] = STEPS[name](out)
        except Exception:  # noqa: BLE001 - record and go on
            results[name] = {"error": traceback.format_exc()[-3000:]}
        results.setdefault("step_seconds", {})[name] = round(time.perf_counter() - t, 1)
        print(f"== {name} ({results['step_seconds'][name]} s)\n"
              f"{json.dumps(results[name], indent=1, default=str)[:1500]}", flush=True)
        (out / "cuda.json").write_text(json.dumps(results, indent=2, default=str))
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    (out / "cuda.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "gpu_out", sys.argv[2:]))
