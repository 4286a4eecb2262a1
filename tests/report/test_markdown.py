"""anvm_stats.report (write_report, markdown): Markdown and HTML reports share their figures."""

import pytest

from anvm_stats.report import write_report
from anvm_stats.report.markdown import flat_fields
from tests.helpers import synthetic


@pytest.mark.parametrize("embed", ["base64", "link"])
def test_write_report_md_and_html_share_figures(tmp_path, embed):
    ds = synthetic()
    out = write_report(ds, tmp_path, embed=embed)
    md = out["markdown"].read_text()
    html = out["html"].read_text()
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == sorted(["accuracy_distribution.png", "accuracy_bands.png", "yield.png", "layer_sensitivity.png",
                           "training_curves.png"])
    assert all(f"]({p})" in md for p in pngs)
    assert html.count("<img ") == len(pngs)
    if embed == "base64":
        assert html.count("data:image/png;base64,") == len(pngs)
    else:
        assert all(f"src='{p}'" in html for p in pngs)
    assert "robust - plain" in md and "robust - plain" in html
    for p in tmp_path.glob("*.png"):
        assert p.stat().st_size < 200_000


def test_flat_fields_paths_and_leaves():
    spec = {"mapping": {"kind": "differential", "n": 2}, "effects": [{"sigma": 0.05}, {"p": [0.1, 0.2]}],
            "periphery": {}, "name": None}
    assert flat_fields(spec) == [
        ("effects[0].sigma", "0.05"), ("effects[1].p[0]", "0.1"), ("effects[1].p[1]", "0.2"),
        ("mapping.kind", '"differential"'), ("mapping.n", "2"), ("name", "null"), ("periphery", "{}")]


def test_study_file_is_written_beside_the_report_and_linked(tmp_path):
    ds = synthetic()
    ds.attrs["study_toml"] = '[study]\nname = "synthetic"\n'
    write_report(ds, tmp_path)
    assert (tmp_path / "study.toml").read_text() == ds.attrs["study_toml"]
    assert "<a href='study.toml'>" in (tmp_path / "report.html").read_text()
    assert 'name = "synthetic"' in (tmp_path / "report.md").read_text()
