"""The constants table: the shipped one loads with a source and the right unit on every row; a broken table is
refused naming the file, the row and the column."""

from importlib import resources

import pytest

from anvm_stats.cost.constants import UNITS, CostConstants, resolve
from anvm_stats.errors import ConfigError

SHIPPED = resources.files("anvm_stats.cost").joinpath("constants.csv").read_text()
LINES = SHIPPED.splitlines()


def _row(name):
    """(line number, text) of a row of the shipped table."""
    return next((i, line) for i, line in enumerate(LINES, 1) if line.startswith(name + ","))


def _replace(name, new_line):
    i, _ = _row(name)
    return "\n".join(LINES[:i - 1] + [new_line] + LINES[i:]) + "\n", i


def test_shipped_table_loads_with_sources_and_units():
    c = CostConstants.load()
    assert set(UNITS) <= set(c.values)
    assert {"rram_1t1r", "rram_crossbar", "pcm_1t1r", "sram_6t"} <= set(c.cells)
    assert all(len(c.sources[k]) > 20 for k in c.values)
    assert c.cell_area("rram_1t1r") == pytest.approx(12 * (32e-9) ** 2)
    # every row's unit is the one validation expects, and the values are positive
    for line in LINES[1:]:
        name, value, unit = line.split(",")[:3]
        assert unit == UNITS.get(name, "F^2") and float(value) > 0


@pytest.mark.parametrize("name,line,column,words", [
    ("g_on", 'g_on,1e-4,ohm,"x"', "unit", "'S'"),
    ("read_time", 'read_time,-1e-8,s,"x"', "value", "positive"),
    ("read_time", 'read_time,0,s,"x"', "value", "positive"),
    ("read_time", 'read_time,nan,s,"x"', "value", "finite"),
    ("read_time", 'read_time,fast,s,"x"', "value", "a number"),
    ("columns_per_adc", 'columns_per_adc,8.5,count,"x"', "value", "whole number"),
    ("read_voltage", 'read_voltage,0.2,V,', "source", "non-empty source"),
    ("read_voltage", 'read_voltgae,0.2,V,"x"', "name", "one of"),
    ("read_voltage", 'read_voltage,0.2,V', "*", "4 cells"),
])
def test_a_broken_row_is_named_with_its_column(name, line, column, words):
    text, i = _replace(name, line)
    with pytest.raises(ConfigError) as exc:
        CostConstants.parse(text, "mine.csv")
    msg = str(exc.value)
    assert f"mine.csv row {i}" in msg and f"column {column}" in msg and words in msg


def test_duplicate_missing_rows_and_header():
    dup = SHIPPED + LINES[_row("g_on")[0] - 1] + "\n"
    with pytest.raises(ConfigError, match=rf"row {len(LINES) + 1} \(g_on\) column name.*not used before \(row "
                                          rf"{_row('g_on')[0]}\)"):
        CostConstants.parse(dup, "t.csv")
    i, _ = _row("adc_walden_fom")
    with pytest.raises(ConfigError, match="t.csv name='adc_walden_fom'"):
        CostConstants.parse("\n".join(LINES[:i - 1] + LINES[i:]), "t.csv")
    with pytest.raises(ConfigError, match="row 1 column source"):
        CostConstants.parse(SHIPPED.replace("name,value,unit,source", "name,value,unit,origin", 1), "t.csv")
    with pytest.raises(ConfigError, match="cell_area_"):
        CostConstants.parse("\n".join(l for l in LINES if not l.startswith("cell_area_")), "t.csv")


def test_load_from_a_file_with_values_replaced_and_errors(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text(SHIPPED.replace("adc_walden_fom,1e-14", "adc_walden_fom,5e-15"))
    c = resolve(str(p))
    assert c["adc_walden_fom"] == 5e-15 and c.path == str(p)
    d = c.with_values(g_on=2e-5)
    assert d["g_on"] == 2e-5 and d.sources["g_on"] == "set by the user" and c["g_on"] == 1e-4
    with pytest.raises(ConfigError, match="g_on"):
        c.with_values(g_on=-1.0)
    with pytest.raises(ConfigError, match="g_onn"):
        c.with_values(g_onn=1.0)
    with pytest.raises(ConfigError, match="cell='dram'"):
        c.cell_area("dram")
    with pytest.raises(ConfigError, match="constants"):
        CostConstants.load(tmp_path / "missing.csv")
    with pytest.raises(ConfigError, match="constants"):
        resolve(3.0)
