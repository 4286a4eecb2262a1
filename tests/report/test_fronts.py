"""The accuracy-vs-energy front section: designs with intervals and Pareto flags, the figure, the report."""

import numpy as np
import pytest
import xarray as xr

from anvm_stats import dims, stats
from anvm_stats.cost import pareto_mask
from anvm_stats.report import write_report
from anvm_stats.report.fronts import FRONT_FILE, component_table, designs, front_table


def _results(seed=0, n=40):
    rng = np.random.default_rng(seed)
    hw, bits = ["a", "b"], [4, 6, 8]
    acc = np.clip(rng.normal(0.9, 0.02, (2, 3, n)) + np.array([0.0, 0.02])[:, None, None]
                  + np.array([-0.03, 0.0, 0.01])[None, :, None], 0, 1)
    energy = np.array([[1.0, 2.0, 4.0], [1.5, 3.0, 6.0]]) * 1e-9
    ds = xr.Dataset({dims.ACCURACY: (("hardware", dims.ADC_BITS, dims.INSTANCE), acc),
                     dims.ENERGY_PER_INFERENCE: (("hardware", dims.ADC_BITS), energy),
                     dims.LATENCY_PER_INFERENCE: (("hardware", dims.ADC_BITS), energy * 10),
                     dims.CHIP_AREA: (("hardware", dims.ADC_BITS), energy * 1e3),
                     dims.ENERGY: (("hardware", dims.ADC_BITS, dims.COMPONENT),
                                   energy[..., None] * np.array([0.25, 0.75])[None, None, :])},
                    coords={"hardware": hw, dims.ADC_BITS: bits, dims.INSTANCE: np.arange(n),
                            dims.COMPONENT: ["dac", "adc"]})
    ds.attrs.update(report_yield_threshold=0.9, report_ci=0.95, report_quantiles=[0.1, 0.5, 0.9],
                    cost_cell="rram_1t1r", cost_constants="<shipped constants.csv>")
    return ds


def test_designs_carry_intervals_and_fronts():
    ds = _results()
    d = designs(ds)
    assert d.sizes["design"] == 6 and d["label"].values[1] == "hardware=a, adc_bits=6"
    acc = ds[dims.ACCURACY].sel(hardware="b", adc_bits=8)
    m = stats.mean(acc, ci=0.95)
    assert d["mean"].values[5] == pytest.approx(float(m["estimate"]))
    assert d["mean_lower"].values[5] == pytest.approx(float(m["interval"][0]))
    y = stats.yield_(acc, 0.9, ci=0.95)
    assert d["yield_upper"].values[5] == pytest.approx(float(y["interval"][1]))
    q = stats.quantiles(acc, [0.1], ci=0.95)
    assert d["quantile"].values[5] == pytest.approx(float(q["estimate"].squeeze()))
    assert d[dims.ENERGY_PER_INFERENCE].values.tolist() == pytest.approx([1e-9, 2e-9, 4e-9, 1.5e-9, 3e-9, 6e-9])
    for k in ("mean", "quantile", "yield"):
        assert d[f"front_{k}"].values.tolist() == pareto_mask(d[dims.ENERGY_PER_INFERENCE], d[k]).tolist()
    assert bool(d["front_mean"].values[0])              # the cheapest design is always on the front
    headers, rows = front_table(d)
    assert rows[0][0] == "hardware=a, adc_bits=4" and rows[0][1] == "1" and "mean" in rows[0][-1]
    assert "Pareto-optimal for" in headers and "q0.1" in headers
    headers, rows = component_table(d)
    assert headers == ["design", "dac", "adc", "total"]
    assert rows[0] == ["hardware=a, adc_bits=4", "0.25", "0.75", "1"]
    assert len(rows) == int(d["front_mean"].sum())


def test_report_has_the_front_section_only_with_cost(tmp_path):
    ds = _results()
    out = write_report(ds, tmp_path / "with")
    md = out["markdown"].read_text()
    assert (tmp_path / "with" / FRONT_FILE).exists() and f"]({FRONT_FILE})" in md
    assert "accuracy vs energy per inference" in md and "| hardware=a, adc_bits=4 | 1 |" in md
    assert "rram_1t1r" in md and "Pareto-optimal for" in (tmp_path / "with" / "report.html").read_text()
    assert "Where the energy goes" in md and "default resolution" not in md
    ds.attrs["cost_assumed_converters"] = "dac"
    assert "no DAC: its cost uses the table's default resolution (default_dac_bits)" in write_report(
        ds, tmp_path / "dac")["markdown"].read_text()
    plain = write_report(ds.drop_vars([dims.ENERGY_PER_INFERENCE, dims.LATENCY_PER_INFERENCE, dims.CHIP_AREA,
                                       dims.ENERGY, dims.COMPONENT]),
                         tmp_path / "without")
    assert "energy per inference" not in plain["markdown"].read_text()
    assert not (tmp_path / "without" / FRONT_FILE).exists()
