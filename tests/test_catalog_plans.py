"""Every catalog query a stage issues, planned by SQLite on a populated catalog: no stage may scan
a table that grows with the dataset once per item (that is what made ingest and release quadratic).

The stages run for real on the bundled sample plus a small images2d source (ingest twice, stats,
regions, generate twice, review push / pull against the session's Label Studio, an adopted orphan
task, an image withdrawn from its source and re-ingest + push, review status, release); SQLite's own trace hook
records each statement they send, and ``EXPLAIN QUERY PLAN`` says how SQLite runs it. A query that
must read every row (an export, a whole-table load done once per run) is allowed below, by name and
with the reason, and must then run fewer times than there are rows it could be repeated for.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field

import numpy as np
import pytest
from ingest_fixtures import SAMPLE_SOURCES
from PIL import Image
from test_full_chain import review

from vgmed_build.catalog import CATALOG_NAME, MIGRATIONS, open_catalog
from vgmed_build.catalog.ingest import LISTED_TABLE
from vgmed_build.cli import main
from vgmed_build.review.pull import pull
from vgmed_build.review.push import push
from vgmed_build.review.server import connect

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

# Tables whose row count grows with the dataset (sources and state hold a few rows per build).
GROWING = {"items", "images", "regions", "drafts", "errors", "llm_cache", "review_tasks", "review_events",
           "review_problems"}

# Whole-table reads, each done a fixed number of times per run: (start of the query, why it reads all).
WHOLE_TABLE = {
    "SELECT COUNT(*) FROM images": "ingest: the closing summary line counts the catalog",
    "SELECT COUNT(*) FROM regions": "ingest summary / generate progress total: one count per run",
    "SELECT source, status, skip_reason, COUNT(*) FROM items GROUP BY": "stats: counts every item",
    "SELECT source, COUNT(*) FROM images GROUP BY": "stats: counts every image",
    "SELECT source, COUNT(*) FROM regions GROUP BY": "stats: counts every region",
    "SELECT record_json FROM regions": "stats (sides) and `regions` (the export): every region record",
    "SELECT modality, COUNT(*) FROM regions GROUP BY": "stats: counts by modality",
    "SELECT label, COUNT(*) FROM regions GROUP BY": "stats: counts by label",
    "SELECT source, item, path, message FROM errors WHERE stage=": "stats: lists every ingest error",
    "SELECT source, label, MIN(json_extract(": "generate: every source's structures, once (what absent "
    "questions may ask about)",
    "SELECT COUNT(*) FROM drafts WHERE status IN": "review push: its progress total, one count per run",
    "SELECT id FROM drafts WHERE status=": "review status and triage: the ok (or rejected) drafts' ids, once",
    "SELECT project, COUNT(*) FROM review_tasks GROUP BY": "review status: tasks per project",
    "SELECT draft_id, project, record_json FROM review_events": "review status: every review event, once",
    "SELECT e.draft_id, d.record_json, e.project, e.record_json FROM review_events": "decisions: every review "
    "event with its draft, once, through the events' draft index (one reviewed draft at a time)",
    "SELECT id, record_json FROM drafts": "decisions: every draft, once",
    "SELECT source, image_id, COUNT(*), MIN(json_extract(": "generate: regions per image, streamed once per "
    "run (balancing each source's 'no' answers; only images with absent structures to spare are held)",
    "SELECT DISTINCT source, label FROM regions": "ingest: each source's label names, once per run (the warning "
    "about placeholder and raw names)",
    "SELECT project, task_id, annotation_id, revision, reviewer, draft_id, problem, pulled_at FROM review_problems":
    "review status: every annotation pull could not store, listed once",
}

_LITERAL = re.compile(r"'(?:[^']|'')*'|\b\d+(?:\.\d+)?\b")


def shape(sql: str) -> str:
    """A statement with its values replaced by ?, so one query repeated per item counts as one."""
    return " ".join(_LITERAL.sub("?", sql).split())


def allowed(sql: str) -> str | None:
    return next((why for start, why in WHOLE_TABLE.items() if shape(sql).startswith(shape(start))), None)


def scanned(conn: sqlite3.Connection, sql: str) -> list[str]:
    """The growing tables that SQLite reads in full (``SCAN t``, also via an index) to run ``sql``."""
    aliases = {alias: table for table, alias in re.findall(r"\b(?:FROM|JOIN)\s+(\w+)\s+(?:AS\s+)?(\w+)", sql, re.I)}
    tables = []
    for *_, detail in conn.execute("EXPLAIN QUERY PLAN " + sql).fetchall():
        m = re.match(r"SCAN (\w+)", detail)
        if m and aliases.get(m[1], m[1]) in GROWING:
            tables.append(aliases.get(m[1], m[1]))
    return tables


@dataclass
class Trace:
    """Statements sent to build catalogs while the test runs; ``untraced`` opens one without recording."""

    statements: list[str] = field(default_factory=list)
    untraced: Callable[..., sqlite3.Connection] = sqlite3.connect


@pytest.fixture
def traced(monkeypatch) -> Trace:
    trace = Trace(untraced=sqlite3.connect)

    def connect_traced(database, *args, **kwargs):
        conn = trace.untraced(database, *args, **kwargs)
        if str(database).endswith(CATALOG_NAME):
            conn.set_trace_callback(trace.statements.append)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect_traced)
    return trace


def test_shape_and_scan_detection_on_a_known_table(tmp_path):
    """The checker itself: an unindexed lookup is a SCAN, the migrated catalog's lookups are not."""
    with open_catalog(tmp_path / "b") as catalog:
        conn = catalog.conn
        assert shape("SELECT a FROM t WHERE k='x''y' AND n=12") == "SELECT a FROM t WHERE k=? AND n=?"
        assert scanned(conn, "SELECT id FROM images WHERE width > 3") == ["images"]
        assert scanned(conn, "SELECT * FROM drafts d JOIN sources s ON s.name = d.q_type") == ["drafts"]
        assert scanned(conn, "SELECT id FROM images WHERE source='s' AND item_key='k'") == []
        join = "SELECT r.id FROM regions r JOIN images i ON r.image_id = i.id WHERE i.source='s' AND i.item_key='k'"
        assert scanned(conn, join) == []
        assert scanned(conn, "DELETE FROM errors WHERE stage='generate' AND item='region x'") == []
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_no_stage_scans_a_growing_table_per_item(labelstudio, traced, tmp_path, capsys):
    build = tmp_path / "build"
    b = ["--build", str(build)]
    photos = tmp_path / "photos"  # an images2d source too: its mask pairing, and an item to withdraw
    for i in range(12):
        pixels = np.tile(np.arange(64, dtype=np.uint8) * 2 + 10 * i, (48, 1))  # a gradient: has contrast
        mask = np.zeros((48, 64), np.uint8)
        mask[5 + i : 20 + i, 10:30] = 255
        for path, arr in ((f"images/img_{i:02d}.png", pixels), (f"masks/img_{i:02d}_spot.png", mask)):
            (photos / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(photos / path)
    ingest = ["ingest", *b, "--sources", str(SAMPLE_SOURCES), "--source", f"images2d:{photos}", "--modality",
              "Dermoscopy", "--no-progress"]
    assert main(ingest) == 0
    assert main([*ingest, "--force"]) == 0
    assert main(["stats", *b]) == 0
    assert main(["regions", *b, "--out", str(tmp_path / "regions.jsonl")]) == 0
    assert main(["generate", *b]) == 0
    assert main(["generate", *b]) == 0
    own = traced.untraced(build / CATALOG_NAME)  # the test's own reads stay out of the trace
    with open_catalog(build, create=False) as catalog:
        pushed = push(catalog, labelstudio, reviewers_per_item=1, progress=False)
        assert pushed.created > 0
        first = connect(labelstudio)
        drafts = {i: json.loads(r) for i, r in own.execute("SELECT id, record_json FROM drafts WHERE status='ok'")}
        tasks = dict(own.execute("SELECT draft_id, task_id FROM review_tasks WHERE project='review'"))
        for draft_id in sorted(drafts)[:3]:
            review(first, tasks[draft_id], drafts[draft_id], "accept")
        assert pull(catalog, labelstudio, progress=False).new_events == 3
        assert pull(catalog, labelstudio, progress=False).new_events == 0
        # A push interrupted after the server took a task but before the catalog recorded it:
        orphan = sorted(drafts)[-1]
        own.execute("DELETE FROM review_tasks WHERE draft_id=?", (orphan,))
        own.commit()
        assert push(catalog, labelstudio, reviewers_per_item=1, progress=False).adopted == 1
    # An image leaves its source (withdrawn consent): the next ingest withdraws it, the next push
    # deletes its task on the server.
    (photos / "images" / "img_03.png").unlink()
    assert main(ingest) == 0
    assert own.execute("SELECT COUNT(*) FROM images WHERE item_key='images/img_03.png'").fetchone()[0] == 0
    with open_catalog(build, create=False) as catalog:
        push(catalog, labelstudio, reviewers_per_item=1, progress=False)
    assert main(["review", "status", *b]) == 0
    assert main(["release", *b, "--out", str(tmp_path / "rel"), "--include-unreviewed"]) == 0
    capsys.readouterr()

    statements = [s for s in traced.statements if re.match(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b", s, re.I)]
    runs = Counter(shape(s) for s in statements)
    assert len(runs) > 20  # every stage above reached the catalog
    with closing(own):
        own.execute(LISTED_TABLE)  # ingest's temporary table of listed keys, to plan its queries
        n_rows = min(own.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("images", "drafts"))
        assert n_rows > 10  # populated: a per-item query shows up more often than any allowed whole read
        bad, seen = [], set()
        for sql in statements:
            key = shape(sql)
            if key in seen:
                continue
            seen.add(key)
            found = scanned(own, sql)
            if not found:
                continue
            if allowed(sql) is None:
                bad.append(f"scans {', '.join(found)}: {key[:160]}")
            elif runs[key] >= n_rows:
                bad.append(f"allowed whole-table read runs {runs[key]} times (once per item?): {key[:160]}")
    assert bad == []
    unused = [start for start in WHOLE_TABLE if not any(shape(s).startswith(shape(start)) for s in statements)]
    assert unused == []  # every allowed whole read is one a stage really issues

