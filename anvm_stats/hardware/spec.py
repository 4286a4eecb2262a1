"""HardwareSpec: one frozen description of a CIM chip (mapping + device effects + periphery).

Presets from the literature live in :mod:`anvm_stats.devices.presets`."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


from ..errors import ConfigError, check, check_number
from . import registry
from .effects import Bounds, DeviceEffect, ReadNoise, validate_effect
from .mapping import DifferentialMapping, Mapping
from .parasitics import Parasitics
from .periphery import Periphery
from .tile import Tile

_BIAS_MODES = ("column", "digital")
#: the keys of a spec's plain data (to_dict / from_dict, TOML [hardware] tables)
SPEC_KEYS = ("name", "g_min", "bias", "fold_batchnorm", "mapping", "effects", "periphery", "tile", "parasitics")
#: sweep knobs (dims of a sweep Dataset): the effects' and periphery's own (noise_level, t_inference,
#: stuck_at_rate, adc_bits, dac_bits), and those the spec sets itself: converter levels instead of bits
#: (adc_levels, dac_levels) and the programming-noise mean (mean_shift, ``mu``)
KNOBS = ("noise_level", "t_inference", "adc_bits", "dac_bits", "stuck_at_rate", "adc_levels", "dac_levels",
         "mean_shift", "r_wire")
_SPEC_KNOBS = ("adc_levels", "dac_levels", "mean_shift")


@dataclass(frozen=True, kw_only=True)
class HardwareSpec:
    """A compute-in-memory chip model.

    Parameters
    ----------
    mapping : Mapping
        Weight -> conductance mapping (:class:`DifferentialMapping`, :class:`OffsetMapping`,
        :class:`BitSlicedMapping` or a registered user mapping).
    effects : tuple of DeviceEffect
        Applied in order to the nominal conductances; ``phase="program"`` effects once per chip,
        ``phase="read"`` effects at every forward pass.
    periphery : Periphery
        DAC / ADC quantisation and output noise.
    g_min : float in [0, 1)
        Minimum conductance as a fraction of the maximum (off/on ratio).
    bias : {"column", "digital"}
        ``"column"``: the bias is an extra crossbar column ``W~ = [W, b/s]`` with input ``s`` chosen so the bias
        column's range matches the weights' (paper 1); ``"digital"``: added exactly after the ADC.
    fold_batchnorm : bool
        Fold a BatchNorm that directly follows a conv/linear into its weights and bias before mapping.
    name : str
        Label used in reports.
    tile : Tile, optional
        Split every analog layer over crossbar tiles of this size, each with its own ADC (partial sums digitised
        before the digital accumulation, :mod:`anvm_stats.hardware.tile`); ``None``: one array per layer.
    parasitics : Parasitics, optional
        Wire resistance of every array (IR drop, :mod:`anvm_stats.hardware.parasitics`; the sweep knob ``r_wire``);
        ``None``: ideal wires. Each tile (or each layer's array when ``tile`` is None) is one crossbar.
    """

    mapping: Mapping = field(default_factory=DifferentialMapping)
    effects: tuple = ()
    periphery: Periphery = field(default_factory=Periphery)
    g_min: float = 0.0
    bias: str = "column"
    fold_batchnorm: bool = True
    name: str = "custom"
    tile: Tile | None = None
    parasitics: Parasitics | None = None

    def __post_init__(self):
        if not isinstance(self.effects, tuple):
            object.__setattr__(self, "effects", tuple(self.effects))
        for i, eff in enumerate(self.effects):
            validate_effect(eff, f"effects[{i}]")
        check(hasattr(self.mapping, "encode"), "mapping", self.mapping, "a Mapping with an encode() method")
        check(isinstance(self.periphery, Periphery), "periphery", self.periphery, "a Periphery")
        check_number("g_min", self.g_min, low=0.0, high=1.0, high_open=True)
        check(self.bias in _BIAS_MODES, "bias", self.bias, f"one of {_BIAS_MODES}")
        check(isinstance(self.fold_batchnorm, bool), "fold_batchnorm", self.fold_batchnorm, "true or false")
        check(self.tile is None or isinstance(self.tile, Tile), "tile", self.tile, "a Tile or None")
        check(self.parasitics is None or isinstance(self.parasitics, Parasitics), "parasitics", self.parasitics,
              "a Parasitics or None")

    # ------------------------------------------------------------------ derived views
    @property
    def bounds(self) -> Bounds:
        return Bounds(g_min=self.g_min, g_max=1.0)

    @property
    def program_effects(self) -> tuple:
        return tuple(e for e in self.effects if e.phase == "program")

    @property
    def read_effects(self) -> tuple:
        return tuple(e for e in self.effects if e.phase == "read")

    def with_knobs(self, **knobs: Any) -> "HardwareSpec":
        """A copy with sweep knobs set, e.g. ``spec.with_knobs(noise_level=0.1, adc_bits=6)``.

        Every knob must be understood by at least one component (an effect or the periphery); ``adc_levels`` and
        ``dac_levels`` (a converter of that many levels, replacing its bits) and ``mean_shift`` (the mean ``mu`` of
        every programming-noise effect) are set here.

        Raises
        ------
        ConfigError
            For a knob no component of this spec responds to.
        """
        spec = self
        for name, value in knobs.items():
            if name in _SPEC_KNOBS:
                spec = spec._with_spec_knob(name, value)
                continue
            hit = False
            effects = []
            for eff in spec.effects:
                new = eff.with_knob(name, value)
                hit |= new is not None
                effects.append(eff if new is None else new)
            periphery = spec.periphery.with_knob(name, value)
            hit |= periphery is not None
            parasitics = spec.parasitics.with_knob(name, value) if spec.parasitics is not None else None
            hit |= parasitics is not None
            if not hit:
                raise ConfigError(name, value, f"a knob of this spec's components (effects: "
                                               f"{[e.kind for e in spec.effects]}); knobs are {KNOBS}")
            spec = replace(spec, effects=tuple(effects), periphery=periphery or spec.periphery,
                           parasitics=parasitics or spec.parasitics)
        return spec

    def _with_spec_knob(self, name: str, value: Any) -> "HardwareSpec":
        if name == "mean_shift":
            check_number(name, value)
            if not any(e.kind == "programming_noise" for e in self.effects):
                raise ConfigError(name, value, "a spec with a programming_noise effect (its mean mu is shifted)")
            return replace(self, effects=tuple(replace(e, mu=float(value)) if e.kind == "programming_noise" else e
                                               for e in self.effects))
        which = name.split("_")[0]
        q = getattr(self.periphery, which)
        if q is None:
            raise ConfigError(name, value, f"a spec whose periphery has an {which.upper()} (it has none)")
        check_number(name, value, low=2, integer=True)
        return replace(self, periphery=replace(self.periphery, **{which: replace(q, bits=None, levels=int(value))}))

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain data (``tile`` and ``parasitics`` only when set, so other specs serialise as before)."""
        out = {
            "name": self.name, "g_min": self.g_min, "bias": self.bias, "fold_batchnorm": self.fold_batchnorm,
            "mapping": registry.to_dict(self.mapping),
            "effects": [registry.to_dict(e) for e in self.effects],
            "periphery": self.periphery.to_dict(),
        }
        if self.tile is not None:
            out["tile"] = self.tile.to_dict()
        if self.parasitics is not None:
            out["parasitics"] = self.parasitics.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HardwareSpec":
        """Build a spec from plain data; errors name the offending key (e.g. ``effects[1].sigma``)."""
        if not isinstance(data, dict):
            raise ConfigError("hardware", data, "a table")
        unknown = sorted(set(data) - set(SPEC_KEYS))
        if unknown:
            raise ConfigError(unknown[0], data[unknown[0]], f"one of {SPEC_KEYS}")
        kw: dict[str, Any] = {k: data[k] for k in ("name", "g_min", "bias", "fold_batchnorm") if k in data}
        if "mapping" in data:
            kw["mapping"] = registry.from_dict("mapping", data["mapping"], "mapping")
        effects = data.get("effects", [])
        if not isinstance(effects, (list, tuple)):
            raise ConfigError("effects", effects, "a list of effect tables")
        kw["effects"] = tuple(registry.from_dict("effect", e, f"effects[{i}]") for i, e in enumerate(effects))
        if "periphery" in data:
            kw["periphery"] = Periphery.from_dict(data["periphery"])
        if data.get("tile") is not None:
            kw["tile"] = Tile.from_dict(data["tile"])
        if data.get("parasitics") is not None:
            kw["parasitics"] = Parasitics.from_dict(data["parasitics"])
        return cls(**kw)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_toml(self) -> str:
        import tomli_w   # only for writing TOML (keeps the core importable without it)

        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_toml(cls, text_or_path: str | Path) -> "HardwareSpec":
        """Parse TOML text, or read a ``.toml`` file when given an existing path."""
        path = Path(text_or_path) if isinstance(text_or_path, Path) or str(text_or_path).endswith(".toml") else None
        text = path.read_text() if path is not None else str(text_or_path)
        return cls.from_dict(tomllib.loads(text))


__all__ = ["HardwareSpec", "KNOBS", "ReadNoise", "DeviceEffect", "Tile"]
