"""All 2,776 published SLAKE records' ``gt_tokens`` against vgmed's ``--protocol published`` geometry.

The records are the authors' two SLAKE files, copied unchanged (gzipped) into
``tests/fixtures/published-slake-full`` (SOURCE.md there). Their pictures (SLAKE 1.0) cannot be had here and
no public file read lists their sizes, so each picture's size is inferred from its own records: the one
side among the usual matrix sizes {240, 256, 288, 320, 512, 1024} (square) that reproduces every record of
that picture with the authors' arithmetic. Exactly one side fits each of the 580 pictures: CT 512, X-ray
1024, MRI 240 (xmlab41 and up), 256 (26 of xmlab0-40), 320 (9 of them) and 288 (xmlab16). With those sides
vgmed's own geometry (HuatuoGPT-Vision's CLIP-336 grid, ``resize`` mapping, ``authors`` cell edges)
reproduces all 2,776 records. The size assumption used before (CT 512, X-ray 1024, MRI 240 or 256)
reproduced 2,724: the other 52 are the 10 MRI pictures that need 320 or 288. What stays unverified is
only that the real pictures have these sizes; ``python tests/test_published_gt_tokens_full.py`` lists the
52 records with the sides each admits, for a check against a SLAKE copy (``Slake1.0/imgs/<id>/source.jpg``).
"""

from __future__ import annotations

import gzip
import json
import math
from collections import Counter
from functools import cache
from pathlib import Path

from vgmed_eval.geometry import clip_geometry, published_geometry

FILES = Path(__file__).parent / "fixtures" / "published-slake-full"
SIDES = (240, 256, 288, 320, 512, 1024)  # the usual square matrix sizes of SLAKE's CT / MRI / X-ray sources
ASSUMED = {"CT": (512,), "X-Ray": (1024,), "MRI": (240, 256)}  # the earlier square-size assumption


@cache
def records() -> tuple[dict, ...]:
    out = []
    for name in ("SLAKE_localization_questions.jsonl", "SLAKE_attribute_questions.jsonl"):
        lines = gzip.decompress((FILES / f"{name}.gz").read_bytes()).decode("utf-8").splitlines()
        out += [{**json.loads(line), "where": f"{name}:{n}"} for n, line in enumerate(lines, 1)]
    return tuple(out)


def theirs(bbox: list[list[float]], width: int, height: int) -> set[tuple[int, int]]:
    """The authors' conversion written out: scale = 336 / size, then x' = x * scale and w' = w * scale in
    floats, cells floor(x' / 14) .. ceil((x' + w') / 14) (the last one exclusive, at most 24), as [col, row]."""
    out = set()
    for x, y, w, h in bbox:
        sx, sy = 336 / width, 336 / height
        x0, y0, w0, h0 = x * sx, y * sy, w * sx, h * sy
        out |= {(c, r) for c in range(math.floor(x0 / 14), min(math.ceil((x0 + w0) / 14), 24))
                for r in range(math.floor(y0 / 14), min(math.ceil((y0 + h0) / 14), 24))}
    return out


def given(record: dict) -> set[tuple[int, int]]:
    return {(c, r) for c, r in record["gt_tokens"]}


@cache
def by_image() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in records():
        out.setdefault(r["image"], []).append(r)
    return out


def fitting_sides(image: str) -> list[int]:
    """The sides of SIDES at which the authors' arithmetic reproduces every record of ``image``."""
    return [s for s in SIDES if all(theirs(r["bbox"], s, s) == given(r) for r in by_image()[image])]


@cache
def inferred_sides() -> dict[str, int]:
    sides = {image: fitting_sides(image) for image in by_image()}
    ambiguous = {image: s for image, s in sides.items() if len(s) != 1}
    assert not ambiguous, f"pictures fitting no side or several: {ambiguous}"
    return {image: s[0] for image, s in sides.items()}


def vgmed_cells(record: dict, side: int, cell_edges: str) -> set[tuple[int, int]]:
    """vgmed's cells for a record: HuatuoGPT-Vision's grid (pad, CLIP 336, patch 14), the published mapping."""
    model = clip_geometry(side, side, resize=336, crop=(336, 336), patch=14, pad_to_square=True)
    boxes = [(x, y, x + w, y + h) for x, y, w, h in record["bbox"]]
    mask = published_geometry(model, "resize", cell_edges).boxes_to_cells(boxes)
    return {(int(c), int(r)) for r, c in zip(*mask.nonzero(), strict=True)}


def missed_by_assumption() -> list[dict]:
    """The records no side of the earlier assumption reproduces (with the sides that do fit their picture)."""
    return [{**r, "fits": fitting_sides(r["image"])} for r in records()
            if not any(theirs(r["bbox"], s, s) == given(r) for s in ASSUMED[r["modality"]])]


def test_each_picture_fits_exactly_one_usual_side():
    recs = records()
    assert len(recs) == 2776 and len(by_image()) == 580
    assert Counter(r["modality"] for r in recs) == {"CT": 1600, "MRI": 792, "X-Ray": 384}
    sides = inferred_sides()
    per_modality = Counter((by_image()[i][0]["modality"], s) for i, s in sides.items())
    assert per_modality == {("CT", 512): 237, ("X-Ray", 1024): 179, ("MRI", 240): 128, ("MRI", 256): 26,
                            ("MRI", 320): 9, ("MRI", 288): 1}
    # the non-240 MRI pictures are the first SLAKE series, xmlab0-xmlab40
    assert {int(i[5:]) for i, s in sides.items() if s in (256, 288, 320)} <= set(range(41))


def test_vgmed_published_geometry_reproduces_all_2776_records():
    sides = inferred_sides()
    wrong = [r["where"] for r in records() if vgmed_cells(r, sides[r["image"]], "authors") != given(r)]
    assert wrong == []
    # exact edges (vgmed's default) miss exactly the 16 float-edge records: 240 x 240 MRI, an edge at 90 or 170
    exact = [r for r in records() if vgmed_cells(r, sides[r["image"]], "exact") != given(r)]
    assert len(exact) == 16
    assert all(sides[r["image"]] == 240 and ({90.0, 170.0} & {v for b in r["bbox"] for v in b}) for r in exact)


def test_the_earlier_assumption_misses_52_records_of_10_mri_pictures():
    missed = missed_by_assumption()
    assert len(missed) == 52 and {r["modality"] for r in missed} == {"MRI"}
    assert {r["image"]: r["fits"] for r in missed} == {
        **{f"xmlab{n}": [320] for n in (9, 10, 11, 13, 14, 15, 19, 20, 21)}, "xmlab16": [288]}


if __name__ == "__main__":
    for r in missed_by_assumption():
        print(f"{r['where']}\t{r['image']}\t{r['modality']}\tbbox {r['bbox']}\tfits side {r['fits']} (not 240 / 256)")
