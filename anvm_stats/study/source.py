"""Reading a study file: bytes -> UTF-8 text -> TOML table, every failure a one-line :class:`StudyError` naming
the file (and the line, where there is one)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from .config import StudyError


def read_study(path: str | Path) -> tuple[str, dict]:
    """``(text, table)`` of the TOML study file at ``path``.

    Raises
    ------
    FileNotFoundError
        If nothing is at ``path``.
    StudyError
        If ``path`` is a folder, is not UTF-8, is not valid TOML, or is nested too deeply for the parser.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no study file {path}")
    if path.is_dir():
        raise StudyError("study file", str(path), "a TOML file (this is a folder)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise StudyError("toml", path.name, f"a UTF-8 text file (byte 0x{raw[err.start]:02x} at offset "
                                            f"{err.start} is not UTF-8)", line=line, source=str(path)) from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        m = re.search(r"line (\d+)", str(err))
        raise StudyError("toml", path.name, f"valid TOML ({err})", line=int(m.group(1)) if m else None,
                         source=str(path)) from None
    except RecursionError:
        raise StudyError("toml", path.name, "TOML nested a few levels deep (arrays or inline tables nested so "
                                            "deeply that the parser ran out of recursion depth)",
                         source=str(path)) from None
