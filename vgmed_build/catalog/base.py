"""What every stage's catalog queries stand on: the connection, transactions, errors and state."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

from vgmed_build.errors import VgmedError

CATALOG_NAME = "catalog.sqlite"
IMAGES_DIR = "images"
_Open = TypeVar("_Open", bound="CatalogBase")


class CatalogError(VgmedError, RuntimeError):
    """The build directory or its catalog cannot be used."""


def check_build_dir(build_dir: Path) -> None:
    """Refuse a ``--build`` that names something other than a folder (a file, a dangling link) before
    any stage writes under it; a path that does not exist yet is fine (ingest creates it)."""
    if build_dir.is_dir() or not (build_dir.exists() or build_dir.is_symlink()):
        return
    what = "a file" if build_dir.is_file() else "a broken symbolic link" if not build_dir.exists() else "not a folder"
    raise CatalogError(f"{build_dir}: is {what}, not a build directory; give --build a folder (new or of an earlier "
                       "build)")


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class CatalogBase:
    """An open build catalog's connection and the queries every stage shares (see ``Catalog``)."""

    build_dir: Path
    conn: sqlite3.Connection

    @property
    def images_dir(self) -> Path:
        return self.build_dir / IMAGES_DIR

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit of work: committed on success, rolled back on any exception."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.rollback()
            raise
        self.conn.commit()

    # --- errors: the one place the errors table is written ------------------------------------
    def record_error(
        self,
        stage: str,
        item: str,
        message: str,
        source: str = "",
        conn: sqlite3.Connection | None = None,
        replace: bool = False,
        path: str = "",
    ) -> None:
        """Store a problem with one item; the same problem is stored once however often it recurs.

        ``replace``: the item's other problems of this stage go (an item has one current problem).
        ``conn``: inside the caller's transaction (else in one of its own).
        ``path``: the file the problem is about, kept apart from ``message`` (shown as ``path: message``).
        """
        if conn is None:
            with self.transaction() as c:
                self.record_error(stage, item, message, source, c, replace, path)
            return
        if replace:
            conn.execute(
                "DELETE FROM errors WHERE stage=? AND source=? AND item=? AND NOT (message=? AND path=?)",
                (stage, source, item, message, path),
            )
        conn.execute(
            "INSERT OR IGNORE INTO errors (stage, source, item, path, message, created_at) VALUES (?,?,?,?,?,?)",
            (stage, source, item, path, message, now_iso()),
        )

    def clear_errors(
        self, stage: str, item: str, source: str | None = None, conn: sqlite3.Connection | None = None
    ) -> None:
        """Forget the stored problems of one item (of ``source`` only, when given).

        ``conn``: inside the caller's transaction (else in one of its own).
        """
        if conn is None:
            with self.transaction() as c:
                self.clear_errors(stage, item, source, c)
            return
        if source is None:
            conn.execute("DELETE FROM errors WHERE stage=? AND item=?", (stage, item))
        else:
            conn.execute("DELETE FROM errors WHERE stage=? AND source=? AND item=?", (stage, source, item))

    def clear_stage_errors(self, stage: str) -> None:
        """Forget every stored problem of ``stage`` (a stage that redoes all its items at each run)."""
        with self.transaction() as c:
            c.execute("DELETE FROM errors WHERE stage=?", (stage,))

    # --- state: small key -> value facts of the build -----------------------------------------
    def get_state(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM state WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_state(self, key: str, value: str, conn: sqlite3.Connection | None = None) -> None:
        (conn or self.conn).execute(
            "INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )
        if conn is None:
            self.conn.commit()

    def delete_state(self, key: str, conn: sqlite3.Connection | None = None) -> None:
        (conn or self.conn).execute("DELETE FROM state WHERE key=?", (key,))
        if conn is None:
            self.conn.commit()

    def build_id(self) -> str:
        """A random id of this build, made once: marks what the build creates elsewhere (Label Studio).

        Random rather than derived from the path, so it says nothing about where the data lives.
        """
        value = self.get_state("build.id")
        if value is None:
            with self.transaction() as c:
                value = c.execute("SELECT value FROM state WHERE key='build.id'").fetchone()
                value = value[0] if value else uuid.uuid4().hex
                self.set_state("build.id", value, conn=c)
        return value

    def close(self) -> None:
        self.conn.close()

    def __enter__(self: _Open) -> _Open:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
