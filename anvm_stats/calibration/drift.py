"""Accuracy over time under conductance drift, with optional global drift compensation.

Drift ``G(t) = G(t0) (t/t0)^(-nu)`` with per-device exponents ``nu`` is swept over ``t_inference`` (seconds after
programming) with :func:`anvm_stats.sweep`: every time point uses the same chips (common random numbers), so
differences between times are paired per chip. Every drift effect is accepted: a program-phase effect with a
reference time ``t0`` and the ``t_inference`` knob (:class:`DriftEffect`: :class:`anvm_stats.hardware.Drift`,
:class:`anvm_stats.devices.PCMDrift` with either exponent law, or a user's effect of that shape).

Global drift compensation (as aihwkit's ``GlobalDriftCompensation``): at the reference time ``t_ref`` (the
smallest ``t0`` of the spec's drift effects; aihwkit reads its baseline at its ``t0 = 20 s``) and again at
inference time ``t``, every analog layer of every chip is read once on a fixed reference input (all ones, and
``s`` on the bias column of ``W~ = [W, b/s]``); the layer's output is then multiplied digitally by

    alpha_l(t) = mean_o |y_l(t_ref)| / mean_o |y_l(t)|          (compensation_gains)

measured per chip and per layer, so it follows whatever exponent law the devices have. A uniform drift (one
``nu`` for all devices) scales a proportional (differential) mapping's weights by ``(t/t0)^(-nu)`` and is
cancelled exactly; random or state-dependent exponents leave a residual that the sweep measures. Times before
``t_ref`` are allowed where the drift effects allow them (:class:`~anvm_stats.devices.PCMDrift`: no drift before
its ``t0``, so the gain there is exactly 1). A digital bias (``HardwareSpec(bias="digital")``) does not drift and
is not rescaled. The reference read uses ideal periphery and no read-phase noise.
"""

from __future__ import annotations

import contextlib
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import xarray as xr
from torch import nn

from .. import dims
from ..analog.program import AnalogProgram, prepare
from ..data_source import describe
from ..errors import ConfigError
from ..hardware.spec import HardwareSpec
from ..batches import evaluation_batches
from ..montecarlo import RunOptions, run_points, sweep
from ..provenance import provenance
from ..rng import SeedLike, seed_entropy
from ..checks import check_model_data, flag_nonfinite
from ..sampler import ChipSampler, instance_indices

Tensor = torch.Tensor
#: 1 s to 10 years (3.15e8 s), 10 points log-spaced
DEFAULT_TIMES = np.logspace(0, np.log10(3.15e8), 10)
COMPENSATIONS = (None, "global")


@runtime_checkable
class DriftEffect(Protocol):
    """What makes an effect a drift effect: a program-phase effect with a reference time ``t0`` (s after
    programming) and the sweep knob ``t_inference`` (``with_knob("t_inference", t)``)."""

    phase: str
    t0: float
    t_inference: float

    def with_knob(self, name: str, value): ...


def drift_effects(spec: HardwareSpec) -> tuple:
    """The drift effects of ``spec`` (program-phase :class:`DriftEffect` instances), in order.

    Raises
    ------
    ConfigError
        If ``spec`` has none.
    """
    found = tuple(e for e in spec.effects if isinstance(e, DriftEffect) and e.phase == "program")
    if not found:
        raise ConfigError("spec.effects", [e.kind for e in spec.effects],
                          "a spec holding a drift effect (a program-phase effect with t0 and the t_inference knob, "
                          "e.g. anvm_stats.hardware.Drift or anvm_stats.devices.PCMDrift)")
    return found


def reference_time(spec: HardwareSpec) -> float:
    """Time of the global compensation's reference read: the smallest ``t0`` of the spec's drift effects (s)."""
    return min(float(e.t0) for e in drift_effects(spec))


@torch.no_grad()
def reference_read(program: AnalogProgram, g: Tensor) -> Tensor:
    """Mean absolute output of every analog layer on the all-ones reference input, ``[K, L]``.

    ``g`` ``[K, P]``: conductances; the read uses ideal periphery (the decoded weights ``W~``, the bias column
    read with its input ``s``)."""
    cols = []
    for p, w in zip(program.plans, program.weights(g).values()):
        y = w[..., :p.in_features].sum(-1)
        if p.bias_mode == "column":
            y = y + w[..., p.in_features] * p.bias_scale
        cols.append(y.abs().mean(-1))
    return torch.stack(cols, dim=-1)


def compensation_gains(r_ref: Tensor, r_t: Tensor) -> Tensor:
    """Global drift compensation gains ``alpha = r_ref / r_t`` ``[K, L]`` from two :func:`reference_read`
    results (at the reference time and at ``t``); 1 where the read at ``t`` is 0 (nothing left to rescale)."""
    return torch.where(r_t > 0, r_ref / r_t, torch.ones_like(r_t))


class GlobalCompensation:
    """Forward hooks multiplying each analog layer's output by a per-chip gain ``alpha`` ``[K, L]`` (set before
    each evaluation); forwards of another number of instances pass unchanged. Use as a context manager."""

    def __init__(self, program: AnalogProgram):
        self.program = program
        self.alpha: Tensor | None = None
        self._hooks = contextlib.ExitStack()       # removes every hook on close
        for j, m in enumerate(program.analog_modules()):
            self._hooks.callback(m.register_forward_hook(self._hook(j, m)).remove)

    def _hook(self, j: int, module):
        def hook(mod, inputs, y):
            rt = mod.runtime
            if self.alpha is None or rt is None or rt.K != self.alpha.shape[0]:
                return None
            K = rt.K
            shape = (K, 1) + (1,) * (y.dim() - 1)
            a = self.alpha[:, j].to(y.dtype).view(shape)
            yk = y.view(K, -1, *y.shape[1:])
            db = module.plan.digital_bias
            analog = yk if db is None else yk - db.view(-1, *([1] * (y.dim() - 2)))
            # y + (alpha - 1) * analog: exactly y where alpha == 1
            return (yk + (a - 1.0) * analog).reshape(y.shape)
        return hook

    def close(self) -> None:
        """Remove the hooks (the program runs as before)."""
        self._hooks.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _compensated(program: AnalogProgram, spec: HardwareSpec, data, times: np.ndarray, idx: np.ndarray,
                 seed: SeedLike, opts: RunOptions) -> tuple[dict, np.ndarray, ChipSampler, int, int]:
    """Metrics ``[T, n]`` and gains ``[T, n, L]`` of the globally compensated chips."""
    batches = evaluation_batches(program, data, opts.samples_per_batch)
    n_samples, n_classes = batches.n_samples, batches.n_classes
    sampler = ChipSampler(program, seed)
    specs = [spec.with_knobs(t_inference=float(t)) for t in times]
    ref_spec = spec.with_knobs(t_inference=reference_time(spec))
    chunk = opts.instances_per_chunk or 64
    out = {k: np.zeros((len(times), len(idx))) for k in ("correct", "loss", "top5")}
    gains = np.zeros((len(times), len(idx), len(program.plans)))
    with GlobalCompensation(program) as comp:
        for start in range(0, len(idx), chunk):
            ids = idx[start:start + chunk]
            K = len(ids)
            draws = sampler.draw(ids, spec)
            r0 = reference_read(program, sampler.program_chips(draws, ref_spec, K=K))
            run = RunOptions(instances_per_chunk=K, samples_per_batch=opts.samples_per_batch,
                             memory_budget=opts.memory_budget)
            for p, s in enumerate(specs):
                rt = reference_read(program, sampler.program_chips(draws, s, K=K))
                comp.alpha = compensation_gains(r0, rt)
                res = run_points(program, sampler, [s], ids, batches, run)
                for k in out:
                    out[k][p, start:start + K] = res[k][0]
                gains[p, start:start + K] = comp.alpha.cpu().numpy()
            comp.alpha = None
    return out, gains, sampler, n_samples, n_classes


def drift_sweep(model: nn.Module, spec: HardwareSpec, data, *, times: Sequence[float] = DEFAULT_TIMES,
                n_instances: int | None = 256, seed: SeedLike = 0, compensation: str | None = None,
                instances: Sequence[int] | None = None, calibration_data=None, layers=None,
                digital: Sequence[str] = (), device=None, options: RunOptions | None = None,
                progress: bool = True) -> xr.Dataset:
    """Accuracy of ``n_instances`` chips at every time in ``times`` (seconds after programming).

    Parameters
    ----------
    model, data, n_instances, seed, instances, calibration_data, layers, digital, device
        As in :func:`anvm_stats.sweep`.
    spec : HardwareSpec
        Must hold a drift effect (:class:`DriftEffect`); the smallest ``t0`` of its drift effects is the
        reference read time (:func:`reference_time`).
    times : sequence of float > 0
        Inference times, seconds after programming (default 1 s .. 10 years, 10 log-spaced points); each drift
        effect sets its own lower limit (``Drift``: ``t0``; ``PCMDrift``: none, no drift before ``t0``).
    compensation : {None, "global"}
        ``"global"``: per-chip, per-layer digital gain from a reference read (see module docstring).
    options : RunOptions, optional
        As in :func:`anvm_stats.sweep` (instances per chunk, samples per batch, memory budget).
    progress : bool
        Show a progress bar.

    Returns
    -------
    xr.Dataset
        Dims ``(t_inference, instance)``, variables as :func:`anvm_stats.sweep`; with compensation also
        ``compensation_gain`` ``(t_inference, instance, layer)``; attr ``drift_compensation``.

    Raises
    ------
    ConfigError
        No drift effect in ``spec``, unknown ``compensation``, a time a drift effect refuses.
    """
    drift_effects(spec)
    if compensation not in COMPENSATIONS:
        raise ConfigError("compensation", compensation, f"one of {COMPENSATIONS}")
    times = np.atleast_1d(np.asarray(times, dtype=float))
    if compensation is None:
        ds = sweep(model, spec, data, grid={dims.T_INFERENCE: times}, n_instances=n_instances, seed=seed,
                   instances=instances, calibration_data=calibration_data, layers=layers, digital=digital,
                   device=device, options=options, progress=progress)
        ds.attrs["drift_compensation"] = "none"
        return ds
    opts = RunOptions() if options is None else options
    if not isinstance(opts, RunOptions):
        raise ConfigError("options", type(opts).__name__, "a RunOptions")
    idx = instance_indices(n_instances, instances, points=max(times.size, 1))
    check_model_data(model, data)
    if times.ndim != 1 or times.size == 0 or len(np.unique(times)) != times.size:
        raise ConfigError(f"grid.{dims.T_INFERENCE}", times, "a non-empty list of distinct values")
    program = prepare(model, spec, calibration_data=calibration_data if calibration_data is not None else data,
                      layers=layers, digital=digital, device=device)
    out, gains, sampler, n_samples, n_classes = _compensated(program, spec, data, times, idx, seed, opts)
    T, I = dims.T_INFERENCE, dims.INSTANCE
    data_vars = {dims.ACCURACY: ((T, I), out["correct"] / n_samples), dims.LOSS: ((T, I), out["loss"] / n_samples),
                 dims.CORRECT_COUNT: ((T, I), out["correct"].astype(np.int64)),
                 "compensation_gain": ((T, I, dims.LAYER), gains)}
    if n_classes > 5:
        data_vars[dims.TOP5_ACCURACY] = ((T, I), out["top5"] / n_samples)
    ds = xr.Dataset(data_vars, coords={T: times, I: idx, dims.LAYER: program.layer_names})
    ds.attrs.update(provenance(model=model, spec=spec, dataset=describe(data), seed_entropy=seed_entropy(sampler.root),
                               device=program.device))
    ds.attrs.update(n_samples=n_samples, n_classes=n_classes, analog_layers=",".join(program.layer_names),
                    drift_compensation="global")
    ds[dims.ACCURACY].attrs.update(long_name="top-1 accuracy", units="1")
    ds["compensation_gain"].attrs.update(long_name="global drift compensation gain mean|y(t0)|/mean|y(t)|")
    flag_nonfinite(ds, what="drift_sweep")
    return ds


def plot_drift(results, var: str = dims.ACCURACY, *, band: tuple[float, float] = (0.05, 0.95), ci: float = 0.95,
               ax=None):
    """Plot ``var`` against ``t_inference`` (log axis): mean over chips with its ``ci`` interval (dark band) and
    the ``band`` quantiles of the chips (light band).

    Parameters
    ----------
    results : xr.Dataset or dict of label -> xr.Dataset
        Output(s) of :func:`drift_sweep`.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure   # no pyplot: no global backend state (renders with Agg)
    from scipy import stats

    if isinstance(results, xr.Dataset):
        results = {results.attrs.get("drift_compensation", var): results}
    if ax is None:
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
    else:
        fig = ax.figure
    for label, ds in results.items():
        da = ds[var].transpose(dims.T_INFERENCE, dims.INSTANCE)
        t, v = da[dims.T_INFERENCE].values, da.values
        n = v.shape[1]
        m = v.mean(1)
        half = stats.t.ppf(0.5 + ci / 2, max(n - 1, 1)) * v.std(1, ddof=1) / np.sqrt(n) if n > 1 else 0 * m
        line, = ax.plot(t, m, marker="o", label=f"{label} (mean, {n} chips)")
        ax.fill_between(t, np.quantile(v, band[0], axis=1), np.quantile(v, band[1], axis=1),
                        color=line.get_color(), alpha=0.15, lw=0)
        ax.fill_between(t, m - half, m + half, color=line.get_color(), alpha=0.35, lw=0)
    ax.set_xscale("log")
    ax.set_xlabel("time after programming t (s)")
    ax.set_ylabel(var)
    ax.legend(title=f"bands: {ci:.0%} CI of mean, {band[0]:.0%}-{band[1]:.0%} of chips")
    return fig
