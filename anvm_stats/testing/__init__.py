"""Public test kit: the device-contract check users run on their own devices, and Hypothesis strategies.

>>> from anvm_stats.testing import check_device
>>> check_device(MyEffect(sigma=0.05), declared_std=0.05 * 0.9, zero_noise={"noise_level": 0.0})

The strategies (``weights``, ``conductances``, ``bounds``, ``effects``, ``empirical_devices``, ``mappings``,
``peripheries``, ``specs``) need the ``hypothesis`` package; they are imported on first use, so
``check_device`` works without it.
"""

from .conformance import PROPERTIES, DeviceContractError, check_device, check_spec, declares_clipping

_STRATEGIES = ("bounds", "conductances", "effects", "empirical_devices", "mappings", "peripheries", "specs", "weights")


def __getattr__(name: str):
    if name in _STRATEGIES or name == "strategies":
        import importlib

        module = importlib.import_module(f"{__name__}.strategies")
        return module if name == "strategies" else getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PROPERTIES", "DeviceContractError", "check_device", "check_spec", "declares_clipping", *_STRATEGIES]
