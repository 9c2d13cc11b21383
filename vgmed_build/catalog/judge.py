"""The judge stage's catalog queries: the VLM judge's verdicts on drafts (``vgmed-build judge``)."""

from __future__ import annotations

import json
import sqlite3

from vgmed_build.catalog.base import CatalogBase


class JudgeQueries(CatalogBase):
    def judge_verdict_keys(self) -> set[tuple[str, str, str]]:
        """(draft id, judge, content hash) of every stored verdict: what a rerun skips."""
        return set(self.conn.execute("SELECT draft_id, judge, content_hash FROM judge_verdicts"))

    def add_judge_verdicts(self, conn: sqlite3.Connection, records: list[dict]) -> None:
        """Store verdict records inside the caller's transaction; one already stored is kept as it was."""
        conn.executemany(
            "INSERT OR IGNORE INTO judge_verdicts (draft_id, judge, content_hash, verdict, reason, record_json, "
            "created_at) VALUES (?,?,?,?,?,?,?)",
            [(r["draft_id"], r["judge"], r["content_hash"], r["verdict"], r["reason"],
              json.dumps(r, ensure_ascii=False, sort_keys=True), r["created_at"]) for r in records],
        )

    def judge_verdict_records(self) -> list[dict]:
        """Every stored verdict record, oldest first."""
        rows = self.conn.execute("SELECT record_json FROM judge_verdicts ORDER BY created_at, rowid")
        return [json.loads(r) for (r,) in rows]
