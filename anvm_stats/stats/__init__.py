"""Statistics of Monte Carlo results: means, quantiles, yield and paired differences with confidence intervals.

The top-level functions work on labelled xarray data and reduce the ``instance`` dim, keeping all other dims::

    import anvm_stats as av
    y = av.stats.yield_(ds.accuracy, threshold=0.9, dim="instance", ci=0.95)
    y.estimate, y.interval.sel(ci_bound="lower")

:mod:`anvm_stats.stats.arrays` holds the same estimators on plain numpy arrays (``axis=``), returning
:class:`~anvm_stats.stats.arrays.Estimate`; :mod:`anvm_stats.stats.betting` the distribution-free interval on the
mean of a bounded metric (``method="betting"``); :func:`sequential_estimate` draws instances in rounds until an
interval that keeps its level under this optional stopping is narrow enough; :func:`across_seeds` and
:func:`seed_difference` (:mod:`anvm_stats.stats.seeds`) give two-level intervals over training seeds and chips.
README's "Statistics" section says
what each interval guarantees.
"""

from . import arrays
from .arrays import Estimate
from .labelled import mean, paired_difference, quantiles, unpaired_difference, yield_
from .seeds import across_seeds, seed_difference
from .sequential import SequentialResult, sequential_estimate

__all__ = [
    "arrays", "Estimate", "mean", "quantiles", "yield_", "paired_difference", "unpaired_difference",
    "sequential_estimate", "SequentialResult", "across_seeds", "seed_difference",
]
