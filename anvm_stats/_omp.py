"""OpenMP wait policy, set before torch loads its OpenMP runtime.

torch's CPU wheels use GNU libgomp, whose idle worker threads spin for ``GOMP_SPINCOUNT`` iterations (300,000 by
default: several milliseconds on the 2-core machines this project targets) after every parallel region. The chip
sampler fills per-instance rows from a pool of Python threads right after the previous chunk's forward pass; a
spinning OpenMP worker then holds one of the two cores and the threaded sampling runs at one core's speed. A short
spin count gives the sampling its cores back; ``OMP_WAIT_POLICY=PASSIVE`` would too, but slows the many small ops
of the metrics (every parallel region then wakes sleeping threads). Measurements: ``reports/bench/README.md``.

libgomp reads its environment once, when it is loaded, so this only takes effect when ``anvm_stats`` is imported
before ``torch``, and never overrides a choice the user made (``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` already
set, or ``ANVM_KEEP_OMP=1``). :func:`omp_settings` says what is in effect (benchmarks record it).
"""

from __future__ import annotations

import os
import sys

#: libgomp spin count before an idle worker sleeps (see module docstring)
SPINCOUNT = "3000"


def set_wait_policy() -> bool:
    """Set ``GOMP_SPINCOUNT`` for this process when torch is not loaded yet and the user set nothing.

    Returns
    -------
    bool
        Whether this call set it.
    """
    if "torch" in sys.modules or os.environ.get("ANVM_KEEP_OMP") == "1":
        return False
    if "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["GOMP_SPINCOUNT"] = SPINCOUNT
    return True


SET_BY_ANVM = set_wait_policy()


def omp_settings() -> dict:
    """The OpenMP wait settings of this process, as loaded (JSON-able)."""
    return {"GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT"), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            "set_by_anvm_stats": SET_BY_ANVM}
