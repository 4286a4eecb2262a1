"""anvm_stats.report.summary: point and paired tables match scipy on synthetic Datasets."""

import scipy.stats

from anvm_stats import dims
from anvm_stats.report import paired_tables, point_table
from anvm_stats.report.summary import format_text
from tests.helpers import LEVELS, MODELS, N, synthetic


def test_point_table_matches_scipy():
    ds = synthetic()
    headers, rows = point_table(ds, threshold=0.8, ci=0.95, quantiles=[0.5])
    assert headers[:3] == ["model", dims.NOISE_LEVEL, "n"]
    assert len(rows) == len(MODELS) * len(LEVELS)
    row = rows[len(LEVELS) + 1]                      # robust, 0.1
    x = ds[dims.ACCURACY].sel(model="robust", noise_level=0.1).values
    assert row[0] == "robust" and row[1] == "0.1" and row[2] == str(N)
    assert row[3] == f"{x.mean():.3f}"
    t = scipy.stats.t.interval(0.95, N - 1, loc=x.mean(), scale=scipy.stats.sem(x))
    assert row[4] == f"[{t[0]:.3f}, {t[1]:.3f}]"
    k = int((x >= 0.8).sum())
    cp = scipy.stats.binomtest(k, N).proportion_ci(0.95, method="exact")
    assert row[-2] == f"{k / N:.3f}"
    assert row[-1] == f"[{cp.low:.3f}, {cp.high:.3f}]"
    text = format_text((headers, rows))
    assert text.splitlines()[0].split()[0] == "model" and len(text.splitlines()) == 2 + len(rows)


def test_paired_tables_use_the_same_chips():
    ds = synthetic()
    tables = paired_tables(ds, ci=0.95)
    headers, rows = tables["model"]
    assert headers[0] == "comparison" and len(rows) == len(LEVELS)
    d = (ds[dims.ACCURACY].sel(model="robust") - ds[dims.ACCURACY].sel(model="plain")).sel(noise_level=0.2).values
    row = rows[2]
    assert row[0] == "robust - plain" and row[2] == f"{d.mean():.4f}"
    t = scipy.stats.t.interval(0.95, N - 1, loc=d.mean(), scale=scipy.stats.sem(d))
    assert row[3] == f"[{t[0]:.4f}, {t[1]:.4f}]"
    assert "hardware" not in tables and "recovery" not in tables
