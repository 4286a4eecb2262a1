"""Transformer benchmark: the K-chip engine against the simple per-chip loop on a small encoder classifier.

Job: token ids -> a digital embedding (+ learned positions) -> ``nn.TransformerEncoderLayer`` x ``depth``
(``batch_first``; analog q/k/v and output projections and MLP, digital softmax, LayerNorm and residuals) -> mean
pool -> an analog linear head. Chips: unclipped programming noise on every analog weight. The simple loop is what
a user would write: one model copy; per chip, copy nominal + noise into its weights and evaluate the float model
(torch's own fused transformer kernels included). Both draw their noise from per-instance streams; the ratio is
measured inside one run (never a wall-clock assert).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from anvm_stats.analog.program import prepare
from anvm_stats.hardware.effects import ProgrammingNoise
from anvm_stats.hardware.spec import HardwareSpec
from anvm_stats.montecarlo import RunOptions, sweep
from anvm_stats.rng import Stream, instance_generators, root_sequence

from .common import best_time

SIGMA = 0.05


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


@torch.no_grad()
def transformer_simple_loop(net: nn.Module, x, y, sigma: float, n_instances: int, seed: int) -> np.ndarray:
    """Per chip: nominal + half-range * sigma * N copied into every analog weight of one model copy, then the float
    model on all samples; top-1 accuracy per chip."""
    work = copy.deepcopy(net).eval()
    names = [n for n, p in work.named_parameters()
             if p.dim() == 2 and not n.startswith(("emb.", "pos"))]      # the engine's analog matrices
    params = [(p, p.detach().clone(), float(p.max() - p.min()) / 2)
              for n, p in work.named_parameters() if n in names]
    acc = []
    for gen in instance_generators(root_sequence(seed), range(n_instances), Stream.PROGRAM, x.device):
        for p, p0, rng in params:
            p.copy_(p0 + rng * sigma * torch.randn(p0.shape, generator=gen, device=x.device))
        acc.append(float((work(x).argmax(1) == y).float().mean()))
    return np.asarray(acc)


def bench_transformer(device: str = "cpu", *, n_instances: int = 64, n_samples: int = 256, depth: int = 2,
                      repeats: int = 2, seed: int = 0) -> dict:
    """The engine (K chips per forward) vs :func:`transformer_simple_loop`, seconds per chip."""
    dev = torch.device(device)
    net, x, y = _job(seed, n_samples, dev, depth=depth)
    spec = HardwareSpec(effects=(ProgrammingNoise(sigma=SIGMA, relative_to="half_range", clip=False),))
    program = prepare(net, spec, digital=[""])
    run_engine = lambda n: sweep(net, spec, (x, y), n_instances=n, seed=seed, progress=False,  # noqa: E731
                                 program=program, options=RunOptions(samples_per_batch=n_samples))
    run_loop = lambda n: transformer_simple_loop(net, x, y, SIGMA, n, seed)  # noqa: E731
    run_engine(2), run_loop(2)                    # warm both before timing
    engine_s = best_time(lambda: run_engine(n_instances), dev, repeats)
    loop_s = best_time(lambda: run_loop(n_instances), dev, repeats)
    eng = run_engine(n_instances).accuracy.values
    loop = run_loop(n_instances)
    return {"job": f"transformer classifier ({depth} encoder layers, d=64, 4 heads, 16 tokens, 10 classes), "
                   f"{n_samples} samples, {n_instances} chips, ProgrammingNoise({SIGMA})",
            "device": str(dev), "analog_layers": len(program.plans),
            "engine_s_per_chip": engine_s / n_instances, "simple_loop_s_per_chip": loop_s / n_instances,
            "engine_vs_simple_loop": loop_s / engine_s,
            "mean_accuracy_engine": float(eng.mean()), "mean_accuracy_simple_loop": float(loop.mean())}
