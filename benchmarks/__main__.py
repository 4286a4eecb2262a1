"""``python -m benchmarks [cpu|cuda]``: every benchmark's JSON on stdout."""

import json
import sys

from . import run_benchmarks

print(json.dumps(run_benchmarks(device=sys.argv[1] if len(sys.argv) > 1 else "cpu"), indent=2, default=str))
