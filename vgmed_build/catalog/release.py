"""The release stage's catalog queries (the drafts that may become records)."""

from __future__ import annotations

import json

from vgmed_build.catalog.base import CatalogBase


class ReleaseQueries(CatalogBase):
    # --- release ------------------------------------------------------------------------------
    def ok_drafts(self) -> list[dict]:
        """Drafts that passed the automatic checks, in id order."""
        rows = self.conn.execute("SELECT record_json FROM drafts WHERE status='ok' ORDER BY id")
        return [json.loads(rec) for (rec,) in rows]
