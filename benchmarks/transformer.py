"""Transformer benchmark: the K-chip engine against the simple per-chip loop on a small encoder classifier.

Job: token ids -> a digital embedding (+ learned positions) -> ``nn.TransformerEncoderLayer`` x ``depth``
(``batch_first``; analog q/k/v and output projections and MLP, digital softmax, LayerNorm and residuals) -> mean
pool -> an analog linear head. Chips: ``paper1(0.05)`` (``W~ = [W, b/s]`` plus half-range * sigma * N). The simple
loop is what a user would write: one model copy; per chip, copy nominal + noise into its weights and evaluate the
float model (torch's own fused transformer kernels included), on the same per-instance draws as the engine (so the
chips are the same: their accuracies agree up to round-off). The ratio is measured inside one run (never a
wall-clock assert).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from anvm_stats.analog.program import AnalogProgram, prepare
from anvm_stats.devices.presets import paper1
from anvm_stats.montecarlo import RunOptions, sweep
from anvm_stats.rng import root_sequence

from .common import best_time
from .engine import instance_normals

SIGMA = 0.05
Tensor = torch.Tensor


class EncoderClassifier(nn.Module):
    """Token ids ``[B, L]`` -> class scores ``[B, classes]``."""

    def __init__(self, vocab: int = 64, d: int = 64, heads: int = 4, depth: int = 2, length: int = 16,
                 classes: int = 10):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.1 * torch.randn(length, d))
        layer = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, batch_first=True)
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(depth)])
        self.head = nn.Linear(d, classes)

    def forward(self, ids):
        h = self.emb(ids) + self.pos
        for layer in self.layers:
            h = layer(h)
        return self.head(h.mean(1))


def _job(seed: int, n_samples: int, device: torch.device, **kw):
    torch.manual_seed(seed)
    net = EncoderClassifier(**kw).to(device).eval()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, net.emb.num_embeddings, (n_samples, net.pos.shape[0]), generator=g).to(device)
    with torch.no_grad():
        y = net(ids).argmax(1)
    return net, ids, y


def analog_matrices(model: nn.Module, program: AnalogProgram) -> list[tuple[Tensor, Tensor | None]]:
    """``(weight, bias)`` parameters of ``model`` behind every plan of ``program``, in the plans' (draw) order."""
    out = []
    for plan in program.plans:
        owner, _, part = plan.name.rpartition(".")
        if part == "in_proj":
            m = model.get_submodule(owner)
            out.append((m.in_proj_weight, m.in_proj_bias))
        else:
            m = model.get_submodule(plan.name)
            out.append((m.weight, m.bias))
    return out


@torch.no_grad()
def transformer_simple_loop(net: nn.Module, program: AnalogProgram, x, y, sigma: float, n_instances: int,
                            seed: int) -> np.ndarray:
    """Per chip: ``[W, b/s] + half-range * sigma * z`` copied into every analog matrix of one model copy (``z`` the
    engine's draws of that chip: weights, then the bias column, layer after layer), then the float model on all
    samples; top-1 accuracy per chip."""
    work = copy.deepcopy(net).eval()
    nominal = []
    for (w, b), plan in zip(analog_matrices(net, program), program.plans):
        s = plan.bias_scale                      # b/s: s = half-range(b) / half-range(W), or max|b| / max|W|
        w_aug = torch.cat([w.detach(), (b.detach() / s)[:, None]], 1)
        nominal.append((w_aug, float(w_aug.max() - w_aug.min()) / 2, s))
    n_dev = sum(w.numel() for w, _, _ in nominal)
    root = root_sequence(seed)
    acc = []
    for i in range(n_instances):
        z = instance_normals(root, [i], n_dev, x.device)[0]
        off = 0
        for (w, b), (w_aug, rng, s) in zip(analog_matrices(work, program), nominal):
            o, i_ = w.shape
            w.copy_(w_aug[:, :-1] + rng * sigma * z[off:off + o * i_].view(o, i_))
            b.copy_((w_aug[:, -1] + rng * sigma * z[off + o * i_:off + o * (i_ + 1)]) * s)
            off += o * (i_ + 1)
        acc.append(float((work(x).argmax(1) == y).float().mean()))
    return np.asarray(acc)


def bench_transformer(device: str = "cpu", *, n_instances: int = 64, n_samples: int = 64, depth: int = 2,
                      repeats: int = 3, seed: int = 0) -> dict:
    """The engine (K chips per forward) vs :func:`transformer_simple_loop`, seconds per chip."""
    dev = torch.device(device)
    net, x, y = _job(seed, n_samples, dev, depth=depth)
    spec = paper1(SIGMA)
    program = prepare(net, spec, digital=[""])
    run_engine = lambda n: sweep(net, spec, (x, y), n_instances=n, seed=seed, progress=False,  # noqa: E731
                                 program=program, options=RunOptions(samples_per_batch=n_samples))
    run_loop = lambda n: transformer_simple_loop(net, program, x, y, SIGMA, n, seed)  # noqa: E731
    run_engine(2), run_loop(2)                    # warm both before timing
    engine_s = best_time(lambda: run_engine(n_instances), dev, repeats)
    loop_s = best_time(lambda: run_loop(n_instances), dev, repeats)
    eng = run_engine(n_instances).accuracy.values
    loop = run_loop(n_instances)
    return {"job": f"transformer classifier ({depth} encoder layers, d=64, 4 heads, 16 tokens, 10 classes), "
                   f"{n_samples} samples, {n_instances} chips, paper1({SIGMA})",
            "device": str(dev), "analog_layers": len(program.plans),
            "engine_s_per_chip": engine_s / n_instances, "simple_loop_s_per_chip": loop_s / n_instances,
            "engine_vs_simple_loop": loop_s / engine_s,
            "max_accuracy_difference_vs_simple_loop": float(np.abs(eng - loop).max())}
