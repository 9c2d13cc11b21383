"""The ingest stage's catalog queries: sources, items, images, regions and their errors."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vgmed_build.catalog.base import CatalogBase, now_iso
from vgmed_build.catalog.review import WITHDRAWN_TASKS_KEY

INGEST_STAGE = "ingest"
# What is odd about an item ingested all the same (an all-black picture): stored beside its errors.
INGEST_WARNING_STAGE = "ingest-warning"
# The keys a run's listing named (see IngestQueries.begin_listing).
LISTED_TABLE = "CREATE TEMP TABLE IF NOT EXISTS listed (source TEXT, item_key TEXT, PRIMARY KEY (source, item_key))"


@dataclass
class Withdrawn:
    """What withdrawing one source item removed (its review events stay, as history)."""

    image_paths: list[str]  # relative to the build directory; the caller deletes the files
    regions: int
    drafts: int
    tasks: int  # Label Studio tasks queued for deletion by the next `review push`
    reviewed_drafts: int  # drafts with review events, kept in review_events


class IngestQueries(CatalogBase):
    # --- ingest -------------------------------------------------------------------------------
    def stored_item(self, source: str, key: str) -> tuple[bool, str | None]:
        """Whether the catalog holds the item (done or failed), and its fingerprint when stored as done.

        One primary-key lookup per listed item: ingest never loads every item's fingerprint at once.
        """
        row = self.conn.execute(
            "SELECT status, fingerprint FROM items WHERE source=? AND item_key=?", (source, key)
        ).fetchone()
        return (False, None) if row is None else (True, row[1] if row[0] == "done" else None)

    # A run's listing: the keys each source listed, in a temporary table of this connection (on disk
    # past SQLite's cache), so withdrawing what a source no longer lists never holds every key in memory.
    def begin_listing(self) -> None:
        """Start an empty record of listed keys (this connection only; gone when it closes)."""
        self.conn.execute(LISTED_TABLE)
        self.conn.execute("DELETE FROM temp.listed")

    def mark_listed(self, source: str, key: str) -> None:
        self.conn.execute("INSERT OR IGNORE INTO temp.listed (source, item_key) VALUES (?,?)", (source, key))

    def unlisted_count(self, source: str) -> int:
        """How many stored items of ``source`` its listing did not name."""
        return self.conn.execute(
            "SELECT COUNT(*) FROM items i WHERE source=? AND NOT EXISTS "
            "(SELECT 1 FROM temp.listed l WHERE l.source=i.source AND l.item_key=i.item_key)",
            (source,),
        ).fetchone()[0]

    def unlisted_keys(self, source: str, batch: int = 1000) -> Iterator[str]:
        """Keys of the stored items of ``source`` its listing did not name, in key order, read in
        batches (the caller may withdraw each one as it comes)."""
        after = ""
        while True:
            keys = [
                k
                for (k,) in self.conn.execute(
                    "SELECT item_key FROM items i WHERE source=? AND item_key>? AND NOT EXISTS "
                    "(SELECT 1 FROM temp.listed l WHERE l.source=i.source AND l.item_key=i.item_key) "
                    "ORDER BY item_key LIMIT ?",
                    (source, after, batch),
                )
            ]
            yield from keys
            if len(keys) < batch:
                return
            after = keys[-1]

    def register_source(self, name: str, kind: str, spec_json: str) -> None:
        """Store a source's entry and forget its listing problems (those not tied to a stored item),
        in one transaction: listing finds them again if they still exist."""
        with self.transaction():
            self.conn.execute(
                "INSERT INTO sources (name, kind, spec_json) VALUES (?,?,?) ON CONFLICT(name) DO UPDATE "
                "SET kind=excluded.kind, spec_json=excluded.spec_json",
                (name, kind, spec_json),
            )
            self.conn.execute(
                "DELETE FROM errors WHERE stage=? AND source=? AND item NOT IN "
                "(SELECT item_key FROM items WHERE source=?)",
                (INGEST_STAGE, name, name),
            )

    def item_keys(self, source: str) -> list[str]:
        """Keys of every item of ``source`` the catalog holds (done or failed)."""
        return [k for (k,) in self.conn.execute("SELECT item_key FROM items WHERE source=?", (source,))]

    def store_item_error(self, source: str, key: str, fingerprint: str, message: str, path: str = "") -> None:
        """An item failed: marked so with its fingerprint, its previous problem replaced by ``message``
        about the file ``path`` (one transaction; its images and regions from an earlier run stay)."""
        with self.transaction() as tx:
            self.conn.execute(
                "INSERT INTO items (source, item_key, fingerprint, status, finished_at) VALUES (?,?,?,?,?) "
                "ON CONFLICT(source, item_key) DO UPDATE SET fingerprint=excluded.fingerprint, "
                "status='error', finished_at=excluded.finished_at",
                (source, key, fingerprint, "error", now_iso()),
            )
            tx.record_error(INGEST_STAGE, key, message, source, replace=True, path=path)

    def store_item(
        self,
        source: str,
        key: str,
        fingerprint: str,
        images: list[tuple[dict, list[dict]]],
        skip_reason: str | None = None,
        warnings: list[str] | tuple[str, ...] = (),
    ) -> list[str]:
        """An item done: its (image record, region records) upserted in one transaction (the PNGs
        are on disk already); images and regions it no longer has are deleted, its errors cleared.
        ``skip_reason``: why an item read correctly kept nothing (``images`` is empty then).
        ``warnings``: what is odd about it now (they replace its earlier warnings).

        Returns the paths (relative to the build directory) of the images it no longer has, for the
        caller to delete once the transaction is committed.
        """
        stale: list[str] = []
        n_regions = sum(len(regions) for _, regions in images)
        with self.transaction() as tx:
            self.conn.execute(
                "INSERT INTO items (source, item_key, fingerprint, status, n_images, n_regions, finished_at, "
                "skip_reason) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(source, item_key) DO UPDATE SET "
                "fingerprint=excluded.fingerprint, status='done', n_images=excluded.n_images, "
                "n_regions=excluded.n_regions, finished_at=excluded.finished_at, skip_reason=excluded.skip_reason",
                (source, key, fingerprint, "done", len(images), n_regions, now_iso(), skip_reason),
            )
            new_images = {rec["id"] for rec, _ in images}
            new_regions = {r["id"] for _, regions in images for r in regions}
            for image_id, path in self.conn.execute(
                "SELECT id, path FROM images WHERE source=? AND item_key=?", (source, key)
            ).fetchall():
                if image_id not in new_images:
                    stale.append(path)
                    self.conn.execute("DELETE FROM images WHERE id=?", (image_id,))
            for (region_id,) in self.conn.execute(
                "SELECT r.id FROM regions r JOIN images i ON r.image_id = i.id WHERE i.source=? AND i.item_key=?",
                (source, key),
            ).fetchall():
                if region_id not in new_regions:
                    self.conn.execute("DELETE FROM regions WHERE id=?", (region_id,))
            for rec, regions in images:
                self.conn.execute(
                    "INSERT INTO images (id, source, item_key, path, width, height, sha256, record_json) "
                    "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET path=excluded.path, "
                    "width=excluded.width, height=excluded.height, sha256=excluded.sha256, "
                    "record_json=excluded.record_json",
                    (
                        rec["id"],
                        source,
                        key,
                        rec["path"],
                        rec["width"],
                        rec["height"],
                        rec["sha256"],
                        json.dumps(rec, sort_keys=True),
                    ),
                )
                for reg in regions:
                    self.conn.execute(
                        "INSERT INTO regions (id, image_id, source, label, modality, record_json) "
                        "VALUES (?,?,?,?,?,?) "
                        "ON CONFLICT(id) DO UPDATE SET image_id=excluded.image_id, label=excluded.label, "
                        "modality=excluded.modality, record_json=excluded.record_json",
                        (reg["id"], rec["id"], source, reg["label"], reg["modality"], json.dumps(reg, sort_keys=True)),
                    )
            tx.clear_errors(INGEST_STAGE, key, source)
            tx.clear_errors(INGEST_WARNING_STAGE, key, source)
            for warning in warnings:
                tx.record_error(INGEST_WARNING_STAGE, key, warning, source, path=key)
        return stale

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
        with self.transaction() as tx:
            paths = [p for (p,) in self.conn.execute("SELECT path FROM images WHERE source=? AND item_key=?", args)]
            n_regions = self.conn.execute(f"SELECT COUNT(*) FROM ({regions})", args).fetchone()[0]
            n_drafts = self.conn.execute(f"SELECT COUNT(*) FROM ({drafts})", args).fetchone()[0]
            tasks = [list(t) for t in self.conn.execute(
                f"SELECT project_id, task_id FROM review_tasks WHERE draft_id IN ({drafts})", args)]
            reviewed = self.conn.execute(
                f"SELECT COUNT(DISTINCT draft_id) FROM review_events WHERE draft_id IN ({drafts})", args
            ).fetchone()[0]
            if tasks:
                row = self.conn.execute("SELECT value FROM state WHERE key=?", (WITHDRAWN_TASKS_KEY,)).fetchone()
                tx.set_state(WITHDRAWN_TASKS_KEY, json.dumps((json.loads(row[0]) if row else []) + tasks))
            self.conn.execute("DELETE FROM items WHERE source=? AND item_key=?", args)  # cascades down to review_tasks
            for stage in (INGEST_STAGE, INGEST_WARNING_STAGE):
                tx.clear_errors(stage, key, source)
        return Withdrawn(paths, n_regions, n_drafts, len(tasks), reviewed)

    def regions(self, source: str | None = None) -> Iterator[dict]:
        """Region records in a stable order (by id)."""
        sql = "SELECT record_json FROM regions"
        args: tuple = ()
        if source is not None:
            sql += " WHERE source=?"
            args = (source,)
        for (rec,) in self.conn.execute(sql + " ORDER BY id", args):
            yield json.loads(rec)

    def labels_by_source(self) -> dict[str, set[str]]:
        """The label names each source's regions carry (ingest's warnings about unusable names)."""
        out: dict[str, set[str]] = {}
        for source, label in self.conn.execute("SELECT DISTINCT source, label FROM regions"):
            out.setdefault(source, set()).add(label)
        return out

    def image_and_region_counts(self) -> tuple[int, int]:
        """How many images and regions the catalog holds (ingest's closing line)."""
        return tuple(self.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("images", "regions"))

    def ingest_stats(self) -> dict[str, Any]:
        """Counts by source, modality, label and side, the items skipped by reason, and the stored
        ingest errors and warnings (`stats`). A skipped item (read, nothing kept) counts as skipped, not done."""
        q = self.conn.execute
        by_source: dict[str, dict[str, int]] = {}
        empty = {"items_done": 0, "items_skipped": 0, "items_error": 0, "images": 0, "regions": 0}
        skipped: Counter[str] = Counter()
        for source, status, reason, n in q(
            "SELECT source, status, skip_reason, COUNT(*) FROM items GROUP BY source, status, skip_reason"
        ):
            counts = by_source.setdefault(source, dict(empty))
            counts["items_skipped" if reason is not None else f"items_{status}"] += n
            if reason is not None:
                skipped[reason] += n
        for table in ("images", "regions"):
            for source, n in q(f"SELECT source, COUNT(*) FROM {table} GROUP BY source"):
                by_source.setdefault(source, dict(empty))[table] = n
        sides: Counter[str] = Counter()
        for (rec,) in q("SELECT record_json FROM regions"):
            sides[json.loads(rec)["side"]] += 1
        return {
            "sources": by_source,
            "modalities": dict(q("SELECT modality, COUNT(*) FROM regions GROUP BY modality ORDER BY modality")),
            "labels": dict(q("SELECT label, COUNT(*) FROM regions GROUP BY label ORDER BY label")),
            "sides": dict(sorted(sides.items())),
            "skipped": dict(sorted(skipped.items())),
            **{
                kind: [
                    {"source": s, "item": i, "path": p, "problem": m}
                    for s, i, p, m in q(
                        "SELECT source, item, path, message FROM errors WHERE stage=? ORDER BY source, item, path",
                        (stage,),
                    )
                ]
                for kind, stage in (("errors", INGEST_STAGE), ("warnings", INGEST_WARNING_STAGE))
            },
        }
