"""The drafting stage's catalog queries: regions to draft, drafts, the LLM reply cache, and the LLM
provider's batch service (``generate --batch``)."""

from __future__ import annotations

import json
from collections.abc import Iterator

from vgmed_build.catalog.base import CatalogBase, Writes, now_iso


class DraftingQueries(CatalogBase):
    # --- drafting: regions to draft, drafts, the LLM reply cache ------------------------------
    def count_regions(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM regions").fetchone()[0]

    def regions_in_chunks(self, limit: int | None, chunk: int) -> Iterator[dict]:
        """Region records by id (the first ``limit`` only), read ``chunk`` at a time after the last id
        seen: no cursor stays open while drafts are written, and nothing grows with the number of regions
        (no list of every id)."""
        last, left = "", limit  # every region id is a non-empty string: all sort after ""
        while left is None or left > 0:
            size = chunk if left is None else min(chunk, left)
            rows = self.conn.execute(
                "SELECT id, record_json FROM regions WHERE id > ? ORDER BY id LIMIT ?", (last, size)
            ).fetchall()
            for _, rec in rows:
                yield json.loads(rec)
            if len(rows) < size:
                return
            last = rows[-1][0]
            left = None if left is None else left - len(rows)

    def source_structures(self) -> dict[str, list[dict]]:
        """Per source, every structure it has regions of, sorted by label, with how questions name it
        (label, display_name, synonyms, category): what an absent-structure question may ask about."""
        rows = self.conn.execute(
            "SELECT source, label, MIN(json_extract(record_json, '$.display_name')), "
            "MIN(json_extract(record_json, '$.synonyms')), MIN(json_extract(record_json, '$.category')) "
            "FROM regions GROUP BY source, label ORDER BY source, label"
        ).fetchall()
        out: dict[str, list[dict]] = {}
        for source, label, display, synonyms, category in rows:
            out.setdefault(source, []).append(
                {"label": label, "display_name": display, "synonyms": json.loads(synonyms or "[]"),
                 "category": category or ""}
            )
        return out

    def image_region_counts(self) -> Iterator[tuple[str, str, int, list[str] | None]]:
        """Per image, by source then image id: (source, image id, regions on it, the labels with a pixel
        in it or None where ingest did not record them): what balancing the "no" questions needs."""
        rows = self.conn.execute(
            "SELECT source, image_id, COUNT(*), MIN(json_extract(record_json, '$.image_labels')) "
            "FROM regions GROUP BY source, image_id ORDER BY source, image_id"
        )
        for source, image_id, n, labels in rows:
            yield source, image_id, n, None if labels is None else json.loads(labels)

    def image_region_labels(self, image_id: str) -> list[str]:
        """The labels of the regions of one image, sorted (an index lookup)."""
        rows = self.conn.execute("SELECT label FROM regions WHERE image_id=? ORDER BY label", (image_id,))
        return [label for (label,) in rows]

    def draft_states(self, region_id: str) -> list[tuple]:
        """Per stored draft of one region, in the order they were stored: (id, status, drafter, model,
        question, reason, attempt). Asked region by region (an index lookup): a rerun over millions of
        drafts never loads them all."""
        return self.conn.execute(
            "SELECT id, status, json_extract(record_json, '$.provenance.drafter'), "
            "json_extract(record_json, '$.provenance.model'), json_extract(record_json, '$.question'), reason, "
            "json_extract(record_json, '$.provenance.params.attempt') FROM drafts WHERE region_id=? ORDER BY rowid",
            (region_id,),
        ).fetchall()

    def drafts(self, status: str = "all", q_type: str | None = None) -> Iterator[dict]:
        """Stored draft records by region, question type and id; ``status`` 'all' or one status."""
        sql, args = "SELECT record_json FROM drafts WHERE 1=1", []
        if status != "all":
            sql += " AND status=?"
            args.append(status)
        if q_type:
            sql += " AND q_type=?"
            args.append(q_type)
        for (rec,) in self.conn.execute(sql + " ORDER BY region_id, q_type, id", args):
            yield json.loads(rec)

    def llm_cache_keys(self) -> set[str]:
        return {k for (k,) in self.conn.execute("SELECT key FROM llm_cache")}

    def llm_cached(self, key: str) -> dict | None:
        row = self.conn.execute("SELECT response_json FROM llm_cache WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    # --- drafting: the LLM batch service (generate --batch) ---------------------------------
    def add_llm_batch(self, batch: str, requests: list[tuple[str, dict]]) -> None:
        """Record a batch and its (key, body) requests before anything is uploaded (one transaction)."""
        with self.transaction():
            self.conn.execute(
                "INSERT INTO llm_batches (id, status, n_requests, created_at) VALUES (?, 'preparing', ?, ?)",
                (batch, len(requests), now_iso()),
            )
            self.conn.executemany(
                "INSERT INTO llm_batch_requests (key, batch, body_json) VALUES (?,?,?)",
                [(k, batch, json.dumps(b, ensure_ascii=False, sort_keys=True)) for k, b in requests],
            )

    def update_llm_batch(self, batch: str, **fields) -> None:
        """Set input_file_id, batch_id, status or finished_at of one batch."""
        allowed = {"input_file_id", "batch_id", "status", "finished_at"}
        if not fields or set(fields) - allowed:
            raise ValueError(f"batch fields must be among {sorted(allowed)}, got {sorted(fields)}")
        with self.transaction():
            self.conn.execute(f"UPDATE llm_batches SET {', '.join(f'{k}=?' for k in fields)} WHERE id=?",
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
        with self.transaction():
            self.conn.executemany(
                "UPDATE llm_batch_requests SET status_code=?, reply_json=? WHERE key=? AND batch=?",
                [(code, json.dumps(body, ensure_ascii=False), key, batch) for key, (code, body) in results.items()],
            )
            self.conn.execute("UPDATE llm_batches SET status=?, finished_at=? WHERE id=?",
                              (status, now_iso(), batch))

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


class DraftingWrites(Writes):
    """The drafting stage's writes inside one unit of work (``Catalog.transaction``)."""

    def upsert_draft(self, rec: dict) -> None:
        """Insert or update one draft record (never INSERT OR REPLACE: that would cascade-delete its
        review tasks)."""
        self._conn.execute(
            "INSERT INTO drafts (id, region_id, q_type, status, reason, record_json, created_at) "
            "VALUES (?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET status=excluded.status, "
            "reason=excluded.reason, record_json=excluded.record_json, created_at=excluded.created_at",
            (
                rec["id"],
                rec["region_id"],
                rec["q_type"],
                rec["status"],
                rec["reason"],
                json.dumps(rec, ensure_ascii=False),
                rec["provenance"]["created_at"],
            ),
        )

    def cache_llm_replies(self, replies: dict[str, dict]) -> None:
        """Store validated replies (cache key -> reply)."""
        created = now_iso()
        self._conn.executemany(
            "INSERT OR REPLACE INTO llm_cache (key, response_json, created_at) VALUES (?,?,?)",
            [(k, json.dumps(v, ensure_ascii=False), created) for k, v in replies.items()],
        )

    def consume_llm_batch_replies(self, keys: list[str]) -> None:
        """Mark downloaded replies used (in the unit of work storing their drafts)."""
        self._conn.executemany("UPDATE llm_batch_requests SET consumed=1 WHERE key=? AND status_code IS NOT NULL",
                               [(k,) for k in keys])
