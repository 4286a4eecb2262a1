"""One prepared run on a lent GPU: the CUDA tests, the sampler's rate, and the GPU benchmarks, as JSON.

Usage (from the repository root, on the GPU machine)::

    PYTHONPATH=. python3 scripts/gpu_check.py OUT_DIR

Each step is guarded: a failure is recorded with its traceback and the next step still runs. Results go to
``OUT_DIR/cuda.json`` (rewritten after every step), the test log to ``OUT_DIR/pytest.log`` and a kernel profile of
one engine run to ``OUT_DIR/profile.txt``. CI never runs this (no GPU there).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch


def main(out_dir: str) -> int:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
                     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        import triton
        results["triton"] = triton.__version__
    except ImportError:
        results["triton"] = None

    def save():
        (out / "cuda.json").write_text(json.dumps(results, indent=2, default=str))

    def step(name, fn):
        t = time.perf_counter()
        try:
            results[name] = fn()
        except Exception:  # noqa: BLE001 - record and go on
            results[name] = {"error": traceback.format_exc()[-3000:]}
        results.setdefault("step_seconds", {})[name] = round(time.perf_counter() - t, 1)
        print(f"== {name} ({results['step_seconds'][name]} s)\n{json.dumps(results[name], indent=1, default=str)[:1200]}",
              flush=True)
        save()

    def tests():
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_counter_rng.py",
               "tests/test_counter_rng_triton.py", "tests/test_sampler.py", "tests/analog/test_fused.py",
               "tests/analog/test_kernels.py", "tests/hessian/test_hvp.py",
               "tests/test_montecarlo.py::test_cuda_runs_are_chunk_invariant_and_use_counter_draws",
               "tests/test_montecarlo.py::test_cuda_and_cpu_engines_evaluate_the_same_chips"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
        (out / "pytest.log").write_text(proc.stdout + proc.stderr)
        return {"returncode": proc.returncode, "tail": (proc.stdout + proc.stderr)[-1500:]}

    def sampler_rate():
        from benchmarks.common import best_time as _best
        from anvm_stats.counter_rng import fill_counter
        from anvm_stats.rng import Stream
        dev = torch.device("cuda")
        buf = torch.empty(16384, 85_000, device=dev)
        g = torch.Generator(device=dev).manual_seed(0)
        fill = lambda: fill_counter("normal", buf, (1, 2), range(16384), Stream.PROGRAM)  # noqa: E731
        fill()
        t_counter = _best(fill, dev, 5)
        torch.randn(buf.shape, generator=g, device=dev, out=buf)
        t_randn = _best(lambda: torch.randn(buf.shape, generator=g, device=dev, out=buf), dev, 5)
        return {"draws": buf.numel(), "counter_normals_per_s": buf.numel() / t_counter,
                "torch_randn_per_s": buf.numel() / t_randn, "counter_vs_randn": t_randn / t_counter}

    def profile():
        from torch.profiler import ProfilerActivity, profile as prof

        from anvm_stats.analog.program import prepare
        from anvm_stats import devices
        from benchmarks.common import digits_mlp as _digits_mlp
        from anvm_stats.montecarlo import sweep
        dev = torch.device("cuda")
        net, x, y = _digits_mlp(dev)
        spec = devices.paper1(0.05)
        program = prepare(net, spec, fuse_relu=True)
        run = lambda: sweep(net, spec, (x, y), n_instances=16384, seed=0, progress=False, program=program)  # noqa
        run()
        torch.cuda.synchronize()
        with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            run()
            torch.cuda.synchronize()
        table = p.key_averages().table(sort_by="cuda_time_total", row_limit=25)
        (out / "profile.txt").write_text(table)
        return {"written": "profile.txt"}

    def convnet_default_layout():
        """For comparison: the same benchmark with convolutions in the default (NCHW) layout."""
        import anvm_stats.analog.program as program_mod
        before = program_mod.CHANNELS_LAST_DEVICES
        program_mod.CHANNELS_LAST_DEVICES = frozenset({"cpu"})
        try:
            return bench.bench_convnet("cuda")
        finally:
            program_mod.CHANNELS_LAST_DEVICES = before

    from benchmarks import engine as bench
    step("tests", tests)
    step("sampler", sampler_rate)
    step("engine_mlp_16384", lambda: bench.bench_engine("cuda", n_instances=16384))
    step("engine_mlp_65536", lambda: bench.bench_engine("cuda", n_instances=65536))

    def engine_unfused():
        """For comparison: hidden layers with baddbmm and a separate ReLU (no fused epilogue)."""
        from anvm_stats.analog import kernels, program as program_mod
        before = program_mod.select_kernel
        program_mod.select_kernel = lambda device: kernels.GenericKernel()   # programs prepared by the bench
        try:
            return bench.bench_engine("cuda", n_instances=16384)
        finally:
            program_mod.select_kernel = before

    step("engine_mlp_16384_unfused", engine_unfused)
    step("profile_engine", profile)
    step("convnet_wrn28_10", lambda: bench.bench_convnet("cuda"))
    step("convnet_wrn28_10_nchw", convnet_default_layout)
    step("sweep_mlp_1024", lambda: bench.bench_sweep("cuda", n_instances=1024))

    def hasgd():
        from benchmarks.training import bench_hasgd
        return bench_hasgd(("resnet20-cifar", "wrn28-10-cifar"), device="cuda", modes=("plain", "split", "local"),
                           repeats=2)

    step("hasgd_L8", hasgd)

    def read_noise():
        """Per-forward noise (read noise + ADC output noise): counter streams vs per-instance generators."""
        import anvm_stats as av
        from benchmarks.common import best_time as _best, digits_mlp as _digits_mlp
        dev = torch.device("cuda")
        net, x, y = _digits_mlp(dev)
        spec = av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.05), av.ReadNoise(sigma=0.02)),
                               periphery=av.Periphery(output_noise=0.01))
        out = {}
        for sampler, k in (("counter", 16384), ("generator", 1024)):
            run = lambda: av.evaluate(net, spec, (x, y), n_instances=k, seed=0, progress=False,  # noqa: E731
                                      options=av.RunOptions(sampler=sampler), device="cuda")
            run()
            out[f"{sampler}_chips_per_s"] = k / _best(run, dev, 2)
        out["counter_vs_generator"] = out["counter_chips_per_s"] / out["generator_chips_per_s"]
        return out

    step("read_noise_mlp", read_noise)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "gpu_out"))
