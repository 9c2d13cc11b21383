"""``--cell-edges authors``: the published SLAKE gt_tokens were made with the authors' float arithmetic
(box origin and size scaled separately, no tolerance). The 16 published records (240 x 240 MRI, a box edge
at 90 or 170) that exact edges miss are reproduced with it; exact edges stay the default."""

from __future__ import annotations

import json
import math
from pathlib import Path

from vgmed_eval.geometry import clip_geometry, published_geometry
from vgmed_eval.protocol import PUBLISHED, VGMED

RECORDS = Path(__file__).parent / "fixtures" / "published-slake-edges" / "slake_float_edges.jsonl"


def theirs(bbox: list[list[float]], width: int, height: int) -> set[tuple[int, int]]:
    """The authors' conversion written out: scale = 336 / size; x' = x * scale and w' = w * scale each in
    floats; cells floor(x' / 14) .. ceil((x' + w') / 14), [col, row] pairs."""
    out = set()
    for x, y, w, h in bbox:
        sx, sy = 336 / width, 336 / height
        x0, y0, w0, h0 = x * sx, y * sy, w * sx, h * sy
        out |= {(c, r) for c in range(math.floor(x0 / 14), math.ceil((x0 + w0) / 14))
                for r in range(math.floor(y0 / 14), math.ceil((y0 + h0) / 14))}
    return out


def test_the_float_edge_records_are_reproduced_with_the_authors_arithmetic():
    records = [json.loads(line) for line in RECORDS.read_text().splitlines()]
    assert len(records) == 16 and all(r["modality"] == "MRI" for r in records)
    assert 90 * 1.4 == 125.99999999999999  # the arithmetic at stake
    model = clip_geometry(240, 240, resize=336, crop=(336, 336), patch=14, pad_to_square=True)
    for r in records:
        gt = {tuple(c) for c in r["gt_tokens"]}
        boxes = [[x, y, x + w, y + h] for x, y, w, h in r["bbox"]]
        assert theirs(r["bbox"], 240, 240) == gt
        got = {}
        for edges in ("exact", "authors"):
            mask = published_geometry(model, "resize", edges).boxes_to_cells(boxes)
            got[edges] = {(int(c), int(rw)) for rw, c in zip(*mask.nonzero(), strict=True)}
        assert got["authors"] == gt
        assert got["exact"] < gt and 2 <= len(gt - got["exact"]) <= 9  # exact edges lose 2-9 cells


def test_exact_edges_by_default_authors_under_published():
    assert (VGMED.cell_edges, PUBLISHED.cell_edges) == ("exact", "authors")
    model = clip_geometry(240, 240, resize=336, crop=(336, 336), patch=14, pad_to_square=True)
    assert published_geometry(model, "model").cell_edges == "exact"
    assert published_geometry(model, "pad", "authors").cell_edges == "authors"
