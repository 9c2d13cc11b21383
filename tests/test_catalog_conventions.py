"""No stage sees a database connection: ``sqlite3`` and the catalog's connection live in
``vgmed_build/catalog/`` only.

A stage reads through named ``Catalog`` methods and writes through ``with catalog.transaction() as tx:
tx.upsert_draft(rec)``, one calling convention for every write. Every module of ``vgmed_build`` and the
evaluator outside the catalog package (the same set tests/test_sql_in_catalog.py reads) is read with
``ast``: it may not import or name ``sqlite3``, nor have, pass or read anything called ``conn`` (the
catalog's connection attribute, the parameter of a write that took one), so a raw connection cannot come
back, typed or untyped.
"""

from __future__ import annotations

import ast
from pathlib import Path

from test_sql_in_catalog import CATALOG, modules

NAME = "conn"


def connection_uses(path: Path) -> list[str]:
    """Where ``path`` imports SQLite or handles a connection: ``line N: what``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        line = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{line}: imports {a.name}" for a in node.names if a.name.split(".")[0] == "sqlite3"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sqlite3":
            found.append(f"{line}: imports from {node.module}")
        elif isinstance(node, ast.Name) and node.id in ("sqlite3", NAME):
            found.append(f"{line}: names {node.id}")
        elif isinstance(node, ast.arg) and node.arg == NAME:
            found.append(f"{line}: takes a {NAME} parameter")
        elif isinstance(node, ast.keyword) and node.arg == NAME:
            found.append(f"{line}: passes {NAME}=")
        elif isinstance(node, ast.Attribute) and node.attr == NAME:
            found.append(f"{line}: reads .{NAME}")
    return found


def test_no_stage_sees_a_connection():
    offenders = {name: found for name, path in modules().items() if (found := connection_uses(path))}
    assert offenders == {}, (
        "outside vgmed_build/catalog/, read through Catalog methods and write through "
        "`with catalog.transaction() as tx: tx.<write>(...)`; never a sqlite3 connection"
    )


def test_the_checker_sees_every_kind(tmp_path):
    stage = tmp_path / "stage.py"
    stage.write_text(
        "import sqlite3\n"
        "from sqlite3 import Connection\n"
        "def write(catalog, conn: sqlite3.Connection):\n"
        "    catalog.upsert_draft(conn, {})\n"
        "    catalog.record_error('s', 'i', 'm', conn=catalog.conn)\n"
    )
    assert sorted(connection_uses(stage)) == [
        "line 1: imports sqlite3",
        "line 2: imports from sqlite3",
        "line 3: names sqlite3",
        "line 3: takes a conn parameter",
        "line 4: names conn",
        "line 5: passes conn=",
        "line 5: reads .conn",
    ]
    assert connection_uses(CATALOG / "base.py")  # the catalog itself does hold the connection
