"""The build catalog: one SQLite file per build directory.

Every stage writes one unit of work (a source item, a draft, a review event) inside one
transaction, so a crash never leaves half an item and a rerun skips what is done. The schema is
versioned with ``PRAGMA user_version``; :data:`MIGRATIONS` upgrades old catalogs in place.
Nothing here may hold patient identifiers or secrets: callers store pseudonymous, relative data only.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

CATALOG_NAME = "catalog.sqlite"
IMAGES_DIR = "images"

# Each entry upgrades the schema from version i to i + 1. Append only; never edit a shipped entry.
MIGRATIONS: list[str] = [
    # v1: ingest, drafting, review.
    """
    CREATE TABLE sources (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        spec_json TEXT NOT NULL
    );
    -- One unit of ingest work (a volume pair, a DICOM series, a 2D image + masks).
    CREATE TABLE items (
        source TEXT NOT NULL REFERENCES sources(name),
        item_key TEXT NOT NULL,             -- path relative to the source root
        fingerprint TEXT NOT NULL,          -- hash of inputs + options; a change re-ingests
        status TEXT NOT NULL CHECK (status IN ('done', 'error')),
        n_images INTEGER NOT NULL DEFAULT 0,
        n_regions INTEGER NOT NULL DEFAULT 0,
        finished_at TEXT NOT NULL,
        PRIMARY KEY (source, item_key)
    );
    CREATE TABLE images (
        id TEXT PRIMARY KEY,                -- stable: hash of source, item and slice
        source TEXT NOT NULL,
        item_key TEXT NOT NULL,
        path TEXT NOT NULL UNIQUE,          -- relative to the build directory
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        record_json TEXT NOT NULL,
        FOREIGN KEY (source, item_key) REFERENCES items(source, item_key) ON DELETE CASCADE
    );
    CREATE TABLE regions (
        id TEXT PRIMARY KEY,                -- stable: hash of image id and label
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        source TEXT NOT NULL,
        label TEXT NOT NULL,
        modality TEXT NOT NULL,
        record_json TEXT NOT NULL           -- validates against schemas/region.schema.json
    );
    CREATE INDEX regions_image ON regions(image_id);
    CREATE TABLE errors (
        id INTEGER PRIMARY KEY,
        stage TEXT NOT NULL,
        source TEXT NOT NULL DEFAULT '',
        item TEXT NOT NULL,                 -- file or item the problem is about
        message TEXT NOT NULL,
        created_at TEXT NOT NULL,
        UNIQUE (stage, source, item, message)
    );
    CREATE TABLE drafts (
        id TEXT PRIMARY KEY,                -- stable: hash of region, question type and slot
        region_id TEXT NOT NULL REFERENCES regions(id) ON DELETE CASCADE,
        q_type TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('ok', 'rejected', 'error')),
        reason TEXT,
        record_json TEXT NOT NULL,          -- validates against schemas/draft.schema.json
        created_at TEXT NOT NULL
    );
    CREATE INDEX drafts_region ON drafts(region_id);
    CREATE TABLE llm_cache (
        key TEXT PRIMARY KEY,               -- hash of model, messages and parameters
        response_json TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE review_tasks (
        draft_id TEXT NOT NULL REFERENCES drafts(id) ON DELETE CASCADE,
        project TEXT NOT NULL,              -- 'review' or 'adjudication'
        project_id INTEGER NOT NULL,
        task_id INTEGER NOT NULL,
        content_hash TEXT NOT NULL,         -- what was pushed; a change updates the task
        pushed_at TEXT NOT NULL,
        PRIMARY KEY (draft_id, project)
    );
    CREATE TABLE review_events (
        id INTEGER PRIMARY KEY,
        draft_id TEXT NOT NULL,
        project TEXT NOT NULL,
        annotation_id INTEGER NOT NULL,
        revision TEXT NOT NULL,             -- annotation's updated_at: each edit is a new event
        reviewer TEXT NOT NULL,             -- pseudonymous reviewer id
        verdict TEXT NOT NULL,
        record_json TEXT NOT NULL,          -- validates against schemas/review.schema.json
        pulled_at TEXT NOT NULL,
        UNIQUE (annotation_id, revision)
    );
    CREATE INDEX review_events_draft ON review_events(draft_id);
    CREATE TABLE state (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # v2: indexes for the per-item lookups, so a stage's cost per item does not grow with the catalog
    # (tests/test_catalog_plans.py plans every stage's queries and fails on a scan of a growing table).
    """
    CREATE INDEX images_item ON images(source, item_key);   -- re-ingest of one item; the items cascade
    CREATE INDEX errors_stage_item ON errors(stage, item);  -- generate clears one region's errors
    """,
    # v3: drafting through the LLM provider's batch service (generate --batch).
    """
    CREATE TABLE llm_batches (
        id TEXT PRIMARY KEY,                -- ours, recorded before anything is uploaded
        input_file_id TEXT,                 -- the uploaded request file, once the upload answered
        batch_id TEXT,                      -- the service's batch, once known
        status TEXT NOT NULL,               -- 'preparing' | 'submitted' | the service's final status
        n_requests INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        finished_at TEXT
    );
    CREATE TABLE llm_batch_requests (
        key TEXT NOT NULL,                  -- the reply-cache key, sent as the line's custom_id
        batch TEXT NOT NULL REFERENCES llm_batches(id),
        body_json TEXT NOT NULL,            -- the chat-completions request body
        status_code INTEGER,                -- the line's HTTP status once downloaded
        reply_json TEXT,                    -- the line's response body once downloaded
        consumed INTEGER NOT NULL DEFAULT 0, -- 1 once a draft was stored from it
        PRIMARY KEY (key, batch)
    );
    CREATE INDEX llm_batch_requests_key ON llm_batch_requests(key);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


class CatalogError(RuntimeError):
    """The build directory or its catalog cannot be used."""


WITHDRAWN_TASKS_KEY = "review.withdrawn_tasks"  # state: [[project_id, task_id], ...] the next push deletes


@dataclass
class Withdrawn:
    """What withdrawing one source item removed (its review events stay, as history)."""

    image_paths: list[str]  # relative to the build directory; the caller deletes the files
    regions: int
    drafts: int
    tasks: int  # Label Studio tasks queued for deletion by the next `review push`
    reviewed_drafts: int  # drafts with review events, kept in review_events


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class Catalog:
    """An open build catalog. Use :func:`open_catalog`."""

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

    def record_error(self, stage: str, item: str, message: str, source: str = "") -> None:
        """Store a problem with one item; the same problem is stored once however often it recurs."""
        with self.transaction() as c:
            c.execute(
                "INSERT OR IGNORE INTO errors (stage, source, item, message, created_at) VALUES (?,?,?,?,?)",
                (stage, source, item, message, now_iso()),
            )

    def clear_errors(self, stage: str, source: str, item: str) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM errors WHERE stage=? AND source=? AND item=?", (stage, source, item))

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

    def item_keys(self, source: str) -> list[str]:
        """Keys of every item of ``source`` the catalog holds (done or failed)."""
        return [k for (k,) in self.conn.execute("SELECT item_key FROM items WHERE source=?", (source,))]

    def withdraw_item(self, source: str, key: str) -> Withdrawn:
        """Remove an item that left its source, with its images, regions, drafts and task records.

        One transaction. Review events are not removed (they are the history of who reviewed what),
        but a release only reads drafts, so none of the item reaches a release again. The item's Label
        Studio tasks are queued under WITHDRAWN_TASKS_KEY for the next push to delete on the server.
        """
        of_item = "SELECT id FROM images WHERE source=? AND item_key=?"
        regions = f"SELECT id FROM regions WHERE image_id IN ({of_item})"
        drafts = f"SELECT id FROM drafts WHERE region_id IN ({regions})"
        args = (source, key)
        with self.transaction() as c:
            paths = [p for (p,) in c.execute("SELECT path FROM images WHERE source=? AND item_key=?", args)]
            n_regions = c.execute(f"SELECT COUNT(*) FROM ({regions})", args).fetchone()[0]
            n_drafts = c.execute(f"SELECT COUNT(*) FROM ({drafts})", args).fetchone()[0]
            tasks = c.execute(f"SELECT project_id, task_id FROM review_tasks WHERE draft_id IN ({drafts})", args)
            tasks = [list(t) for t in tasks]
            reviewed = c.execute(
                f"SELECT COUNT(DISTINCT draft_id) FROM review_events WHERE draft_id IN ({drafts})", args
            ).fetchone()[0]
            if tasks:
                row = c.execute("SELECT value FROM state WHERE key=?", (WITHDRAWN_TASKS_KEY,)).fetchone()
                self.set_state(WITHDRAWN_TASKS_KEY, json.dumps((json.loads(row[0]) if row else []) + tasks), conn=c)
            c.execute("DELETE FROM items WHERE source=? AND item_key=?", args)  # cascades down to review_tasks
            c.execute("DELETE FROM errors WHERE stage='ingest' AND source=? AND item=?", args)
        return Withdrawn(paths, n_regions, n_drafts, len(tasks), reviewed)

    def withdrawn_tasks(self) -> list[tuple[int, int]]:
        """(project_id, task_id) of tasks whose items were withdrawn and are still on the server."""
        return [tuple(t) for t in json.loads(self.get_state(WITHDRAWN_TASKS_KEY, "[]"))]

    def forget_withdrawn_tasks(self, done: list[tuple[int, int]]) -> None:
        left = [list(t) for t in self.withdrawn_tasks() if t not in set(done)]
        with self.transaction() as c:
            self.set_state(WITHDRAWN_TASKS_KEY, json.dumps(left), conn=c)

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

    def regions(self, source: str | None = None) -> Iterator[dict]:
        """Region records in a stable order (by id)."""
        sql = "SELECT record_json FROM regions"
        args: tuple = ()
        if source is not None:
            sql += " WHERE source=?"
            args = (source,)
        for (rec,) in self.conn.execute(sql + " ORDER BY id", args):
            yield json.loads(rec)

    # --- the LLM batch service (generate --batch) -------------------------------------------------
    def add_llm_batch(self, batch: str, requests: list[tuple[str, dict]]) -> None:
        """Record a batch and its (key, body) requests before anything is uploaded (one transaction)."""
        with self.transaction() as c:
            c.execute("INSERT INTO llm_batches (id, status, n_requests, created_at) VALUES (?, 'preparing', ?, ?)",
                      (batch, len(requests), now_iso()))
            c.executemany("INSERT INTO llm_batch_requests (key, batch, body_json) VALUES (?,?,?)",
                          [(k, batch, json.dumps(b, ensure_ascii=False, sort_keys=True)) for k, b in requests])

    def update_llm_batch(self, batch: str, **fields) -> None:
        """Set input_file_id, batch_id, status or finished_at of one batch."""
        allowed = {"input_file_id", "batch_id", "status", "finished_at"}
        if not fields or set(fields) - allowed:
            raise ValueError(f"batch fields must be among {sorted(allowed)}, got {sorted(fields)}")
        with self.transaction() as c:
            c.execute(f"UPDATE llm_batches SET {', '.join(f'{k}=?' for k in fields)} WHERE id=?",
                      (*fields.values(), batch))

    def open_llm_batches(self) -> list[dict]:
        """Batches not finished yet (preparing or submitted), oldest first."""
        rows = self.conn.execute(
            "SELECT id, input_file_id, batch_id, status, n_requests FROM llm_batches "
            "WHERE status IN ('preparing', 'submitted') ORDER BY created_at, id").fetchall()
        return [dict(zip(("id", "input_file_id", "batch_id", "status", "n_requests"), r, strict=True)) for r in rows]

    def llm_batch_bodies(self, batch: str) -> list[tuple[str, dict]]:
        rows = self.conn.execute("SELECT key, body_json FROM llm_batch_requests WHERE batch=? ORDER BY rowid",
                                 (batch,)).fetchall()
        return [(k, json.loads(b)) for k, b in rows]

    def store_llm_batch_results(self, batch: str, results: dict[str, tuple[int, dict]], status: str) -> None:
        """The downloaded lines (key -> (status code, body)) and the batch's final status, together."""
        with self.transaction() as c:
            c.executemany("UPDATE llm_batch_requests SET status_code=?, reply_json=? WHERE key=? AND batch=?",
                          [(code, json.dumps(body, ensure_ascii=False), key, batch)
                           for key, (code, body) in results.items()])
            c.execute("UPDATE llm_batches SET status=?, finished_at=? WHERE id=?", (status, now_iso(), batch))

    def llm_batch_state(self) -> dict[str, dict]:
        """Per request key: the unconsumed downloaded reply (if any), whether a batch still waits on it,
        and how many of its batch lines failed so far (attempts)."""
        out: dict[str, dict] = {}
        rows = self.conn.execute(
            "SELECT r.key, b.status, r.status_code, r.reply_json, r.consumed FROM llm_batch_requests r "
            "JOIN llm_batches b ON b.id = r.batch ORDER BY b.created_at, b.rowid")
        for key, status, code, reply, consumed in rows:
            entry = out.setdefault(key, {"reply": None, "waiting": False, "failures": 0})
            if status in ("preparing", "submitted"):
                entry["waiting"] = True
            elif code is not None and code != 200:
                entry["failures"] += 1
            elif code is None:  # finished batch that never answered this line (expired, failed)
                entry["failures"] += 1
            if code is not None and not consumed:
                entry["reply"] = (code, json.loads(reply))
        return out

    def consume_llm_batch_replies(self, conn: sqlite3.Connection, keys: list[str]) -> None:
        """Mark downloaded replies used (inside the transaction storing their drafts)."""
        conn.executemany("UPDATE llm_batch_requests SET consumed=1 WHERE key=? AND status_code IS NOT NULL",
                         [(k,) for k in keys])

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_catalog(build_dir: str | Path, create: bool = True) -> Catalog:
    """Open (and create or migrate) the catalog of ``build_dir``."""
    build_dir = Path(build_dir)
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
        _migrate(conn, path)
    except sqlite3.DatabaseError as exc:
        raise CatalogError(f"{path}: not a usable vgmed catalog ({exc})") from exc
    return Catalog(build_dir=build_dir, conn=conn)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise CatalogError(
            f"{path}: catalog schema version {version} is newer than this vgmed ({SCHEMA_VERSION}); upgrade vgmed"
        )
    for target in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split_sql(MIGRATIONS[target]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target + 1}")
        except BaseException:
            conn.rollback()
            raise
        conn.commit()


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements (executescript would commit mid-migration)."""
    statements, current = [], []
    for line in script.splitlines():
        stripped = line.split("--", 1)[0]
        current.append(stripped)
        if stripped.rstrip().endswith(";"):
            stmt = "\n".join(current).strip()
            if stmt.strip(";").strip():
                statements.append(stmt)
            current = []
    tail = "\n".join(current).strip()
    if tail:
        statements.append(tail)
    return statements
