"""SQL lives in ``vgmed_build/catalog/`` only: a stage asks the catalog a named question
(``catalog.store_item(...)``, ``catalog.ingest_stats()``) and never holds a statement itself.

Every module of ``vgmed_build`` and the evaluator outside the catalog package is read with ``ast``:
it may neither call ``execute`` / ``executemany`` / ``executescript`` nor hold a string that starts
like an SQL statement, so that ``tests/test_catalog_plans.py`` finds every query in one place.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = (ROOT / "vgmed_build", ROOT / "eval" / "vgmed_eval")
CATALOG = ROOT / "vgmed_build" / "catalog"
CALLS = {"execute", "executemany", "executescript"}
STATEMENT = re.compile(
    r"^\s*(SELECT\s.*\bFROM\b|INSERT\s+(OR\s+[A-Z]+\s+)?INTO\s|UPDATE\s+\w+\s+SET\s|DELETE\s+FROM\s"
    r"|(CREATE|DROP)\s+(TABLE|INDEX)\s|PRAGMA\s|BEGIN\b|WITH\s+\w+\s+AS\b)",
    re.S,
)


def sql_in(path: Path) -> list[str]:
    """Where ``path`` runs or spells out SQL: ``line N: what``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in CALLS:
            found.append(f"line {node.lineno}: calls .{node.func.attr}()")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and STATEMENT.match(node.value):
            found.append(f"line {node.lineno}: SQL string {node.value.strip()[:40]!r}")
    return found


def modules() -> dict[str, Path]:
    return {
        path.relative_to(ROOT).as_posix(): path
        for folder in FOLDERS
        for path in sorted(folder.rglob("*.py"))
        if CATALOG not in path.parents
    }


def test_no_sql_outside_the_catalog():
    offenders = {name: found for name, path in modules().items() if (found := sql_in(path))}
    assert offenders == {}


def test_the_checker_sees_both_kinds(tmp_path):
    stage = tmp_path / "stage.py"
    stage.write_text('def f(c):\n    c.execute("x")\n    q = """\n    SELECT id FROM images"""\n    return q\n')
    assert sql_in(stage) == ["line 2: calls .execute()", "line 3: SQL string 'SELECT id FROM images'"]
    assert sql_in(CATALOG / "ingest.py")  # the catalog's own modules do hold SQL
