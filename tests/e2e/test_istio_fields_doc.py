"""docs/istio-fields.md is the README's Istio field table: every row is honoured or refused, and
every test it names as showing a row exists (a renamed or removed test cannot leave the table
pointing at nothing)."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "istio-fields.md"


def rows():
    for line in DOC.read_text().splitlines():
        if not line.startswith("| `") and not line.startswith("| more") and not line.startswith("| two") and not line.startswith("| a "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3:
            yield line, cells


def test_every_row_says_honoured_accepted_or_refused():
    bad = [line for line, cells in rows()
           if not re.match(r"(honoured|accepted|refused)", cells[1])]
    assert bad == [], "rows whose status is neither honoured, accepted nor refused:\n" + "\n".join(bad)


def test_every_test_named_exists():
    e2e = {p.name: p.read_text() for p in (ROOT / "tests" / "e2e").glob("test_*.py")}
    unit = "\n".join(p.read_text() for p in (ROOT / "Tests").rglob("*.swift"))
    classes = set(re.findall(r"(?:final\s+)?class\s+(\w+)\s*:\s*XCTestCase", unit))
    missing = []
    for line, cells in rows():
        shown = " ".join(cells[2:]) + " " + cells[1]
        for f, fn in re.findall(r"e2e/(test_\w+\.py)::(test_\w+)", shown):
            if f not in e2e or not re.search(rf"def {fn}\(", e2e[f]):
                missing.append(f"e2e/{f}::{fn}")
        for cls, fn in re.findall(r"\b([A-Z]\w+Tests)\.(test\w+)", shown):
            if cls not in classes or not re.search(rf"func {fn}\(", unit):
                missing.append(f"{cls}.{fn}")
    assert missing == [], "docs/istio-fields.md names tests that do not exist: " + ", ".join(sorted(set(missing)))
