"""What every stage's catalog queries stand on: the connection, transactions (the unit of work and the
writes every stage shares), errors and state."""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

from vgmed_build.errors import VgmedError

CATALOG_NAME = "catalog.sqlite"
IMAGES_DIR = "images"
_Open = TypeVar("_Open", bound="CatalogBase")
_Writes = TypeVar("_Writes", bound="Writes")


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


def sqlite_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite saying the disk (or quota) under the catalog is full: how a catalog
    write fails then, instead of an ``OSError`` (see ``vgmed_build.interrupt.disk_full``)."""
    return isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc)


def no_room_for(exc: sqlite3.Error, folder: Path) -> bool:
    """Whether SQLite's I/O error ``exc`` comes from a full disk under ``folder``: opening a WAL catalog
    there fails with a bare "disk I/O error" (SQLITE_IOERR_SHMSIZE, no errno) when not a byte is free."""
    io_error = getattr(exc, "sqlite_errorname", "").startswith("SQLITE_IOERR")
    return io_error and shutil.disk_usage(folder).free < 65536


class Writes:
    """An open unit of work's writes that every stage shares: the errors table and state.

    Only :meth:`CatalogBase.transaction` makes one, and it ends with its ``with`` block: a write after that
    is refused rather than committed on its own. Each stage's module adds its writes (``DraftingWrites``,
    ``JudgeWrites``, ``ReviewWrites``); ``vgmed_build.catalog.Transaction`` is all of them together.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._open: sqlite3.Connection | None = conn

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._open is None:
            raise CatalogError("this catalog transaction is over (committed or rolled back): write inside its "
                               "`with catalog.transaction() as tx:` block")
        return self._open

    def _end(self) -> None:
        self._open = None

    # --- errors: the one place the errors table is written ------------------------------------
    def record_error(
        self, stage: str, item: str, message: str, source: str = "", replace: bool = False, path: str = ""
    ) -> None:
        """Store a problem with one item; the same problem is stored once however often it recurs.

        ``replace``: the item's other problems of this stage go (an item has one current problem).
        ``path``: the file the problem is about, kept apart from ``message`` (shown as ``path: message``).
        """
        if replace:
            self._conn.execute(
                "DELETE FROM errors WHERE stage=? AND source=? AND item=? AND NOT (message=? AND path=?)",
                (stage, source, item, message, path),
            )
        self._conn.execute(
            "INSERT OR IGNORE INTO errors (stage, source, item, path, message, created_at) VALUES (?,?,?,?,?,?)",
            (stage, source, item, path, message, now_iso()),
        )

    def clear_errors(self, stage: str, item: str, source: str | None = None) -> None:
        """Forget the stored problems of one item (of ``source`` only, when given)."""
        if source is None:
            self._conn.execute("DELETE FROM errors WHERE stage=? AND item=?", (stage, item))
        else:
            self._conn.execute("DELETE FROM errors WHERE stage=? AND source=? AND item=?", (stage, source, item))

    # --- state: small key -> value facts of the build -----------------------------------------
    def set_state(self, key: str, value: str) -> None:
        self._conn.execute(
            "INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )

    def delete_state(self, key: str) -> None:
        self._conn.execute("DELETE FROM state WHERE key=?", (key,))


@dataclass
class CatalogBase:
    """An open build catalog's connection and the queries every stage shares (see ``Catalog``).

    ``conn`` is the catalog package's own (and tests'): a stage reads through named methods and writes
    through :meth:`transaction`, never through the connection (tests/test_catalog_conventions.py).
    """

    build_dir: Path
    conn: sqlite3.Connection

    @property
    def images_dir(self) -> Path:
        return self.build_dir / IMAGES_DIR

    def transaction(self) -> AbstractContextManager[Writes]:
        """One atomic unit of work with the shared writes (``Catalog.transaction`` has every stage's)."""
        return self._unit(Writes)

    @contextmanager
    def _unit(self, writes: type[_Writes]) -> Iterator[_Writes]:
        """BEGIN IMMEDIATE; ``writes`` on this connection until the block ends; COMMIT on normal exit,
        ROLLBACK on any exception."""
        self.conn.execute("BEGIN IMMEDIATE")
        tx = writes(self.conn)
        try:
            yield tx
        except BaseException:
            self.conn.rollback()
            raise
        finally:
            tx._end()
        self.conn.commit()

    def clear_stage_errors(self, stage: str) -> None:
        """Forget every stored problem of ``stage`` (a stage that redoes all its items at each run)."""
        with self.transaction():
            self.conn.execute("DELETE FROM errors WHERE stage=?", (stage,))

    # --- state: small key -> value facts of the build -----------------------------------------
    def get_state(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM state WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def build_id(self) -> str:
        """A random id of this build, made once: marks what the build creates elsewhere (Label Studio).

        Random rather than derived from the path, so it says nothing about where the data lives.
        """
        value = self.get_state("build.id")
        if value is None:
            with self.transaction() as tx:
                value = self.conn.execute("SELECT value FROM state WHERE key='build.id'").fetchone()
                value = value[0] if value else uuid.uuid4().hex
                tx.set_state("build.id", value)
        return value

    def close(self) -> None:
        self.conn.close()

    def __enter__(self: _Open) -> _Open:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
