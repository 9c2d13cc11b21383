"""The release stage's catalog queries (the drafts that may become records)."""

from __future__ import annotations

import json
from collections.abc import Iterator

from vgmed_build.catalog.base import CatalogBase


class ReleaseQueries(CatalogBase):
    # --- release ------------------------------------------------------------------------------
    def ok_drafts(self, batch: int = 64) -> Iterator[tuple[dict, dict | None, str | None]]:
        """(draft, its region's record or None, the SHA-256 ingest wrote its image with or None) of every
        draft that passed the automatic checks, in id order, read ``batch`` at a time (a release of
        millions of records never holds them all; a row holds a region's mask, a few KB: 64 rows keep the
        batch ~0.2 MB, and a query per 64 drafts costs nothing next to writing them)."""
        after = ""
        while True:
            rows = self.conn.execute(
                "SELECT d.id, d.record_json, r.record_json, i.sha256 FROM drafts d "
                "LEFT JOIN regions r ON r.id = d.region_id LEFT JOIN images i ON i.id = r.image_id "
                "WHERE d.status='ok' AND d.id > ? ORDER BY d.id LIMIT ?",
                (after, batch),
            ).fetchall()
            for _, draft, region, sha in rows:
                yield json.loads(draft), None if region is None else json.loads(region), sha
            if len(rows) < batch:
                return
            after = rows[-1][0]
