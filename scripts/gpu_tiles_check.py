"""Device check of tiles and per-MVM noise on a lent GPU: CUDA agrees with CPU on the same chips (counter sampler;
per-MVM noise is drawn by NumPy on the host on both), and the tiles benchmark on CUDA.

Usage (from the repository root, on the GPU machine)::

    PYTHONPATH=. python3 scripts/gpu_tiles_check.py OUT_DIR [N_BENCH]     # -> OUT_DIR/gpu_tiles.json
"""
import json
import sys
import time

import numpy as np
import torch
from torch import nn

import anvm_stats as av
from benchmarks.tiles import bench_tiles

DEV = "cuda" if torch.cuda.is_available() else "cpu"       # "cpu": a dry run of the script
N_BENCH = int(sys.argv[2]) if len(sys.argv) > 2 else 256     # chips per benchmark case
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2), nn.ReLU(),
                    nn.Flatten(), nn.Linear(8 * 3 * 3, 10)).eval()
x, y = torch.randn(200, 1, 8, 8), torch.randint(0, 10, (200,))
specs = {
    "tiled_adc": av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.05),), tile=av.Tile(rows=16, cols=4),
                                 periphery=av.Periphery(adc=av.Quantizer(bits=6))),
    "read_mvm": av.HardwareSpec(effects=(av.ProgrammingNoise(sigma=0.05),
                                         av.ReadNoise(sigma=0.03, relative_to="state"))),
    "tiled_all": av.HardwareSpec(mapping=av.BitSlicedMapping(), effects=(av.ReadNoise(sigma=0.02),),
                                 tile=av.Tile(rows=16, cols=4, scale="tile", adc_ranges="column"),
                                 periphery=av.Periphery(adc=av.Quantizer(bits=8), output_noise=0.01)),
}
out = {}
for name, spec in specs.items():
    r = {}
    for dev in ("cpu", DEV):
        t = time.perf_counter()
        r[dev] = av.evaluate(net, spec, (x, y), n_instances=16, seed=2, device=dev, progress=False,
                             options=av.RunOptions(sampler="counter"))
        r[dev + "_s"] = time.perf_counter() - t
    out[name] = dict(max_loss_diff=float(np.abs(r["cpu"].loss.values - r[DEV].loss.values).max()),
                     max_correct_diff=int(np.abs(r["cpu"].correct_count.values
                                                 - r[DEV].correct_count.values).max()),
                     cpu_s=r["cpu_s"], device_s=r[DEV + "_s"], n_tiles=r[DEV].attrs.get("n_tiles"))
    print(name, out[name], flush=True)
out["bench_cuda"] = bench_tiles(device=DEV, n_instances=N_BENCH, repeats=2)
print(json.dumps(out["bench_cuda"]["ratios"]), flush=True)
with open(sys.argv[1] + "/gpu_tiles.json", "w") as f:
    json.dump(out, f, indent=1, default=str)
