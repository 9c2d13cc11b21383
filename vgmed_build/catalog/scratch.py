"""Scratch stores for a check that must remember every key it met (`validate`: the record ids, the
images it read, the files the manifest lists), put every path of a release in order, or look a value up
by draft id as `release` streams its drafts (the judge-passed drafts of a sampled release, the review
decisions), without holding them in memory: a private temporary SQLite file, deleted when closed, whose
page cache bounds the memory used whatever the number of records.

Paths are stored as their UTF-8 bytes (``surrogatepass``: a file name that is not UTF-8 survives), and
SQLite orders BLOBs byte by byte, which for UTF-8 is the order of the code points: the order of
Python's ``sorted``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import closing
from typing import Any, TypeVar


def _blob(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _text(blob: bytes) -> str:
    return blob.decode("utf-8", "surrogatepass")


def _connect() -> sqlite3.Connection:
    return sqlite3.connect("")  # "": a temporary on-disk database of this connection only


def sorted_unique(keys: Iterable[str]) -> Iterator[str]:
    """``sorted(set(keys))``, one key in memory at a time (the rest wait in a temporary file)."""
    with closing(_connect()) as conn:
        conn.execute("CREATE TABLE k (key BLOB PRIMARY KEY) WITHOUT ROWID")
        conn.executemany("INSERT OR IGNORE INTO k (key) VALUES (?)", ((_blob(k),) for k in keys))
        for (key,) in conn.execute("SELECT key FROM k ORDER BY key"):
            yield _text(key)


_S = TypeVar("_S", bound="_Scratch")  # typing.Self needs Python 3.11; the project supports 3.10


class _Scratch:
    """A scratch store's private temporary database, removed when closed (also as a context manager)."""

    def __init__(self, tables: str) -> None:
        self.conn = _connect()
        self.conn.executescript(tables)

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()


class SeenStore(_Scratch):
    """Record ids (where each was first met), images (their size, or why they are unusable) and the
    files a manifest lists (with their entries)."""

    def __init__(self) -> None:
        super().__init__(
            "CREATE TABLE ids (key TEXT PRIMARY KEY, at TEXT NOT NULL) WITHOUT ROWID;"
            "CREATE TABLE images (path TEXT PRIMARY KEY, width INTEGER, height INTEGER, error TEXT) WITHOUT ROWID;"
            "CREATE TABLE listed (path BLOB PRIMARY KEY, entry TEXT NOT NULL) WITHOUT ROWID;"
        )

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

    def add_listed(self, entries: Iterable[tuple[str, object]]) -> None:
        """Remember the manifest's ``(path, entry)`` pairs; a path listed twice keeps its last entry, as
        ``json.loads`` keeps the last value of a repeated key."""
        self.conn.executemany("INSERT OR REPLACE INTO listed (path, entry) VALUES (?, ?)",
                              ((_blob(rel), json.dumps(entry)) for rel, entry in entries))

    def is_listed(self, path: str) -> bool:
        return self.conn.execute("SELECT 1 FROM listed WHERE path=?", (_blob(path),)).fetchone() is not None

    def lists_under(self, folder: str) -> bool:
        """Whether a listed path lies inside ``folder`` (``folder/...``)."""
        low, high = _blob(folder + "/"), _blob(folder + "0")  # "0" follows "/": every "folder/..." lies between
        return self.conn.execute("SELECT 1 FROM listed WHERE path > ? AND path < ? LIMIT 1",
                                 (low, high)).fetchone() is not None

    def listed(self) -> Iterator[tuple[str, object]]:
        """The listed ``(path, entry)`` pairs in path order."""
        for path, entry in self.conn.execute("SELECT path, entry FROM listed ORDER BY path"):
            yield _text(path), json.loads(entry)


class ScratchMap(_Scratch, Mapping[str, Any]):
    """A read-mostly ``dict`` of string keys kept on disk: ``put`` each pair once, then look keys up
    (iteration is in key order). Values go through ``encode`` to something JSON holds and back through
    ``decode``; with neither, the map is a set of keys (every value None)."""

    def __init__(self, encode: Callable[[Any], object] = lambda v: v,
                 decode: Callable[[Any], Any] = lambda v: v) -> None:
        super().__init__("CREATE TABLE m (key BLOB PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
        self._encode, self._decode = encode, decode
        self._len = 0

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, Any]], encode: Callable[[Any], object] = lambda v: v,
           decode: Callable[[Any], Any] = lambda v: v) -> ScratchMap:
        """A map filled with ``pairs`` (each key once), for the caller to close; closed here when
        reading ``pairs`` fails, so no scratch file outlives the failure."""
        store = cls(encode, decode)
        try:
            for key, value in pairs:
                store.put(key, value)
        except BaseException:
            store.close()
            raise
        return store

    def put(self, key: str, value: Any = None) -> None:
        """Store ``value`` under a new ``key`` (a key put twice is a caller's bug: sqlite3.IntegrityError)."""
        self.conn.execute("INSERT INTO m (key, value) VALUES (?, ?)", (_blob(key), json.dumps(self._encode(value))))
        self._len += 1

    def __getitem__(self, key: str) -> Any:
        if not isinstance(key, str):
            raise KeyError(key)
        row = self.conn.execute("SELECT value FROM m WHERE key=?", (_blob(key),)).fetchone()
        if row is None:
            raise KeyError(key)
        return self._decode(json.loads(row[0]))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.conn.execute(
            "SELECT 1 FROM m WHERE key=?", (_blob(key),)).fetchone() is not None

    def __iter__(self) -> Iterator[str]:
        for (key,) in self.conn.execute("SELECT key FROM m ORDER BY key"):
            yield _text(key)

    def __len__(self) -> int:
        return self._len
