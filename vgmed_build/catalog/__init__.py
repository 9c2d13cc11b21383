"""The build catalog: one SQLite file per build directory.

Every stage writes one unit of work (a source item, a draft, a review event) inside one
transaction, so a crash never leaves half an item and a rerun skips what is done. The schema is
versioned with ``PRAGMA user_version``; :data:`MIGRATIONS` upgrades old catalogs in place.
Nothing here may hold patient identifiers or secrets: callers store pseudonymous, relative data only.

Stage modules hold no SQL: every query is a named method of :class:`Catalog`, kept in the module of
the stage that asks it (``ingest``, ``drafting``, ``judge``, ``review``, ...; ``base`` holds what all share:
transactions, the errors table, state). ``Catalog`` is composed of them. tests/test_sql_in_catalog.py
fails on SQL anywhere else; tests/test_catalog_plans.py plans every statement the stages send.

Stages never hold a connection. A read is a method of ``Catalog``; so is a write that is a whole unit of
work by itself (``store_item``, ``withdraw_item``). Writes a stage groups into one unit are the methods of
the :class:`Transaction` that ``with catalog.transaction() as tx:`` yields (``tx.upsert_draft(rec)``,
``tx.record_error(...)``), each stage's kept beside its queries (``DraftingWrites`` in ``drafting``, ...):
committed together when the block ends, all rolled back if it raises.
tests/test_catalog_conventions.py fails on ``sqlite3`` or a connection anywhere outside this package.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from contextlib import AbstractContextManager
from pathlib import Path

from vgmed_build.catalog.base import (
    CATALOG_NAME,
    IMAGES_DIR,
    CatalogError,
    check_build_dir,
    no_room_for,
    now_iso,
    sqlite_disk_full,
)
from vgmed_build.catalog.drafting import DraftingQueries, DraftingWrites
from vgmed_build.catalog.ingest import IngestQueries, Withdrawn
from vgmed_build.catalog.judge import JudgeQueries, JudgeWrites
from vgmed_build.catalog.release import ReleaseQueries
from vgmed_build.catalog.review import WITHDRAWN_TASKS_KEY, ReviewQueries, ReviewWrites
from vgmed_build.catalog.schema import MIGRATIONS, SCHEMA_VERSION, migrate

__all__ = [
    "CATALOG_NAME",
    "IMAGES_DIR",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "WITHDRAWN_TASKS_KEY",
    "Catalog",
    "CatalogError",
    "Transaction",
    "Withdrawn",
    "now_iso",
    "open_catalog",
]


class Transaction(DraftingWrites, JudgeWrites, ReviewWrites):
    """One open unit of work, every stage's writes (and the shared ones: errors, state). Made only by
    ``Catalog.transaction()``; usable only inside its ``with`` block."""


class Catalog(IngestQueries, DraftingQueries, JudgeQueries, ReviewQueries, ReleaseQueries):
    """An open build catalog, every stage's queries. Use :func:`open_catalog`."""

    def transaction(self) -> AbstractContextManager[Transaction]:
        """One atomic unit of work, ``with catalog.transaction() as tx: tx.upsert_draft(rec)``: its writes
        are the methods of ``tx``, committed together on normal exit and all rolled back on any exception."""
        return self._unit(Transaction)


def open_catalog(build_dir: str | Path, create: bool = True) -> Catalog:
    """Open (and create or migrate) the catalog of ``build_dir``."""
    build_dir = Path(build_dir)
    check_build_dir(build_dir)
    path = build_dir / CATALOG_NAME
    if not path.exists() and not create:
        raise CatalogError(f"{build_dir}: no build catalog ({CATALOG_NAME}) here; run `vgmed-build ingest` first")
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / IMAGES_DIR).mkdir(exist_ok=True)
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=60)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        migrate(conn, path)
    except sqlite3.DatabaseError as exc:
        if sqlite_disk_full(exc):  # the catalog is fine: the command ends with the full disk's own line
            raise
        if no_room_for(exc, build_dir):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
        raise CatalogError(f"{path}: not a usable vgmed catalog ({exc})") from exc
    return Catalog(build_dir=build_dir, conn=conn)

