"""The layer order that README.md's Layout table gives is the order of the imports: every module
imports only modules of its own row or of rows above it.

Every import counts, deferred and type-only ones too (the graph of tests/test_import_cycles.py).
A module belongs to the most specific row naming it (``measure/run.py`` before ``measure/``).
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.test_import_cycles import import_graph

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| `(?P<unit>[\w/.]+)` \|")
ENTRY_POINTS = ("aia", "aia.__main__")  # the package's lazy names and `python -m aia`: above every row


def layout_rows() -> list[str]:
    """Module prefixes of the Layout table's rows, top to bottom: ``core/`` -> ``aia.core``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    units = [m["unit"] for line in section.split("\n") if (m := ROW.match(line))]
    return ["aia." + u.removesuffix("/").removesuffix(".py").replace("/", ".") for u in units]


def row_of(module: str, rows: list[str]) -> str | None:
    named = [r for r in rows if module == r or module.startswith(r + ".")]
    return max(named, key=len) if named else None


def test_the_rows_are_read():
    rows = layout_rows()
    assert {"aia.core", "aia.errors", "aia.cli", "aia.measure", "aia.measure.run"} <= set(rows)
    assert row_of("aia.measure.run", rows) == "aia.measure.run"
    assert row_of("aia.measure.teacher", rows) == "aia.measure"


def test_every_import_points_up_the_layout_table():
    rows = layout_rows()
    rank = {row: i for i, row in enumerate(rows)}
    graph = import_graph()
    modules = [m for m in graph if m not in ENTRY_POINTS]
    unlisted = sorted(m for m in modules if row_of(m, rows) is None)
    assert not unlisted, f"modules in no row of README.md's Layout table: {unlisted}"
    wrong = []
    for module in modules:
        here = row_of(module, rows)
        for dep in sorted(graph[module]):
            if dep in ENTRY_POINTS:
                wrong.append(f"{module} -> {dep} (import from the defining module)")
            elif rank[row_of(dep, rows)] > rank[here]:
                wrong.append(f"{module} -> {dep} (row {row_of(dep, rows)} is below row {here})")
    assert not wrong, "imports against the layer order of README.md's Layout table:\n" + "\n".join(wrong)
