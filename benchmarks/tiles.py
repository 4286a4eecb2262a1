"""Tiles and per-MVM read noise: the cost of chips as they are built, as ratios measured inside one run.

* ``tiled_vs_untiled``: 32-row tiles (32 columns) with a 6-bit ADC per tile against the untiled engine with one
  6-bit ADC per layer, same programming noise, on the digits MLP (64-256-256-10) and LeNet-5 (8x8 digits).
* ``per_mvm_read_noise_vs_per_batch``: ``ReadNoise`` drawn per MVM (output domain, keyed by sample index) against
  the same noise drawn once per forward pass in the weight domain (the engine's cost before per-MVM noise: a read
  effect without ``read_sd``).
* ``first_order_ir_drop_vs_ideal_wires``: the tiled chip with first-order IR drop (``Parasitics(r_wire=1e-4)``: every
  crossbar's effective conductance, then the per-array products) against the same tiled chip with ideal wires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from anvm_stats.hardware.effects import ProgrammingNoise, ReadNoise
from anvm_stats.hardware.parasitics import Parasitics
from anvm_stats.hardware.periphery import Periphery, Quantizer
from anvm_stats.hardware.spec import HardwareSpec
from anvm_stats.hardware.tile import Tile
from anvm_stats.models import build_model
from anvm_stats.montecarlo import RunOptions, evaluate

from .common import best_time, digits_mlp


@dataclass(frozen=True, kw_only=True)
class PerForwardReadNoise(ReadNoise):
    """ReadNoise drawn once per forward pass on every device (no ``read_sd``: the weight-domain path)."""

    kind: ClassVar[str] = "per_forward_read_noise"
    read_sd: ClassVar[None] = None


def _jobs(device: torch.device):
    net, x, y = digits_mlp(device)
    lenet = build_model("lenet5", seed=0, in_channels=1, n_classes=10, input_size=8).to(device).eval()
    return {"mlp": (net, x, y), "lenet5": (lenet, x.view(-1, 1, 8, 8), y)}


def bench_tiles(device: str = "cpu", n_instances: int = 64, repeats: int = 2) -> dict:
    """Seconds per evaluation of ``n_instances`` chips on the 360 test digits for each case, and their ratios."""
    dev = torch.device(device)
    noise = ProgrammingNoise(sigma=0.05)
    adc = Periphery(adc=Quantizer(bits=6))
    specs = {
        "untiled_adc6": HardwareSpec(effects=(noise,), periphery=adc),
        "tiled32_adc6": HardwareSpec(effects=(noise,), periphery=adc, tile=Tile(rows=32, cols=32)),
        "tiled32_adc6_ir_drop": HardwareSpec(effects=(noise,), periphery=adc, tile=Tile(rows=32, cols=32),
                                             parasitics=Parasitics(r_wire=1e-4, mode="first_order")),
        "read_noise_per_mvm": HardwareSpec(effects=(noise, ReadNoise(sigma=0.02))),
        "read_noise_per_batch": HardwareSpec(effects=(noise, PerForwardReadNoise(sigma=0.02))),
    }
    out: dict = {"device": str(dev), "n_instances": n_instances, "n_samples": 360, "seconds": {}, "ratios": {}}
    opts = RunOptions()
    for name, (net, x, y) in _jobs(dev).items():
        secs = {}
        for case, spec in specs.items():
            def run(net=net, spec=spec, x=x, y=y):
                return evaluate(net, spec, (x, y), n_instances=n_instances, seed=0, device=dev, options=opts,
                                progress=False)
            run()                               # warm up (calibration, caches, thread pools)
            secs[case] = best_time(run, dev, repeats)
        out["seconds"][name] = secs
        out["ratios"][name] = {
            "tiled_vs_untiled": secs["tiled32_adc6"] / secs["untiled_adc6"],
            "per_mvm_read_noise_vs_per_batch": secs["read_noise_per_mvm"] / secs["read_noise_per_batch"],
            "first_order_ir_drop_vs_ideal_wires": secs["tiled32_adc6_ir_drop"] / secs["tiled32_adc6"],
        }
    return out
