"""Per-layer Hutchinson traces of the Hessian, with standard errors and sequential stopping.

One Hessian-vector product per probe serves every layer: a Rademacher probe ``z`` over all variables gives,
for each parameter tensor ``p``, the quadratic form ``q_p = z_p . (H z)_p``, whose expectation is
``tr(H_pp)`` because the cross terms ``z_i z_j`` (``i != j``) have zero mean. A layer's estimate is the mean of
``sum_{p in layer} q_p`` over probes; its standard error is the sample sd / sqrt(n_probes).

With ``scale`` (e.g. ``sqrt`` of a per-element perturbation variance) the probe is ``s * z`` and the quadratic
forms estimate ``sum_i s_i^2 H_ii`` instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from ..dims import LAYER
from ..errors import ConfigError, check_number
from .hvp import HessianOperator

Tensor = torch.Tensor


@dataclass(frozen=True)
class TraceEstimate:
    """Result of :func:`hutchinson_trace`.

    Attributes
    ----------
    layers : dict[str, list[str]]
        Layer -> parameter names.
    samples : dict[str, np.ndarray]
        Parameter name -> per-probe quadratic forms ``q_p``, shape ``(n_probes,)``.
    diagonal : dict[str, Tensor] or None
        Parameter name -> Hutchinson estimate of ``diag(S H S)`` (``S = diag(scale)``; the Hessian diagonal when
        unscaled), mean of ``v * (H v)`` over probes, of the parameter's shape.
    n_params : dict[str, int]
        Layer -> number of elements.
    """

    layers: dict[str, list[str]]
    samples: dict[str, np.ndarray]
    diagonal: dict[str, Tensor] | None
    n_params: dict[str, int]

    @property
    def n_probes(self) -> int:
        """Number of probes used (the same for every layer)."""
        return len(next(iter(self.samples.values())))

    def layer_samples(self, weights: Mapping[str, float] | None = None) -> dict[str, np.ndarray]:
        """Layer -> per-probe values ``sum_p w_p q_p`` (weights default 1), shape ``(n_probes,)``."""
        w = weights or {}
        return {layer: sum(float(w.get(p, 1.0)) * self.samples[p] for p in names)
                for layer, names in self.layers.items()}

    @property
    def trace(self) -> dict[str, float]:
        """Layer -> trace estimate."""
        return {k: float(np.mean(v)) for k, v in self.layer_samples().items()}

    @property
    def se(self) -> dict[str, float]:
        """Layer -> standard error of the trace estimate (sample sd / sqrt(n_probes))."""
        return {k: standard_error(v) for k, v in self.layer_samples().items()}

    def to_dataset(self) -> xr.Dataset:
        """Dataset with dim ``layer``: ``trace``, ``trace_se``, ``n_probes``, ``n_params``."""
        names = list(self.layers)
        tr, se = self.trace, self.se
        return xr.Dataset(
            {"trace": (LAYER, [tr[k] for k in names]), "trace_se": (LAYER, [se[k] for k in names]),
             "n_probes": (LAYER, [self.n_probes] * len(names)),
             "n_params": (LAYER, [self.n_params[k] for k in names])},
            coords={LAYER: names})


def standard_error(values: np.ndarray) -> float:
    """Sample sd (ddof=1) / sqrt(n); NaN for fewer than 2 values."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return float("nan")
    return float(np.std(values, ddof=1) / np.sqrt(values.size))


def as_generator(seed) -> torch.Generator:
    """A CPU ``torch.Generator`` from an int seed (or the generator itself)."""
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError("seed", seed, "a non-negative int or a torch.Generator")
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def rademacher(shape, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    """Entries +-1 with probability 1/2 each, drawn on the CPU from ``generator``."""
    return torch.randint(0, 2, tuple(shape), generator=generator).to(dtype).mul_(2).sub_(1)


def _scales(op: HessianOperator, scale) -> dict[str, Tensor | float]:
    out: dict[str, Tensor | float] = {}
    scale = scale or {}
    extra = set(scale) - set(op.names)
    if extra:
        raise ConfigError("scale", sorted(extra), f"parameter names among {op.names}")
    for n in op.names:
        s = scale.get(n, 1.0)
        if isinstance(s, Tensor) and s.numel() > 1:
            s = s.detach().to(op.device, op.dtype).expand(op.shapes[n])
            if not bool(torch.all(torch.isfinite(s) & (s >= 0))):
                raise ConfigError(f"scale[{n!r}]", "a tensor with negative or non-finite entries",
                                  "finite non-negative entries")
        else:
            s = float(s)
            check_number(f"scale[{n!r}]", s, low=0.0)
        out[n] = s
    return out


def _converged(layer_values: dict[str, list[float]], rel_tol: float, abs_tol: float) -> bool:
    for vals in layer_values.values():
        se = standard_error(np.asarray(vals))
        if not (se <= abs_tol or se <= rel_tol * abs(float(np.mean(vals)))):
            return False
    return True


def hutchinson_trace(op: HessianOperator, *, seed, rel_tol: float = 0.05, abs_tol: float = 0.0,
                     min_probes: int = 10, max_probes: int = 200, diagonal: bool = False,
                     scale: Mapping[str, Tensor | float] | None = None, probes_per_pass: int = 8,
                     ) -> TraceEstimate:
    """Per-layer Hutchinson estimates of ``tr(H_ll)`` (or of ``sum_{i in l} s_i^2 H_ii`` with ``scale``).

    Parameters
    ----------
    op : HessianOperator
        Supplies ``H v`` and the layer grouping.
    seed : int or torch.Generator
        Probes are drawn on the CPU from this generator, one probe (all parameters, in ``op.names`` order) after
        the other, so the probe sequence does not depend on the device or on ``probes_per_pass``.
    rel_tol, abs_tol : float
        Stop once every layer has ``se <= rel_tol * |estimate|`` or ``se <= abs_tol`` (checked after each pass
        from ``min_probes`` on), or at ``max_probes``.
    min_probes, max_probes : int
        ``2 <= min_probes <= max_probes``.
    diagonal : bool
        Also estimate the Hessian diagonal (mean of ``v * H v``).
    scale : mapping param name -> float or tensor, optional
        Non-negative per-element probe scale ``s`` (missing: 1).
    probes_per_pass : int
        Probes pushed through the data together (vmapped HVPs); memory grows with it.

    Returns
    -------
    TraceEstimate
    """
    check_number("rel_tol", rel_tol, low=0.0)
    check_number("abs_tol", abs_tol, low=0.0)
    check_number("min_probes", min_probes, low=2, integer=True)
    check_number("max_probes", max_probes, low=min_probes, integer=True)
    check_number("probes_per_pass", probes_per_pass, low=1, integer=True)
    gen = as_generator(seed)
    scales = _scales(op, scale)
    samples: dict[str, list[float]] = {n: [] for n in op.names}
    layer_values: dict[str, list[float]] = {k: [] for k in op.layers}
    diag = op.zeros() if diagonal else None
    done = 0
    while done < max_probes:
        k = min(int(probes_per_pass), int(max_probes) - done)
        draws = [{n: rademacher(op.shapes[n], gen, op.dtype) for n in op.names} for _ in range(k)]
        v = {n: torch.stack([d[n] for d in draws]).to(op.device) * scales[n] for n in op.names}
        hv = op.hvp_batch(v)
        for n in op.names:
            prod = v[n] * hv[n]                                    # (k, *shape)
            samples[n].extend(prod.reshape(k, -1).sum(1).tolist())
            if diag is not None:
                diag[n].add_(prod.sum(0))
        for layer, names in op.layers.items():
            layer_values[layer].extend(sum(samples[n][-i] for n in names) for i in range(k, 0, -1))
        done += k
        if done >= min_probes and _converged(layer_values, rel_tol, abs_tol):
            break
    return TraceEstimate(
        layers={k: list(v) for k, v in op.layers.items()},
        samples={p: np.asarray(s, dtype=float) for p, s in samples.items()},
        diagonal=None if diag is None else {p: t / done for p, t in diag.items()},
        n_params={k: op.numel(k) for k in op.layers})


def exact_diagonal(op: HessianOperator, chunk: int = 64) -> dict[str, Tensor]:
    """The exact Hessian diagonal from HVPs of the basis vectors, ``chunk`` per pass (small problems, checks)."""
    out = {}
    for n in op.names:
        m = op.shapes[n].numel()
        vals = []
        for start in range(0, m, chunk):
            idx = torch.arange(start, min(start + chunk, m), device=op.device)
            eye = torch.zeros(len(idx), m, device=op.device, dtype=op.dtype)
            eye[torch.arange(len(idx)), idx] = 1.0
            hv = op.hvp_batch({n: eye.reshape(len(idx), *op.shapes[n])})[n].reshape(len(idx), m)
            vals.append(hv[torch.arange(len(idx)), idx])
        out[n] = torch.cat(vals).reshape(op.shapes[n])
    return out
