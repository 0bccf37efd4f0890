"""Replace one section of benches/RESULTS.md, for the Python benches (the
Rust ones use results.rs)."""

import re
from pathlib import Path

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"


def replace_section(title: str, section: str) -> None:
    """Put `section` (starting `## {title}`) in place of the section of that title."""
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else "# Benchmark results\n"
    text = re.sub(rf"\n## {re.escape(title)}\n.*?(?=\n## |\Z)", "", text, flags=re.S)
    RESULTS_MD.write_text(text.rstrip("\n") + "\n\n" + section)
