"""The catalog's SQLite schema: migrations applied in order, tracked with ``PRAGMA user_version``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from vgmed_build.catalog.base import CatalogError

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
    # v4: skipped items (read, but every structure filtered out) and the file an error is about as a
    # field of its own, so shared output pseudonymises it without searching the message.
    """
    ALTER TABLE items ADD COLUMN skip_reason TEXT;        -- set on a 'done' item with nothing kept
    ALTER TABLE errors ADD COLUMN path TEXT NOT NULL DEFAULT '';  -- shown as 'path: message'
    UPDATE errors SET path = item, message = substr(message, length(item) + 3)
        WHERE stage = 'ingest' AND item <> '' AND substr(message, 1, length(item) + 2) = item || ': ';
    """,
    # v5: the VLM judge's verdicts on drafts (vgmed-build judge), beside the lint result in drafts.status.
    # A verdict is about one content of its draft, from one judge (model and prompt): never overwritten.
    """
    CREATE TABLE judge_verdicts (
        draft_id TEXT NOT NULL REFERENCES drafts(id) ON DELETE CASCADE,
        judge TEXT NOT NULL,                -- model@prompt-hash
        content_hash TEXT NOT NULL,         -- the draft's question, answer, image and boxes as judged
        verdict TEXT NOT NULL CHECK (verdict IN ('ok', 'wrong_target', 'not_answerable', 'ambiguous',
                                                 'wrong_answer')),
        reason TEXT NOT NULL,
        record_json TEXT NOT NULL,          -- provenance: model, prompt hash, tokens, cost, cache hit
        created_at TEXT NOT NULL,
        PRIMARY KEY (draft_id, judge, content_hash)
    );
    """,
    # v6: annotations review pull could not store (no or unknown verdict, a broken box, task data rewritten
    # on the server), one row per annotation revision and problem, so `review status` reports them.
    """
    CREATE TABLE review_problems (
        id INTEGER PRIMARY KEY,
        project TEXT NOT NULL,
        task_id INTEGER NOT NULL,
        annotation_id INTEGER NOT NULL,     -- 0 when the annotation carries no usable id
        revision TEXT NOT NULL,             -- the annotation's updated_at ('' when it has none)
        reviewer TEXT NOT NULL,             -- pseudonym, '' when the annotation names no user
        draft_id TEXT NOT NULL,             -- '' when the task names no draft of this build
        problem TEXT NOT NULL,
        pulled_at TEXT NOT NULL,
        UNIQUE (project, task_id, annotation_id, revision, problem)
    );
    """,
    # v7: review pull looks up the recorded task of each exported task by its id, a batch at a time, and
    # pages the recorded task ids in order (issue 27: it no longer loads every task of the project).
    """
    CREATE INDEX review_tasks_task ON review_tasks(project, task_id);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the catalog at ``path`` up to SCHEMA_VERSION, one transaction per migration."""
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
