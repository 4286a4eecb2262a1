"""Engine benchmarks: ratios measured inside one run, never wall-clock asserts.

* ``engine``: the K-instance engine against (a) the simplest fast loop a user would write (one model copy; per
  instance, copy nominal + noise into it and evaluate) on the same draws, (b) a 10-line ``torch.func.vmap``
  version with its chunk size tuned (:data:`VMAP_CHUNKS`, the best reported), and (c) this machine's strict
  limit measured in the same run: ``limit = FLOPs / matmul rate + Gaussian draws / sampling rate``, the matmul
  rate being the best square-GEMM rate over sizes :data:`GEMM_SIZES` (2048..8192 on a GPU, TF32) of the
  libraries torch uses here (:func:`measure_gemm_rates`: MKL/cuBLAS through ``a @ b`` and, on CPU, oneDNN; the
  fraction at ``a @ b``'s rate alone is reported too), the sampling rate ``torch.randn``'s into a 1 GiB buffer.
* ``convnet``: WideResNet chips against the simple loop, the limit, the plain float evaluation of the same
  network once per chip, and (on CUDA) ``precision="bf16"`` against its bf16 limit.
* ``sweep``: an 8-point noise sweep (common random numbers: draws once per instance) against the per-point simple
  loop, and against the sweep's own limit (FLOPs of all points + draws once).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from anvm_stats.analog.program import prepare
from anvm_stats.counter_rng import counter_draws_default, fill_counter, run_key
from anvm_stats.devices.presets import paper1
from anvm_stats.hardware.effects import ProgrammingNoise
from anvm_stats.hardware.spec import HardwareSpec
from anvm_stats.models import wide_resnet
from anvm_stats.montecarlo import RunOptions, sweep
from anvm_stats.rng import Stream, instance_generators, root_sequence

from .common import best_time
from .common import digits_mlp

SIGMAS = (0.02, 0.05, 0.08, 0.1, 0.12, 0.15, 0.18, 0.2)


#: square GEMM sizes of the limit's matmul rate (the best over them is the rate: large GEMMs reach a GPU's peak)
GEMM_SIZES = {"cuda": (2048, 4096, 8192), "cpu": (1024, 2048)}
#: vmap chunk sizes the reference loop is tuned over (its best is reported)
VMAP_CHUNKS = {"cuda": (256, 512, 1024, 2048, 4096, 8192), "cpu": (64, 256, 1024)}
#: elements of the buffer the sampling rate fills (1 GiB of float32: randn's rate into a large buffer)
SAMPLING_BUFFER = 1 << 28


def measure_gemm_rates(device: torch.device, sizes: tuple[int, ...] | None = None,
                       dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Best FLOP/s over square GEMMs of ``sizes`` (default :data:`GEMM_SIZES`) through each library torch offers
    here: ``a @ b`` (MKL on CPU, cuBLAS with TF32 when the caller enabled it, or in ``dtype`` such as bfloat16),
    and on CPU oneDNN's (a 1x1 convolution of a channels-last ``[1, n, n/64, 64]`` image: an ``n x n x n`` GEMM).
    On AMD CPUs MKL's sgemm reaches about half of oneDNN's."""
    import torch.nn.functional as F

    rates: dict[str, float] = {}
    for n in sizes or GEMM_SIZES.get(device.type, GEMM_SIZES["cpu"]):
        g = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(n, n, device=device, generator=g).to(dtype)
        b = torch.randn(n, n, device=device, generator=g).to(dtype)
        a @ b
        repeats = 3
        if device.type == "cuda":
            # a GPU idles at low clocks: ~0.1 s of products first, then the best of many short ones
            for _ in range(max(10, int(2000 * (2048 / n) ** 3))):
                a @ b
            repeats = max(5, int(50 * (2048 / n) ** 3))
        rate = 2 * n ** 3 / best_time(lambda: a @ b, device, repeats)
        rates["torch_matmul"] = max(rates.get("torch_matmul", 0.0), rate)
        if device.type == "cpu" and dtype == torch.float32:
            x = torch.randn(1, n, n // 64, 64, device=device, generator=g).contiguous(
                memory_format=torch.channels_last)
            w = b.reshape(n, n, 1, 1)
            F.conv2d(x, w)
            rate = 2 * n ** 3 / best_time(lambda: F.conv2d(x, w), device, repeats)
            rates["onednn_conv1x1"] = max(rates.get("onednn_conv1x1", 0.0), rate)
    return rates


def measure_sampling_rate(device: torch.device, n: int | None = None) -> float:
    """Standard normal draws per second from one seeded generator filling a preallocated buffer of ``n`` floats
    (1 GiB by default: the rate of large fills, not of a small call's overheads)."""
    n = n or SAMPLING_BUFFER
    g = torch.Generator(device=device).manual_seed(0)
    buf = torch.empty(n, device=device)
    torch.randn(n, generator=g, out=buf)
    rate = n / best_time(lambda: torch.randn(n, generator=g, out=buf), device, 3)
    del buf
    return rate


def instance_normals(root, indices, n: int, device: torch.device) -> torch.Tensor:
    """``[K, n]`` standard normals of instances ``indices``, from the source the engine's sampler uses on
    ``device`` (per-instance generators on CPU, counter-based Philox on CUDA): the loops draw the same chips."""
    if counter_draws_default(device):
        out = torch.empty((len(indices), n), device=device)
        return fill_counter("normal", out, run_key(root), list(indices), Stream.PROGRAM)
    return torch.stack([torch.randn(n, generator=g, device=device)
                        for g in instance_generators(root, indices, Stream.PROGRAM, device)])


def _allow_tf32(device: torch.device) -> None:
    """On CUDA the limit is measured, and the engine and loops run, with TF32 matrix products (the issue's
    GPU limit is the TF32 rate)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _mlp_cost(net: nn.Module, n_samples: int) -> tuple[float, int]:
    """FLOPs per instance (multiply-add = 2, bias column included) and Gaussian draws per instance."""
    flops, draws = 0.0, 0
    for m in net.modules():
        if isinstance(m, nn.Linear):
            cols = m.in_features + (m.bias is not None)
            flops += 2.0 * n_samples * m.out_features * cols
            draws += m.out_features * cols
    return flops, draws


@torch.no_grad()
def simple_loop(net: nn.Module, x, y, sigmas, n_instances: int, seed: int) -> np.ndarray:
    """What a user would write: one model copy; per instance and noise level, nominal + range*sigma*N copied in.

    Uses the same per-instance streams and draw order as the engine (weights then bias column per layer)."""
    import copy

    work = copy.deepcopy(net)
    layers = [(m, w) for m, w in zip([m for m in work.modules() if isinstance(m, nn.Linear)],
                                     [m for m in net.modules() if isinstance(m, nn.Linear)])]
    nominal = []
    for m, src in layers:
        w, b = src.weight.detach(), src.bias.detach()
        s = float(b.max() - b.min()) / float(w.max() - w.min())
        w_aug = torch.cat([w, (b / s)[:, None]], 1)
        nominal.append((w_aug, float(w_aug.max() - w_aug.min()) / 2, s))
    n_dev = sum(w.numel() for w, _, _ in nominal)
    root = root_sequence(seed)
    acc = np.zeros((len(sigmas), n_instances))
    for p, sigma in enumerate(sigmas):
        for i in range(n_instances):
            z = instance_normals(root, [i], n_dev, x.device)[0]
            off = 0
            for (m, _), (w_aug, rng, s) in zip(layers, nominal):
                o, i_ = m.weight.shape
                zw = z[off:off + o * i_].view(o, i_)
                zb = z[off + o * i_: off + o * (i_ + 1)]
                off += o * (i_ + 1)
                m.weight.copy_(w_aug[:, :i_] + rng * sigma * zw)
                m.bias.copy_((w_aug[:, -1] + rng * sigma * zb) * s)
            acc[p, i] = float((work(x).argmax(1) == y).float().mean())
    return acc


@torch.no_grad()
def vmap_loop(net: nn.Module, x, y, sigma: float, n_instances: int, seed: int, chunk: int = 64) -> np.ndarray:
    """A 10-line torch.func.vmap version (no bias column, plain Gaussian per layer), for reference."""
    from torch.func import functional_call, vmap

    params = {k: v.detach() for k, v in net.named_parameters()}
    ranges = {k: float(v.max() - v.min()) / 2 for k, v in params.items()}
    root, total = root_sequence(seed), sum(v.numel() for v in params.values())
    out = []
    for start in range(0, n_instances, chunk):
        z = instance_normals(root, range(start, min(n_instances, start + chunk)), total, x.device)
        parts = dict(zip(params, z.split([v.numel() for v in params.values()], dim=1)))
        stacked = {k: v + ranges[k] * sigma * parts[k].view(-1, *v.shape) for k, v in params.items()}
        logits = vmap(lambda p: functional_call(net, p, (x,)))(stacked)
        out.append((logits.argmax(-1) == y).float().mean(-1).cpu().numpy())
    return np.concatenate(out)


def tuned_vmap(net: nn.Module, x, y, sigma: float, n_instances: int, seed: int, device: torch.device,
               chunks: tuple[int, ...] | None = None) -> tuple[float, int]:
    """Seconds per chip of :func:`vmap_loop` at its best chunk size over ``chunks`` (default
    :data:`VMAP_CHUNKS`; each timed on ``max(chunk, n_instances)`` chips), and that chunk."""
    best = (float("inf"), 0)
    for chunk in chunks or VMAP_CHUNKS.get(device.type, VMAP_CHUNKS["cpu"]):
        n = max(chunk, n_instances)
        vmap_loop(net, x, y, sigma, chunk, seed, chunk)            # warm (compilation of the batched kernels)
        secs = best_time(lambda: vmap_loop(net, x, y, sigma, n, seed, chunk), device, 1) / n
        best = min(best, (secs, chunk))
    return best


def _mlp_job(device: str, seed: int):
    """The digits MLP job of the engine benchmarks and the machine's rates: ``(device, net, x, y, spec, program,
    (flops, draws) per chip, GEMM rates, sampling rate)``."""
    dev = torch.device(device)
    _allow_tf32(dev)
    net, x, y = digits_mlp(dev, seed)
    spec = paper1(0.05)
    program = prepare(net, spec, fuse_relu=True)
    return (dev, net, x, y, spec, program, _mlp_cost(net, x.shape[0]), measure_gemm_rates(dev),
            measure_sampling_rate(dev))


def bench_engine(device: str = "cpu", n_instances: int | None = None, seed: int = 0) -> dict:
    """Engine vs simple loop vs vmap vs limit, MLP 64-256-256-10 on the digits test split (360 samples)."""
    dev, net, x, y, spec, program, (flops, draws), gemm, sampling_rate = _mlp_job(device, seed)
    n_instances = n_instances or (1024 if dev.type == "cpu" else 65536)
    matmul_rate = max(gemm.values())
    limit_s = n_instances * (flops / matmul_rate + draws / sampling_rate)
    limit_mm_s = n_instances * (flops / gemm["torch_matmul"] + draws / sampling_rate)
    engine_s = best_time(lambda: sweep(net, spec, (x, y), n_instances=n_instances, seed=seed, progress=False,
                                   program=program), dev, 2)
    n_simple = min(n_instances, 256 if dev.type == "cpu" else 1024)
    simple_s = best_time(lambda: simple_loop(net, x, y, [0.05], n_simple, seed), dev, 1) * n_instances / n_simple
    vmap_per_chip, vmap_chunk = tuned_vmap(net, x, y, 0.05, n_simple, seed, dev)
    vmap_s = vmap_per_chip * n_instances
    eng = sweep(net, spec, (x, y), n_instances=n_simple, seed=seed, progress=False, program=program)
    ref = simple_loop(net, x, y, [0.05], n_simple, seed)[0]
    return {
        "job": f"MLP 64-256-256-10, {x.shape[0]} samples, paper1 sigma=0.05, {n_instances} instances",
        "device": str(dev), "matmul_gflops": matmul_rate / 1e9, "randn_msamples_per_s": sampling_rate / 1e6,
        "gemm_gflops": {k: v / 1e9 for k, v in gemm.items()},
        "limit_instances_per_s": n_instances / limit_s, "engine_instances_per_s": n_instances / engine_s,
        "engine_fraction_of_limit_at_torch_matmul_rate": limit_mm_s / engine_s,
        "simple_loop_instances_per_s": n_instances / simple_s, "vmap_instances_per_s": n_instances / vmap_s,
        "vmap_best_chunk": vmap_chunk, "engine_vs_tuned_vmap": vmap_s / engine_s,
        "engine_fraction_of_limit": limit_s / engine_s, "engine_vs_simple_loop": simple_s / engine_s,
        "max_accuracy_difference_vs_simple_loop": float(np.abs(eng.accuracy.values - ref).max()),
    }


def bench_sweep(device: str = "cpu", n_instances: int = 256, seed: int = 0) -> dict:
    """8 noise levels x n_instances: the CRN sweep vs the per-point simple loop and vs its own limit."""
    dev, net, x, y, spec, program, (flops, draws), gemm, sampling_rate = _mlp_job(device, seed)
    matmul_rate = max(gemm.values())
    n_pts = len(SIGMAS)
    limit_s = n_instances * (n_pts * flops / matmul_rate + draws / sampling_rate)
    limit_mm_s = n_instances * (n_pts * flops / gemm["torch_matmul"] + draws / sampling_rate)
    grid = {"noise_level": list(SIGMAS)}
    # best of several runs for both (this machine is shared: the limit's GEMM rate is also a best of 5)
    sweep_s = best_time(lambda: sweep(net, spec, (x, y), grid=grid, n_instances=n_instances, seed=seed,
                                  progress=False, program=program), dev, 5)
    loop_s = best_time(lambda: simple_loop(net, x, y, SIGMAS, n_instances, seed), dev, 3)
    return {
        "job": f"{n_pts} noise levels x {n_instances} instances, MLP 64-256-256-10",
        "device": str(dev), "gemm_gflops": {k: v / 1e9 for k, v in gemm.items()}, "limit_s": limit_s,
        "sweep_s": sweep_s, "per_point_simple_loop_s": loop_s,
        "sweep_vs_simple_loop": loop_s / sweep_s, "sweep_fraction_of_limit": limit_s / sweep_s,
        "sweep_fraction_of_limit_at_torch_matmul_rate": limit_mm_s / sweep_s,
        # the most any sweep could gain over this loop on this machine: the loop's time over the sweep's limit
        "simple_loop_vs_sweep_limit": loop_s / limit_s,
    }


def _conv_flops(net: nn.Module, x) -> tuple[float, int]:
    """FLOPs of one forward of ``net`` on ``x`` in its Conv/Linear layers (multiply-add = 2, per the whole batch)
    and the number of weights and biases (the Gaussian draws of one chip)."""
    flops = [0.0]

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            k = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1] + (m.bias is not None)
            flops[0] += 2.0 * out.numel() * k
        elif isinstance(m, nn.Linear):
            flops[0] += 2.0 * out.numel() * (m.in_features + (m.bias is not None))

    hooks = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    draws = sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
                for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    return flops[0], draws


@torch.no_grad()
def _conv_simple_loop(net, x, y, sigma, n_instances, seed, batch):
    """Per instance: copy nominal + range*sigma*N into one model copy, evaluate in batches (no bias column)."""
    import copy

    work = copy.deepcopy(net).eval()
    params = [(p, p.detach().clone(), float(p.max() - p.min()) / 2) for n, p in work.named_parameters()
              if n.endswith("weight") and p.dim() > 1]
    root = root_sequence(seed)
    acc = []
    for gen in instance_generators(root, range(n_instances), Stream.PROGRAM, x.device):
        for p, p0, rng in params:
            p.copy_(p0 + rng * sigma * torch.randn(p0.shape, generator=gen, device=x.device))
        correct = sum(int((work(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
        acc.append(correct / len(x))
    return acc


def bench_convnet(device: str = "cpu", *, depth: int | None = None, widen: int | None = None,
                  n_inputs: int | None = None, n_instances: int | None = None, batch_size: int = 500,
                  chunk_size: int | None = None, seed: int = 0, bf16: bool | None = None) -> dict:
    """WideResNet on random CIFAR-shaped inputs: engine vs the per-instance simple loop vs the limit (FLOPs at
    the measured matmul rate + draws at the sampling rate). Defaults: WRN-28-10 on 10,000 inputs on CUDA (the
    issue's compute-bound case, TF32 allowed), WRN-16-2 on 500 inputs on the CPU. Also the plain evaluation of the
    same float network once per chip (the floor any per-chip evaluation pays), and with ``bf16`` (default: on
    CUDA) the engine in ``RunOptions(precision="bf16")`` against its bf16 limit (FLOPs at the bf16 GEMM rate)."""

    dev = torch.device(device)
    gpu = dev.type == "cuda"
    _allow_tf32(dev)
    depth, widen = depth or (28 if gpu else 16), widen or (10 if gpu else 2)
    n_inputs, n_instances = n_inputs or (10_000 if gpu else 500), n_instances or (4 if gpu else 4)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_inputs, 3, 32, 32, generator=g).to(dev)
    y = torch.randint(0, 100, (n_inputs,), generator=g).to(dev)
    net = wide_resnet(depth=depth, widen=widen, n_classes=100, generator=torch.Generator().manual_seed(seed))
    net = net.to(dev).eval()
    flops, draws = _conv_flops(net, x[:batch_size])
    flops *= n_inputs / batch_size
    gemm, sampling_rate = measure_gemm_rates(dev), measure_sampling_rate(dev)
    matmul_rate = max(gemm.values())
    limit_s = n_instances * (flops / matmul_rate + draws / sampling_rate)
    spec = HardwareSpec(effects=(ProgrammingNoise(sigma=0.025, relative_to="range", clip=False),))
    program = prepare(net, spec, fuse_relu=True)
    run_engine = lambda n: sweep(net, spec, (x, y), n_instances=n, seed=seed, progress=False,  # noqa: E731
                                 program=program, options=RunOptions(samples_per_batch=batch_size,
                                                                     instances_per_chunk=chunk_size))
    run_loop = lambda n: _conv_simple_loop(net, x, y, 0.05, n, seed, batch_size)  # noqa: E731
    run_engine(1), run_loop(1)    # warm both (convolution primitives, allocator) before timing
    engine_s = best_time(lambda: run_engine(n_instances), dev, 1)
    simple_s = best_time(lambda: run_loop(n_instances), dev, 1)

    @torch.no_grad()
    def plain(n):
        for _ in range(n):
            for i in range(0, n_inputs, batch_size):
                net(x[i:i + batch_size])
    plain(1)
    plain_s = best_time(lambda: plain(n_instances), dev, 1)
    extra = {}
    if bf16 if bf16 is not None else gpu:
        bf16_rate = measure_gemm_rates(dev, dtype=torch.bfloat16)["torch_matmul"]
        opts = RunOptions(samples_per_batch=batch_size, instances_per_chunk=chunk_size, precision="bf16")
        run_bf16 = lambda n: sweep(net, spec, (x, y), n_instances=n, seed=seed, progress=False,  # noqa: E731
                                   program=program, options=opts)
        run_bf16(1)
        bf16_s = best_time(lambda: run_bf16(n_instances), dev, 1)
        bf16_limit = n_instances * (flops / bf16_rate + draws / sampling_rate)
        extra = {"bf16_gemm_gflops": bf16_rate / 1e9, "engine_bf16_s_per_instance": bf16_s / n_instances,
                 "engine_bf16_fraction_of_bf16_limit": bf16_limit / bf16_s}
    return {"job": f"WRN-{depth}-{widen}, {n_inputs} CIFAR-shaped inputs, {n_instances} instances"
                   + (f", chunks of {chunk_size}" if chunk_size else ""),
            "device": str(dev), "matmul_gflops": matmul_rate / 1e9,
            "gemm_gflops": {k: v / 1e9 for k, v in gemm.items()}, "limit_s_per_instance": limit_s / n_instances,
            "engine_s_per_instance": engine_s / n_instances, "simple_loop_s_per_instance": simple_s / n_instances,
            "plain_evaluation_s_per_instance": plain_s / n_instances,
            "engine_fraction_of_limit": limit_s / engine_s, "engine_vs_simple_loop": simple_s / engine_s,
            "engine_vs_plain_evaluation": plain_s / engine_s, **extra}
