"""The cost constants: one csv table (``name, value, unit, source``) of per-operation energies, times and areas,
validated on load.

The shipped table (``anvm_stats/cost/constants.csv``) holds order-of-magnitude values from published designs and
surveys (ISAAC, Murmann's ADC survey, Horowitz's energy table); each row cites its source and says when it is an
estimate. They are a starting point for comparing designs against each other, not a sign-off number: replace the
table (``CostConstants.load(path)``) or single rows (``CostConstants.with_values``) with your technology's values.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from ..errors import ConfigError

#: columns of a constants table, in order
COLUMNS = ("name", "value", "unit", "source")
#: every row a table must hold, with its unit (``cell_area_<type>`` rows, in F^2, add cell types)
UNITS = MappingProxyType({
    "feature_size": "m", "read_voltage": "V", "g_on": "S", "read_time": "s", "column_read_energy": "J",
    "dac_energy_per_bit": "J", "dac_area_per_bit": "m^2", "adc_walden_fom": "J", "adc_schreier_fom": "dB",
    "adc_time_per_bit": "s", "adc_area_8bit": "m^2", "columns_per_adc": "count", "digital_add_energy": "J",
    "digital_add_time": "s", "default_adc_bits": "bit", "default_dac_bits": "bit",
})
CELL_PREFIX = "cell_area_"
CELL_UNIT = "F^2"
#: rows whose value must be a whole number
INTEGER_UNITS = ("count", "bit")
DEFAULT_TABLE = "constants.csv"


def _where(path: str, line: int, name: str | None, column: str) -> str:
    return f"{path} row {line}" + (f" ({name})" if name else "") + f" column {column}"


@dataclass(frozen=True)
class CostConstants:
    """A validated constants table.

    Attributes
    ----------
    values : mapping of str -> float
        Every row's value in its unit (:data:`UNITS`; cell areas in F^2).
    sources : mapping of str -> str
        Every row's ``source`` text.
    path : str
        Where the table came from (``"<shipped>"`` for the package's table).
    """

    values: Mapping[str, float]
    sources: Mapping[str, str] = field(default_factory=dict)
    path: str = "<table>"

    def __post_init__(self):
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))
        missing = [k for k in UNITS if k not in self.values]
        if missing:
            raise ConfigError(f"{self.path} name", missing[0], f"a row for every constant: {list(UNITS)}")
        if not self.cells:
            raise ConfigError(f"{self.path} name", None, f"at least one '{CELL_PREFIX}<type>' row in {CELL_UNIT}")
        for name, value in self.values.items():
            unit = UNITS.get(name, CELL_UNIT if name.startswith(CELL_PREFIX) else None)
            if unit is None:
                raise ConfigError(f"{self.path} name", name, f"one of {list(UNITS)} or '{CELL_PREFIX}<type>'")
            _check_value(f"{self.path} {name}", value, unit)

    def __getitem__(self, name: str) -> float:
        return self.values[name]

    @property
    def cells(self) -> tuple[str, ...]:
        """Cell types with an area row (``cell_area_<type>``)."""
        return tuple(k[len(CELL_PREFIX):] for k in self.values if k.startswith(CELL_PREFIX))

    def cell_area(self, cell: str) -> float:
        """Area of one cell of type ``cell`` in m^2 (its F^2 row times ``feature_size`` squared)."""
        if cell not in self.cells:
            raise ConfigError("cell", cell, f"a cell type of the constants table: one of {list(self.cells)}")
        return self.values[CELL_PREFIX + cell] * self.values["feature_size"] ** 2

    def with_values(self, **values: float) -> "CostConstants":
        """A copy with some rows replaced (validated as on load), e.g. ``c.with_values(adc_walden_fom=5e-15)``."""
        unknown = [k for k in values if k not in self.values]
        if unknown:
            raise ConfigError(unknown[0], values[unknown[0]], f"a row of the table: one of {sorted(self.values)}")
        sources = {**self.sources, **{k: "set by the user" for k in values}}
        return CostConstants({**self.values, **values}, sources, self.path)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "CostConstants":
        """Read and validate a constants csv (default: the shipped table).

        Raises
        ------
        ConfigError
            Naming the file, the row (its line number) and the column: a missing or unknown column, an unknown
            name, a duplicate, a unit other than the row's (:data:`UNITS`), a value that is not a finite positive
            number (a whole number for counts and bits), an empty source, or a required row that is absent.
        """
        if path is None:
            text = resources.files(__package__).joinpath(DEFAULT_TABLE).read_text(encoding="utf-8")
            return cls.parse(text, "<shipped constants.csv>")
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError("constants", str(p), f"a readable UTF-8 csv file ({err})") from None
        return cls.parse(text, str(p))

    @classmethod
    def parse(cls, text: str, path: str = "<table>") -> "CostConstants":
        """Validate the csv ``text`` (see :meth:`load`); ``path`` names it in errors."""
        reader = csv.reader(io.StringIO(text))
        header = next(reader, None)
        if header is None:
            raise ConfigError(f"{path} row 1", None, f"a header with columns {list(COLUMNS)}")
        header = [h.strip() for h in header]
        for col in COLUMNS:
            if col not in header:
                raise ConfigError(f"{path} row 1 column {col}", header, f"a header with columns {list(COLUMNS)}")
        extra = [h for h in header if h not in COLUMNS]
        if extra:
            raise ConfigError(f"{path} row 1 column {extra[0]}", extra[0], f"only the columns {list(COLUMNS)}")
        values, sources, lines = {}, {}, {}
        for line, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ConfigError(_where(path, line, None, "*"), row, f"{len(header)} cells ({list(header)})")
            rec = {h: cell.strip() for h, cell in zip(header, row)}
            name = rec["name"]
            unit = UNITS.get(name, CELL_UNIT if name.startswith(CELL_PREFIX) and name != CELL_PREFIX else None)
            if unit is None:
                raise ConfigError(_where(path, line, name, "name"), name,
                                  f"one of {list(UNITS)} or '{CELL_PREFIX}<type>'")
            if name in values:
                raise ConfigError(_where(path, line, name, "name"), name, f"a name not used before (row {lines[name]})")
            if rec["unit"] != unit:
                raise ConfigError(_where(path, line, name, "unit"), rec["unit"], f"{unit!r} (the unit of {name})")
            try:
                value = float(rec["value"])
            except ValueError:
                raise ConfigError(_where(path, line, name, "value"), rec["value"], "a number") from None
            _check_value(_where(path, line, name, "value"), value, unit)
            if not rec["source"]:
                raise ConfigError(_where(path, line, name, "source"), rec["source"],
                                  "a non-empty source (the publication or 'Estimate: ...')")
            values[name], sources[name], lines[name] = value, rec["source"], line
        return cls(values, sources, path)


def _check_value(where: str, value: float, unit: str) -> None:
    whole = unit in INTEGER_UNITS
    ok = isinstance(value, (int, float)) and math.isfinite(value) and value > 0
    if ok and whole:
        ok = float(value).is_integer()
    if not ok:
        kind = "whole number" if whole else "number"
        raise ConfigError(where, value, f"a finite positive {kind} (in {unit})")


def resolve(constants: "CostConstants | str | Path | None") -> CostConstants:
    """``constants`` as a :class:`CostConstants`: the shipped table for None, a csv path, or the table itself."""
    if constants is None or isinstance(constants, (str, Path)):
        return CostConstants.load(constants)
    if not isinstance(constants, CostConstants):
        raise ConfigError("constants", type(constants).__name__, "None, a csv path or a CostConstants")
    return constants
