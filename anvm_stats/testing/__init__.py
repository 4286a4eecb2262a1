"""Public test kit: Hypothesis strategies and the device-contract check users run on their own devices.

>>> from anvm_stats.testing import check_device
>>> check_device(MyEffect(sigma=0.05), declared_std=lambda g: 0.05 * (1 - 0.1), zero_noise={"noise_level": 0})
"""

from .conformance import PROPERTIES, DeviceContractError, check_device, check_spec, declares_clipping
from .strategies import (
    bounds, conductances, effects, empirical_devices, mappings, peripheries, specs, weights,
)

__all__ = ["PROPERTIES", "DeviceContractError", "check_device", "check_spec", "declares_clipping", "bounds",
           "conductances", "effects", "empirical_devices", "mappings", "peripheries", "specs", "weights"]
