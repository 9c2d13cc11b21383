"""`vgmed-build drafts`: the stored drafts as JSONL, one record a line (schemas/draft.schema.json)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TextIO

from vgmed_build.catalog import Catalog


def export_drafts(catalog: Catalog, status: str = "all", q_type: str | None = None) -> Iterator[dict]:
    """Stored drafts in a stable order, filtered by status ('ok', 'rejected', 'error', 'all')."""
    return catalog.drafts(status, q_type)


def write_drafts(catalog: Catalog, out: TextIO, status: str = "all", q_type: str | None = None) -> int:
    """Write the drafts :func:`export_drafts` selects to ``out``; how many."""
    n = 0
    for record in export_drafts(catalog, status, q_type):
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        n += 1
    return n
