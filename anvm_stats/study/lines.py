"""Where a key sits in TOML text: dotted key path -> line number, for error messages.

Only a light scan (tables, arrays of tables, ``key =`` lines, first-level keys of inline tables); it never
decides validity, it only points at the line a :class:`~anvm_stats.study.schema.StudyError` talks about.
"""

from __future__ import annotations

import re

_AOT = re.compile(r"^\[\[\s*([^\[\]]+?)\s*\]\]")
_TABLE = re.compile(r"^\[\s*([^\[\]]+?)\s*\]")
_KEY = re.compile(r"""^((?:[A-Za-z0-9_\-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_\-]+|"[^"]*"|'[^']*'))*)\s*=""")
_INLINE_KEY = re.compile(r"[{,]\s*([A-Za-z0-9_\-]+)\s*=")
_INDEX = re.compile(r"\[\d+\]")


def _norm(key: str) -> str:
    return ".".join(p.strip().strip("\"'") for p in key.split("."))


def key_lines(text: str) -> dict[str, int]:
    """Map every dotted key path found in ``text`` to its first line number (1-based).

    Array-of-tables entries are recorded both with an index (``hardware.effects[1].sigma``) and without.
    """
    out: dict[str, int] = {}
    counts: dict[str, int] = {}
    prefix = ""

    def add(path: str, no: int) -> None:
        out.setdefault(path, no)
        plain = _INDEX.sub("", path)
        out.setdefault(plain, no)

    for no, raw in enumerate(text.splitlines(), 1):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        m = _AOT.match(s)
        if m:
            name = _norm(m.group(1))
            i = counts.get(name, 0)
            counts[name] = i + 1
            prefix = f"{name}[{i}]"
            add(prefix, no)
            continue
        m = _TABLE.match(s)
        if m:
            prefix = _norm(m.group(1))
            add(prefix, no)
            continue
        m = _KEY.match(s)
        if m:
            full = f"{prefix}.{_norm(m.group(1))}" if prefix else _norm(m.group(1))
            add(full, no)
            rest = s[m.end():]
            for sub in _INLINE_KEY.finditer(rest):
                add(f"{full}.{sub.group(1)}", no)
    return out


def find_line(lines: dict[str, int], path: str) -> int | None:
    """Line of ``path`` (dotted, indices allowed) or of its nearest enclosing key or table; ``None`` if none."""
    parts = path.split(".")
    while parts:
        p = ".".join(parts)
        for cand in (p, _INDEX.sub("", p)):
            if cand in lines:
                return lines[cand]
        parts.pop()
    return None
