"""A scratch store for a check that must remember every key it met (`validate`: the record ids and the
images it read) without holding them in memory: a private temporary SQLite file, deleted when closed,
whose page cache bounds the memory used whatever the number of records."""

from __future__ import annotations

import json
import sqlite3


class SeenStore:
    """Record ids (where each was first met) and images (their size, or why they are unusable)."""

    def __init__(self) -> None:
        self.conn = sqlite3.connect("")  # "": a temporary on-disk database of this connection only
        self.conn.executescript(
            "CREATE TABLE ids (key TEXT PRIMARY KEY, at TEXT NOT NULL) WITHOUT ROWID;"
            "CREATE TABLE images (path TEXT PRIMARY KEY, width INTEGER, height INTEGER, error TEXT) WITHOUT ROWID;"
        )

    def __enter__(self) -> SeenStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()

    def first_seen(self, rid: object, at: str) -> str | None:
        """Where ``rid`` was met before, or None (and ``at`` is remembered) when it is new; ids are
        compared as JSON values (the string "1" and the number 1 differ)."""
        key = json.dumps(rid, sort_keys=True)
        row = self.conn.execute("SELECT at FROM ids WHERE key=?", (key,)).fetchone()
        if row is not None:
            return row[0]
        self.conn.execute("INSERT INTO ids (key, at) VALUES (?, ?)", (key, at))
        return None

    def any_id(self) -> bool:
        return self.conn.execute("SELECT 1 FROM ids LIMIT 1").fetchone() is not None

    def image(self, path: str) -> tuple[tuple[int, int] | None, str | None] | None:
        """(size, error) stored for ``path``, or None when it was not read yet."""
        row = self.conn.execute("SELECT width, height, error FROM images WHERE path=?", (path,)).fetchone()
        if row is None:
            return None
        width, height, error = row
        return (None if width is None else (width, height)), error

    def add_image(self, path: str, size: tuple[int, int] | None, error: str | None) -> None:
        width, height = size if size is not None else (None, None)
        self.conn.execute("INSERT INTO images (path, width, height, error) VALUES (?, ?, ?, ?)",
                          (path, width, height, error))

    def has_image(self, path: str) -> bool:
        return self.conn.execute("SELECT 1 FROM images WHERE path=?", (path,)).fetchone() is not None

    def count_images(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
