"""Write anvm_stats/data/corpus.txt: the prose of this project's own README.md and ARCHITECTURE.md (code blocks,
tables and headings dropped, markdown marks removed, a few typographic characters mapped to ASCII), one paragraph
per line, under a header naming the source. The text is the project's own (no third-party copyright); the shipped
file is a snapshot, regenerated only on purpose:  python scripts/text_corpus.py"""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASCII = {"\u2011": "-", "\u2013": "-", "\u2014": "-", "\u2212": "-", "\u2192": "->", "\u2265": ">=", "\u2264": "<=",
         "\u00d7": "x", "\u2248": "~", "\u00b1": "+-", "\u2500": "-", "\u25ba": ">", "\u2019": "'", "\u201c": '"',
         "\u201d": '"', "\u2026": "..."}


def prose(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    lines = [ln for ln in text.splitlines() if not ln.startswith(("|", "#"))]
    text = re.sub(r"\*\*|\*|`", "", "\n".join(lines))
    for k, v in ASCII.items():
        text = text.replace(k, v)
    paras = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    return [p for p in paras if len(p) > 40 and all(32 <= ord(c) < 127 for c in p)]


def main() -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    paras = [p for f in ("README.md", "ARCHITECTURE.md") for p in prose((ROOT / f).read_text())]
    header = (f"# anvm_stats text corpus: the prose of the project's own README.md and ARCHITECTURE.md at commit "
              f"{commit},\n# written by scripts/text_corpus.py (the project's own text). Lines starting with '# ' "
              f"are this header.\n")
    (ROOT / "anvm_stats" / "data" / "corpus.txt").write_text(header + "\n".join(paras) + "\n")


if __name__ == "__main__":
    main()
