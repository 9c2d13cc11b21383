"""The judge stage's catalog queries: the VLM judge's verdicts on drafts (``vgmed-build judge``)."""

from __future__ import annotations

import json

from vgmed_build.catalog.base import CatalogBase, Writes


class JudgeQueries(CatalogBase):
    def judge_verdict_keys(self) -> set[tuple[str, str, str]]:
        """(draft id, judge, content hash) of every stored verdict: what a rerun skips."""
        return set(self.conn.execute("SELECT draft_id, judge, content_hash FROM judge_verdicts"))

    def judge_verdict_records(self) -> list[dict]:
        """Every stored verdict record, oldest first."""
        rows = self.conn.execute("SELECT record_json FROM judge_verdicts ORDER BY created_at, rowid")
        return [json.loads(r) for (r,) in rows]


class JudgeWrites(Writes):
    """The judge stage's writes inside one unit of work (``Catalog.transaction``)."""

    def add_judge_verdicts(self, records: list[dict]) -> None:
        """Store verdict records; one already stored is kept as it was."""
        self._conn.executemany(
            "INSERT OR IGNORE INTO judge_verdicts (draft_id, judge, content_hash, verdict, reason, record_json, "
            "created_at) VALUES (?,?,?,?,?,?,?)",
            [(r["draft_id"], r["judge"], r["content_hash"], r["verdict"], r["reason"],
              json.dumps(r, ensure_ascii=False, sort_keys=True), r["created_at"]) for r in records],
        )
