"""How many chips run together: per chunk (memory budget, cache, GPU fill), per forward (sample-major CPU runs),
and per draw block. None of these changes a result: every chip has its own streams, and paths whose kernels
depend on the call's shape run at a fixed size."""

from __future__ import annotations

import torch

from .analog.program import AnalogProgram
from .hardware.spec import HardwareSpec

#: memory for one chunk on CPU when no budget is given (draws, conductances, weights, activations)
DEFAULT_CPU_BUDGET = 2 * 2 ** 30
#: on CPU, chunks are also kept small enough that one layer's activations of the chunk stay cache-sized
#: (reports/bench/README.md, design measurements)
CPU_ACTIVATION_BYTES = 8 * 2 ** 20
#: base draws of one block of instances (drawn together; evaluated chunk by chunk, every grid point per chunk):
#: fewer sampler calls, blocks small enough to stay in the last-level cache
DRAW_BLOCK_BYTES = 32 * 2 ** 20
#: instances per forward of sample-major runs (see instances_per_forward): a forward's activations, weights and
#: shared-input products stay in cache, and fewer instances pay more Python per chip
SAMPLE_MAJOR_INSTANCES = 8
#: on CUDA, a conv network whose largest activation of one instance and batch holds at least this many floats runs
#: one instance per chunk: one chip's forward fills the GPU, and the K-instance convolution loop would add a copy
#: of every conv output
CUDA_SOLO_FLOATS = 1 << 22


def instances_per_chunk(program: AnalogProgram, fixed: int | None, memory_budget: int | None, n_total: int, batch: int,
               act: int, n_draw_tensors: int) -> int:
    """Instances evaluated together: ``fixed`` when given, else as many as ``memory_budget`` holds (default: 2 GiB
    on CPU, half the free memory on CUDA, counting memory cached by torch's allocator but unused), on CPU also
    few enough that one layer's activations stay cache-sized, and on CUDA one for conv networks with large
    activations (:data:`CUDA_SOLO_FLOATS`).

    ``batch`` samples per forward, ``act`` floats of the largest activation per sample, ``n_draw_tensors`` base
    draw tensors per device."""
    if fixed is not None:
        return min(fixed, n_total)
    budget = memory_budget
    if budget is None:
        if program.device.type == "cuda":
            # memory the caching allocator holds but no tensor uses is as free to this run as the driver's
            free, _ = torch.cuda.mem_get_info(program.device)
            cached = torch.cuda.memory_reserved(program.device) - torch.cuda.memory_allocated(program.device)
            budget = (free + cached) // 2
        else:
            budget = DEFAULT_CPU_BUDGET
    if program.device.type == "cuda" and batch * act >= CUDA_SOLO_FLOATS and \
            any(p.op != "linear" for p in program.plans):
        return 1
    per_instance = 4 * (program.n_devices * (n_draw_tensors + 3) + 4 * batch * act)
    k = budget // per_instance
    if program.device.type == "cpu":
        k = min(k, max(1, CPU_ACTIVATION_BYTES // (4 * batch * act)))
    return int(max(1, min(n_total, k)))


def draw_block(chunk: int, n_total: int, n_devices: int, n_draw_tensors: int) -> int:
    """Instances drawn together: a multiple of ``chunk`` whose base draws fit :data:`DRAW_BLOCK_BYTES`."""
    per = max(1, 4 * n_devices * max(1, n_draw_tensors - 1))
    blocks = max(1, DRAW_BLOCK_BYTES // (per * chunk))
    return int(min(n_total, chunk * blocks))


def instances_per_forward(program: AnalogProgram, specs: list[HardwareSpec], memory_budget: int | None, batch: int,
                       act: int, n_draw: int) -> int | None:
    """Instances per forward when the run folds activations sample-major, else None.

    Linear-only programs on CPU run each layer as one grouped oneDNN convolution over sample-major activations
    (:func:`anvm_stats.analog.kernels.onednn_linear`). oneDNN picks its
    kernel from the call's shape, so every forward of the run has exactly :data:`SAMPLE_MAJOR_INSTANCES` instances (a
    short chunk is padded with copies of its last chip): results never depend on the chunking. Used when the
    memory budget holds that many instances and no spec draws per-forward noise (read noise, output noise) or has
    parasitics (tiles, :mod:`anvm_stats.analog.tiles`)."""
    if not program.sample_major_ok or any(s.read_effects or s.periphery.output_noise > 0
                                          or getattr(s, "parasitics", None) is not None for s in specs):
        return None
    room = instances_per_chunk(program, None, memory_budget, 1 << 40, batch, act, n_draw)
    return SAMPLE_MAJOR_INSTANCES if room >= SAMPLE_MAJOR_INSTANCES else None
