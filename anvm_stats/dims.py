"""Names of the dims, coordinates and variables of every anvm_stats Dataset, and a schema check.

Order of dims never matters; code selects by name.
"""

from __future__ import annotations

import xarray as xr

INSTANCE = "instance"            # one simulated chip: the Monte Carlo sample dim
NOISE_LEVEL = "noise_level"      # programming-noise sigma in the spec's own convention
T_INFERENCE = "t_inference"      # seconds after programming
ADC_BITS = "adc_bits"
DAC_BITS = "dac_bits"
STUCK_AT_RATE = "stuck_at_rate"
LAYER = "layer"                  # qualified module name
EPOCH = "epoch"
TRAIN_SEED = "train_seed"        # one trained network of a training comparison (its init, data order, noise draws)
QUANTILE = "quantile"
LEVEL = "level"                  # programmed conductance level (empirical devices)
RECOVERY = "recovery"            # per-chip recovery method compared on the same chips
CI_BOUND = "ci_bound"            # coordinate values ["lower", "upper"]
CI_BOUND_VALUES = ("lower", "upper")
COMPONENT = "component"          # energy component of a chip's cost (dac, cells, bitlines, adc, digital adds)
AREA_COMPONENT = "area_component"  # area component of a chip's cost (cells, adc, dac)

# cost variables (anvm_stats.cost): per inference (one input sample) unless said otherwise
ENERGY = "energy"                          # J, by component (and layer)
ENERGY_PER_INFERENCE = "energy_per_inference"  # J
LATENCY = "latency"                        # s, by layer
LATENCY_PER_INFERENCE = "latency_per_inference"  # s
AREA = "area"                              # m^2, by component (and layer)
CHIP_AREA = "chip_area"                    # m^2

# per-instance metric variables
ACCURACY = "accuracy"
TOP5_ACCURACY = "top5_accuracy"
LOSS = "loss"
CORRECT_COUNT = "correct_count"
N_SAMPLES = "n_samples"
METRICS = (ACCURACY, LOSS, TOP5_ACCURACY, CORRECT_COUNT)

#: attrs every result Dataset carries (see anvm_stats.provenance)
REQUIRED_ATTRS = ("created_at", "anvm_stats_version", "torch_version", "device", "seed_entropy",
                  "hardware_spec", "model", "dataset")


def validate_dataset(ds: xr.Dataset, *, require_attrs: bool = True) -> None:
    """Check that ``ds`` follows the anvm_stats conventions.

    Raises
    ------
    ValueError
        If a variable reuses a dim name, ``instance`` is missing, or a required attr is absent.
    """
    clash = set(ds.data_vars) & set(ds.dims)
    if clash:
        raise ValueError(f"variables reuse dim names: {sorted(clash)}")
    if INSTANCE not in ds.dims:
        raise ValueError(f"dataset has no {INSTANCE!r} dim; dims are {list(ds.dims)}")
    if require_attrs:
        missing = [a for a in REQUIRED_ATTRS if a not in ds.attrs]
        if missing:
            raise ValueError(f"dataset lacks provenance attrs {missing}")
