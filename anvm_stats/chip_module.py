"""A chip as a module: ``chip(model, spec, seed=s, index=i)`` is instance ``i`` of a Monte Carlo run as an
ordinary ``nn.Module``, for the user's own loops, hooks and metrics.

The module is a deep copy of the model prepared for ``spec`` (:func:`anvm_stats.analog.prepare`) and programmed
with exactly the draws of instance ``i`` of seed ``s`` (the sampler of :func:`anvm_stats.sweep`, keyed by
``(seed, i)``). Noise drawn at read time stays random:

* read noise with ``read_sd`` and ADC output noise are drawn **per MVM**, keyed by ``(seed, i, layer, sample
  index)`` (:mod:`anvm_stats.sample_rng`) as in the engine. The sample index of a forward's first sample is
  :attr:`Chip.next_sample`, which starts at 0 and advances by the batch size after every forward; :meth:`Chip.reset`
  sets it back to 0, and ``forward(x, first_sample=n)`` names it explicitly (and moves the counter to
  ``n + len(x)``). Running the evaluation data in order from a reset therefore reads the same noise as instance
  ``i`` of :func:`anvm_stats.evaluate`, whatever the batch sizes;
* read effects without ``read_sd`` (drawn once per forward in the weight domain) are drawn from instance ``i``'s
  read stream, one draw per forward from the reset on: they equal the engine's when the forwards read the
  engine's batches (``RunOptions.samples_per_batch``, default 1024 samples) in order.

Outputs equal instance ``i`` of :func:`anvm_stats.evaluate` (same seed, sampler, calibration data) to float32
round-off: the engine runs many chips per forward and may pick other kernels for those shapes.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .analog.program import AnalogProgram, LayerFilter, prepare
from .errors import ConfigError
from .hardware.spec import HardwareSpec
from .montecarlo import SAMPLERS, point_settings
from .rng import SeedLike
from .sample_rng import SampleNoise
from .sampler import INDEX_MAX, ChipSampler

Tensor = torch.Tensor


class Chip(nn.Module):
    """Instance ``index`` of a run as an ``nn.Module`` (build it with :func:`chip`).

    Attributes
    ----------
    network : nn.Module
        The prepared network (analog layers are :class:`~anvm_stats.analog.layers.AnalogModule`; submodule
        names are the model's, under ``network.``): register hooks here.
    index : int
        The instance index.
    next_sample : int
        Sample index of the next forward's first sample (keys per-MVM noise).
    program : AnalogProgram
        The program the chip was drawn from (``program.plans`` names the analog layers).

    Notes
    -----
    The chip lives on the device given to :func:`chip` (``device=``); build another rather than moving it with
    ``.to()`` (its conductances and layer plans are not module parameters).
    """

    def __init__(self, program: AnalogProgram, sampler: ChipSampler, index: int):
        super().__init__()
        self.network = program.module
        self.train(False)                # an evaluated chip: dropout off (BatchNorm is folded)
        self.program, self.sampler, self.index = program, sampler, index
        self.settings = point_settings(program, program.spec)
        self.conductances = sampler.chips([index], program.spec)           # [1, P]
        self.reset()

    def reset(self) -> "Chip":
        """Start reading again from sample 0, with fresh per-forward read draws of the instance (as the engine
        does at the start of a run); returns the chip."""
        st = self.settings
        self.next_sample, self._batch = 0, 0
        self._read_sources = self.sampler.read_generators([self.index], st.read_spec) \
            if st.read_spec is not None else None
        self._loaded = False
        self.program.unload()
        return self

    @property
    def layer_names(self) -> list[str]:
        """Analog layers (names in the model)."""
        return self.program.layer_names

    def _load(self, B: int) -> None:
        st, kw = self.settings, dict(self.settings.kw)
        if st.mvm:
            kw.update(mvm_noise=SampleNoise(self.sampler.root, np.array([self.index])),
                      mvm_effects=st.mvm_effects)
        if st.read_spec is not None:     # fresh weight-domain read draws every forward
            g = self.sampler.read(self.conductances, st.read_spec, self._read_sources)
            self.program.load(g, B=B, noise_sources=self._read_sources, **kw)
        elif not self._loaded:
            self.program.load(self.conductances, B=B, **kw)
        self._loaded = True

    @torch.no_grad()
    def forward(self, x: Tensor, *, first_sample: int | None = None) -> Tensor:
        """Outputs of this chip for the batch ``x`` ``[B, ...]`` (the model's own output shape).

        Parameters
        ----------
        x : Tensor [B, ...]
            Inputs as the model takes them (floating inputs run in float32).
        first_sample : int, optional
            Sample index of ``x[0]`` (keys per-MVM noise); default :attr:`next_sample`.

        Runs without autograd (a chip is evaluated, not trained; HA-SGD trains through
        :func:`anvm_stats.train_hasgd`).
        """
        first = self.next_sample if first_sample is None else _check_index("first_sample", first_sample)
        # the default memory layout (the engine may run large convolutions channels-last: same values to round-off)
        x = x.to(self.program.device, torch.float32) if x.is_floating_point() else x.to(self.program.device)
        B = int(x.shape[0])
        self._load(B)
        self.program.set_batch(B, self._batch, first)
        out = self.network(x)
        self.next_sample, self._batch = first + B, self._batch + 1
        return out


def _check_index(field: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= int(value) <= INDEX_MAX:
        raise ConfigError(field, value, f"an integer in [0, {INDEX_MAX}]")
    return int(value)


def chip(model: nn.Module, spec: HardwareSpec, *, index: int, seed: SeedLike = 0, calibration_data=None,
         layers: LayerFilter = None, digital: Sequence[str] = (), device: torch.device | str | None = None,
         sampler: str = "auto") -> Chip:
    """Instance ``index`` of ``model`` on chips of ``spec`` as an ordinary ``nn.Module``.

    Parameters
    ----------
    model : nn.Module
        Trained network (deep-copied, never modified).
    spec : HardwareSpec
    index : int
        The instance: the same chip as instance ``index`` of :func:`anvm_stats.evaluate` with this ``seed``.
    seed : int, SeedSequence or None
        As in :func:`anvm_stats.sweep` (default 0).
    calibration_data : (x, y) tensors, Data, or batches, optional
        Data the DAC/ADC ranges are calibrated on (required when ``spec`` has converters or output noise): give
        the data :func:`anvm_stats.evaluate` was calibrated on (its default: the evaluation data) to get its chip.
    layers, digital, device
        As for :func:`anvm_stats.analog.prepare`.
    sampler : {"auto", "counter", "generator"}
        As ``RunOptions.sampler``.

    Returns
    -------
    Chip
        ``chip(x)`` gives the outputs of this chip; see the module notes for how read noise is keyed
        (:attr:`Chip.next_sample`, :meth:`Chip.reset`).

    Raises
    ------
    ConfigError
        For ``index`` not an integer in ``[0, 2**63 - 1]``, ``spec`` not a HardwareSpec, an unknown ``sampler``,
        and what :func:`anvm_stats.analog.prepare` refuses.
    """
    index = _check_index("index", index)
    if not isinstance(spec, HardwareSpec):
        raise ConfigError("spec", type(spec).__name__, "an anvm_stats.HardwareSpec")
    if sampler not in SAMPLERS:
        raise ConfigError("sampler", sampler, f"one of {sorted(SAMPLERS)}")
    program = prepare(model, spec, calibration_data=calibration_data, layers=layers, digital=digital, device=device)
    return Chip(program, ChipSampler(program, seed, counter=SAMPLERS[sampler]), index)
