"""The report's tables of nested JSON (provenance, hardware spec)."""

from anvm_stats.report.markdown import flat_fields


def test_flat_fields_paths_and_leaves():
    spec = {"mapping": {"kind": "differential", "n": 2}, "effects": [{"sigma": 0.05}, {"p": [0.1, 0.2]}],
            "periphery": {}, "name": None}
    assert flat_fields(spec) == [
        ("effects[0].sigma", "0.05"), ("effects[1].p[0]", "0.1"), ("effects[1].p[1]", "0.2"),
        ("mapping.kind", '"differential"'), ("mapping.n", "2"), ("name", "null"), ("periphery", "{}")]
