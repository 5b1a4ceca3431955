"""The README's real-data figures and the study page's are the ones the scripts wrote (results/)."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def section(text: str, title: str) -> str:
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def test_every_real_data_table_row_is_the_summarys():
    readme = section((REPO / "README.md").read_text(), "Real data")
    summary = (REPO / "results" / "mnist_family" / "summary.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("|") and "±" in line]
    assert len(rows) >= 10, "the real-data section quotes no table of the summary"
    missing = [row for row in rows if row not in summary]
    assert missing == []


def test_the_real_data_section_names_the_machine_the_wall_time_and_n():
    readme = section((REPO / "README.md").read_text(), "Real data")
    assert re.search(r"\b3 seeds\b", readme) and "scripts/reproduce_mnist_family.sh" in readme
    assert re.search(r"\d+ min", readme) and "CPU" in readme


def test_the_study_page_quotes_the_studys_rows():
    page = (REPO / "docs" / "study.md").read_text()
    written = (REPO / "results" / "block_study" / "study.md").read_text() + \
        (REPO / "results" / "block_study" / "profile_variants.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| ") and not line.startswith("| rule |")
            and not line.startswith("| model |") and not line.startswith("| evidence")]
    assert len(rows) >= 30
    assert [row for row in rows if row not in written] == []
