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

    def current_judge_verdict(self, draft_id: str, content_hash: str) -> str | None:
        """The latest verdict of any judge on ``draft_id`` as it reads now (``content_hash``), or None:
        what ``judge.verdicts.current_verdicts`` keeps of the records, looked up by the primary key
        (one draft at a time, as release streams them)."""
        row = self.conn.execute(
            "SELECT verdict FROM judge_verdicts WHERE draft_id=? AND content_hash=? "
            "ORDER BY created_at DESC, rowid DESC LIMIT 1", (draft_id, content_hash)).fetchone()
        return None if row is None else row[0]


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
