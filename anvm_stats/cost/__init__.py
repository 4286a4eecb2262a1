"""What a chip costs: energy, latency and area per inference from the program the engine runs, beside accuracy.

``cost(model, spec, data)`` returns a Dataset by layer and component; ``sweep(..., cost=True)`` adds cost
variables along the grid dims; ``pareto_mask`` marks the accuracy-vs-cost front. Constants come from a csv table
with a ``source`` per row (:mod:`.constants`; replace it with your technology's values).
"""

from .constants import CostConstants
from .counts import LayerCounts, count, layer_counts
from .model import (AREA_COMPONENTS, DEFAULT_CELL, ENERGY_COMPONENTS, adc_energy, adc_knee_bits, cost,
                    cost_of_counts, grid_cost)
from .pareto import pareto_mask

__all__ = ["CostConstants", "LayerCounts", "count", "layer_counts", "cost", "cost_of_counts", "grid_cost",
           "adc_energy", "adc_knee_bits", "pareto_mask", "ENERGY_COMPONENTS", "AREA_COMPONENTS", "DEFAULT_CELL"]
