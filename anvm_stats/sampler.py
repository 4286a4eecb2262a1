"""Chip samplers: turn (seed, instance index) into programmed chips of an AnalogProgram.

Two samplers share one base, :class:`ChipSampler`: :class:`GeneratorSampler` (one ``torch.Generator`` per
instance and stream) and :class:`CounterSampler` (counter-based Philox streams, one kernel per chunk); the program's
device picks one unless the run names it (``RunOptions.sampler``).

Instance ``i`` draws its programming randomness from its own stream (:mod:`anvm_stats.rng`), so its chip is the
same whatever the chunking, order or worker. Base draws are separated from their application
(:mod:`anvm_stats.hardware.effects`): a sweep draws once per instance and re-applies the effects at every grid
point (common random numbers).
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar, Sequence

import numpy as np
import torch

from .analog.program import AnalogProgram
from .checks import RESULT_BYTES_PER_CELL, memory_bytes
from .counter_rng import CounterStream, counter_draws_default, run_key
from .errors import ConfigError, check_number
from .hardware.spec import HardwareSpec
from .hardware.effects import fill_standard
from .rng import SeedLike, Stream, instance_generators, root_sequence

Tensor = torch.Tensor
Draws = list  # one dict[str, Tensor [K, P]] per program-phase effect
#: largest instance index (indices are int64)
INDEX_MAX = 2**63 - 1


class ChipSampler:
    """Draws and programs chip instances of ``program``: the base of :class:`GeneratorSampler` and
    :class:`CounterSampler`.

    ``ChipSampler(program, seed)`` builds the sampler of the program's device (:class:`CounterSampler` on CUDA,
    :class:`GeneratorSampler` elsewhere, :func:`~anvm_stats.counter_rng.counter_draws_default`); ``counter=True``
    or ``False`` picks one. Either way instance ``i``'s chip depends only on ``(seed, i)``; the two samplers draw
    different (equally distributed) chips.

    Parameters
    ----------
    program : AnalogProgram
    seed : int, SeedSequence or None
        Root seed of the run; instance ``i`` uses child ``(i, stream)`` of it.
    counter : bool, optional
        Only when building through the base class: which sampler (default: the device's).
    """

    #: recorded in results' ``sampler`` attr
    kind: ClassVar[str] = ""
    #: whether base draws come from counter-based streams
    counter: ClassVar[bool] = False

    def __new__(cls, program: AnalogProgram | None = None, seed: SeedLike = None, counter: bool | None = None):
        if cls is ChipSampler and program is not None:
            use = counter_draws_default(program.device) if counter is None else bool(counter)
            cls = CounterSampler if use else GeneratorSampler
        return super().__new__(cls)

    def __init__(self, program: AnalogProgram, seed: SeedLike, counter: bool | None = None):
        if counter is not None and bool(counter) != self.counter:
            raise ValueError(f"{type(self).__name__} draws {'with' if self.counter else 'without'} counters")
        self.program = program
        self.root = root_sequence(seed)

    # ------------------------------------------------------------------ what the two samplers do differently
    def _program_draws(self, effects: Sequence, indices: list[int], reuse: Draws | None) -> Draws:
        """Base programming draws of ``indices`` for ``effects``."""
        raise NotImplementedError

    def read_generators(self, indices: Sequence[int], spec: HardwareSpec | None = None,
                        ) -> list[torch.Generator] | CounterStream:
        """Fresh per-forward noise sources of the READ stream (read noise, ADC output noise) of ``indices``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ filling draw buffers from a source
    def _from_stream(self, effects: Sequence, stream: CounterStream, reuse: Draws | None) -> Draws:
        """Draws of effects that declare ``draw_kinds``, one counter fill per draw tensor of the chunk."""
        layout = [dict(e.draw_kinds) for e in effects]
        dev = self.program.device
        bufs = _buffers(layout, len(stream), self.program.n_devices, torch.float32, dev, reuse,
                        CUDA_ROW_ALIGN if dev.type == "cuda" else 1)
        for j, kinds in enumerate(layout):
            for name, kind in kinds.items():
                stream.fill(kind, bufs[j][name])
        return bufs

    def _from_generators(self, effects: Sequence, gens: list, reuse: Draws | None) -> Draws:
        """Per-instance draws stacked into ``[K, n]`` buffers (``reuse``: buffers of an earlier call to refill).

        Effects that declare ``draw_kinds`` are drawn straight into the buffers' rows from per-instance generators;
        others through their ``draw`` and a copy. torch's CPU samplers are single-threaded and every instance has
        its own generator, so rows are filled by a pool of ``torch.get_num_threads()`` threads; results never
        depend on it."""
        prog = self.program
        n, dev, dtype = prog.n_devices, prog.device, prog.g0.dtype
        K = len(gens)
        if K == 0 or not effects:
            return [{} for _ in effects]
        direct = _declares_kinds(effects)
        first = None if direct else [e.draw(n, gens[0], device=dev, dtype=dtype) for e in effects]
        layout = [dict(e.draw_kinds) for e in effects] if direct else \
            [{k: None for k in d} for d in first]
        bufs = _buffers(layout, K, n, dtype, dev, reuse)

        def fill(rows) -> None:
            for r in rows:
                if direct:
                    for j, kinds in enumerate(layout):
                        for k, kind in kinds.items():
                            fill_standard(kind, bufs[j][k][r], gens[r])
                else:
                    drawn = first if r == 0 else [e.draw(n, gens[r], device=dev, dtype=dtype) for e in effects]
                    for j, d in enumerate(drawn):
                        for k, t in d.items():
                            bufs[j][k][r].copy_(t)

        workers = min(torch.get_num_threads(), K) if dev.type == "cpu" else 1
        if workers <= 1 or not any(bufs):
            fill(range(K))
        else:
            list(self._executor(workers).map(fill, [range(w, K, workers) for w in range(workers)]))
        return bufs

    def _executor(self, workers: int) -> ThreadPoolExecutor:
        pool = getattr(self, "_pool", None)
        if pool is None or pool._max_workers != workers:
            if pool is not None:
                pool.shutdown(wait=True)
            pool = self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="anvm-draw")
        return pool

    def close(self) -> None:
        """Release the sampling threads (also done when the sampler is garbage-collected)."""
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=True)
            self._pool = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # ------------------------------------------------------------------ the sampler's interface
    def draw(self, indices: Sequence[int], spec: HardwareSpec | None = None, *, reuse: Draws | None = None,
             ) -> Draws:
        """Base programming draws of ``indices``: one dict of ``[K, P]`` tensors per program effect of ``spec``
        (default: the program's spec). Knob values never change what is drawn. ``reuse``: the draws of an
        earlier chunk, no longer needed, whose buffers are refilled (saves allocating and faulting in memory)."""
        spec = spec or self.program.spec
        return self._program_draws(spec.program_effects, list(indices), reuse)

    def program_chips(self, draws: Draws, spec: HardwareSpec | None = None, *, K: int | None = None) -> Tensor:
        """Programmed conductances ``[K, P]`` from base draws, with the effect parameters of ``spec``."""
        spec = spec or self.program.spec
        effects = spec.program_effects
        if len(draws) != len(effects):
            raise ValueError(f"draws for {len(draws)} effects, spec has {len(effects)} program effects")
        if K is None:
            K = next(t.shape[0] for d in draws for t in d.values())
        g = self.program.g0.expand(K, -1)
        for eff, d in zip(effects, draws):
            g = eff.apply(g, d, spec.bounds)
        return g.clone() if g.data_ptr() == self.program.g0.data_ptr() else g

    def chips(self, indices: Sequence[int], spec: HardwareSpec | None = None) -> Tensor:
        """Draw and program in one call: conductances ``[K, P]`` of instances ``indices``."""
        spec = spec or self.program.spec
        return self.program_chips(self.draw(indices, spec), spec, K=len(indices))

    def draw_from(self, effects: Sequence, sources: list[torch.Generator] | CounterStream) -> Draws:
        """Base draws of ``effects`` for ``len(sources)`` instances from the given sources: per-instance
        generators (row ``r`` from ``sources[r]``) or a :class:`~anvm_stats.counter_rng.CounterStream` (effects
        declaring ``draw_kinds``); one dict of ``[K, P]`` tensors per effect."""
        if isinstance(sources, CounterStream):
            return self._from_stream(effects, sources, None)
        return self._from_generators(effects, list(sources), None)

    def read(self, g: Tensor, spec: HardwareSpec, generators: list[torch.Generator] | CounterStream) -> Tensor:
        """Conductances seen by one forward pass: ``g`` plus fresh read-phase effects drawn from ``generators``
        (from :meth:`read_generators`)."""
        effects = spec.read_effects
        if not effects:
            return g
        for eff, d in zip(effects, self.draw_from(effects, generators)):
            g = eff.apply(g, d, spec.bounds)
        return g


class GeneratorSampler(ChipSampler):
    """Base draws from one ``torch.Generator`` per instance and stream (:mod:`anvm_stats.rng`); the default off
    CUDA."""

    kind = "per-instance-generator"
    counter = False

    def _program_draws(self, effects, indices, reuse):
        gens = instance_generators(self.root, indices, Stream.PROGRAM, self.program.device)
        return self._from_generators(effects, gens, reuse)

    def read_generators(self, indices, spec=None):
        return instance_generators(self.root, list(indices), Stream.READ, self.program.device)


class CounterSampler(ChipSampler):
    """Base draws of declared kinds from counter-based Philox streams (:mod:`anvm_stats.counter_rng`: one kernel
    per draw tensor and chunk); the default on CUDA. Effects that do not declare ``draw_kinds`` (and float64
    programs) draw from per-instance generators."""

    kind = "philox4x32-counter"
    counter = True

    def __init__(self, program: AnalogProgram, seed: SeedLike, counter: bool | None = None):
        super().__init__(program, seed, counter)
        self._key = run_key(self.root)

    def _stream(self, indices, stream: Stream) -> CounterStream:
        return CounterStream.from_host(self._key, np.asarray(list(indices), dtype=np.int64), stream,
                                       self.program.device)

    def _program_draws(self, effects, indices, reuse):
        if _declares_kinds(effects) and self.program.g0.dtype == torch.float32:
            # slot s is the s-th (effect, name) pair, one kernel per draw tensor per chunk
            return self._from_stream(effects, self._stream(indices, Stream.PROGRAM), reuse)
        gens = instance_generators(self.root, indices, Stream.PROGRAM, self.program.device)
        return self._from_generators(effects, gens, reuse)

    def read_generators(self, indices, spec=None):
        effects = (spec or self.program.spec).read_effects
        if _declares_kinds(effects):
            return self._stream(indices, Stream.READ)
        return instance_generators(self.root, list(indices), Stream.READ, self.program.device)


def _declares_kinds(effects: Sequence) -> bool:
    """Every effect declares the primitive draws it needs (``draw_kinds``): they can be filled straight into
    buffers."""
    return all(isinstance(getattr(e, "draw_kinds", None), dict) for e in effects)


#: on CUDA, rows of counter-filled draw buffers start at multiples of this many floats (64 bytes): every chip's
#: draws are equally aligned whatever its row in a chunk, so kernels that read them (``analog.affine_gemm``) compile
#: to one variant (the same round-off for every chunking) and load them in wide vectors
CUDA_ROW_ALIGN = 16


def _buffers(layout: list[dict], K: int, n: int, dtype, device, reuse: Draws | None, row_align: int = 1) -> Draws:
    """``[K, n]`` buffers for each (effect, name) of ``layout``: ``reuse`` when it has exactly that layout. With
    ``row_align > 1`` the buffers are views of ``[K, n']`` blocks, ``n'`` the multiple of ``row_align`` at or
    above ``n`` (rows contiguous, row stride ``n'``)."""
    if reuse is not None and len(reuse) == len(layout) and all(
            set(b) == set(kinds) and all(t.shape == (K, n) for t in b.values()) for b, kinds in zip(reuse, layout)):
        return reuse
    width = -(-n // row_align) * row_align
    return [{k: torch.empty((K, width), dtype=dtype, device=device)[:, :n] for k in kinds} for kinds in layout]


def instance_indices(n_instances: int | None, instances: Sequence[int] | None, points: int = 1) -> np.ndarray:
    """Instance indices of a run: ``range(n_instances)`` or the explicit ``instances``.

    Parameters
    ----------
    n_instances : int or None
        Number of chips (indices ``0..n-1``); ignored when ``instances`` is given.
    instances : sequence of int, optional
        Explicit distinct indices in ``[0, 2**63 - 1]``.
    points : int
        Grid points each chip is scored at: the results of ``n_instances x points`` cells must fit in memory.

    Raises
    ------
    ConfigError
        Naming ``instances`` or ``n_instances``, before anything the size of the run is allocated.
    """
    if instances is not None:
        allowed = "a non-empty sequence of distinct integers in [0, 2**63 - 1]"
        try:
            raw = instances if isinstance(instances, np.ndarray) else np.asarray(list(instances))
        except (TypeError, ValueError, OverflowError):
            raise ConfigError("instances", instances, allowed) from None
        if raw.ndim != 1 or raw.size == 0 or raw.dtype.kind not in "iu" or (raw.dtype.kind == "u"
                                                                               and raw.max() > INDEX_MAX):
            raise ConfigError("instances", instances, allowed)
        idx = raw.astype(np.int64)
        if (idx < 0).any() or len(np.unique(idx)) != idx.size:
            raise ConfigError("instances", instances, allowed)
        n, field = idx.size, "instances"
    else:
        check_number("n_instances", n_instances, low=1, high=INDEX_MAX, integer=True)
        n, field = int(n_instances), "n_instances"
    memory = memory_bytes()
    per_chip = RESULT_BYTES_PER_CELL * max(int(points), 1)
    if memory is not None and n * per_chip > memory:
        raise ConfigError(field, n if field == "n_instances" else f"{n} instances",
                          f"at most {max(memory // per_chip, 1)} chips here: the results of {n} chips x {points} "
                          f"grid point(s) need {n * per_chip / 2**30:.3g} GiB, this machine has "
                          f"{memory / 2**30:.3g} GiB")
    return idx if instances is not None else np.arange(n, dtype=np.int64)


#: chips of one run above which drawing them from per-instance CPU generators warns (:func:`warn_shared_streams`)
GENERATOR_WARN_INSTANCES = 1 << 14


def warn_shared_streams(sampler_kind: str, device: str, n_instances: int) -> None:
    """Warn when a run drew ``n_instances`` chips from per-instance ``torch.Generator`` s on the CPU and the
    chance that two of them drew the same chip is not negligible.

    torch's CPU generator (MT19937) seeds its state from the low 32 bits of ``manual_seed``'s argument only (the
    63-bit instance seeds of :func:`anvm_stats.rng.instance_seed` are cut to 32), so among ``n`` chips some pair
    shares its programming draws with probability about ``n^2 / 2^33`` (0.5 expected pairs at 65,536 chips). The
    counter sampler (``RunOptions(sampler="counter")``) keys Philox by the full instance index and has no such
    limit."""
    if sampler_kind != GeneratorSampler.kind or not str(device).startswith("cpu") \
            or n_instances <= GENERATOR_WARN_INSTANCES:
        return
    pairs = n_instances * (n_instances - 1) / 2 / 2 ** 32
    warnings.warn(f"anvm_stats: {n_instances} chips drawn from per-instance CPU generators, which torch seeds from 32 "
                  f"bits: about {pairs:.2g} pairs of chips are expected to share their draws; use "
                  "RunOptions(sampler='counter') for runs this large", RuntimeWarning, stacklevel=3)
