"""A small reviewed build for release tests: real CT and MR pixels (pydicom's test files) rendered to
PNG, regions with known boxes, drafts of every question type, and review decisions.

The catalog rows are inserted directly (as ingest and generate would store them) so the release
tests do not depend on the other stages; tests/test_full_chain.py runs the real stages.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from vgmed_build.catalog import open_catalog
from vgmed_build.identifiers import stable_id
from vgmed_build.release import ReleaseOptions, build_release
from vgmed_build.resources import schema_errors
from vgmed_build.review.decision import Decision

# A DICOM-style person name planted in a PNG text chunk: the release must strip it.
PLANTED_PNG_TEXT = "PLANTED^PATIENT"


def _file_sha256(path: Path) -> str:
    """What ingest stores for an image it wrote (release checks the file still has it)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _render(name: str) -> np.ndarray:
    ds = pydicom.dcmread(pydicom.data.get_testdata_file(name))
    px = ds.pixel_array.astype(np.float64)
    lo, hi = np.percentile(px, [1, 99])
    return (np.clip((px - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


# (source dataset, dicom file, modality, body part, side, [(label, mask rectangle x0, y0, x1, y1 exclusive)])
IMAGES = [
    (
        "ct-sample",
        "CT_small.dcm",
        "CT",
        "abdomen",
        [("liver", 10, 20, 50, 60, "right"), ("spleen", 80, 30, 100, 70, "left")],
    ),
    ("mr-sample", "MR_small.dcm", "MRI", "head", [("tumour", 5, 5, 21, 13, "unknown")]),
]


def make_build(root: Path) -> tuple[Path, dict[str, Decision], dict[str, dict]]:
    """Create a build directory; return it, decisions by draft id and drafts by id."""
    build = root / "build"
    catalog = open_catalog(build)
    drafts: dict[str, dict] = {}
    c = catalog.conn  # raw SQL of the fixture, inside the catalog's transaction
    with catalog.transaction():
        for dataset, dcm, modality, body_part, targets in IMAGES:
            pixels = _render(dcm)
            height, width = pixels.shape
            image_id = stable_id(dataset, dcm)
            rel = f"images/{image_id}.png"
            info = PngInfo()
            info.add_text("Comment", PLANTED_PNG_TEXT)
            Image.fromarray(pixels).save(build / rel, pnginfo=info)
            item_key = f"series/{dcm}"
            c.execute("INSERT INTO sources VALUES (?,?,?)", (dataset, "dicom", "{}"))
            c.execute(
                "INSERT INTO items (source, item_key, fingerprint, status, n_images, n_regions, finished_at)"
                " VALUES (?,?,?,?,?,?,?)",
                (dataset, item_key, "f" * 16, "done", 1, len(targets), "2026-01-01T00:00:00+00:00"),
            )
            c.execute(
                "INSERT INTO images VALUES (?,?,?,?,?,?,?,?)",
                (image_id, dataset, item_key, rel, width, height, _file_sha256(build / rel), "{}"),
            )
            for label, x0, y0, x1, y1, side in targets:
                region_id = stable_id(image_id, label)
                region = {
                    "id": region_id,
                    "image_id": image_id,
                    "image": rel,
                    "width": width,
                    "height": height,
                    "label": label,
                    "label_value": None,
                    "display_name": label,
                    "boxes": [[x0, y0, x1, y1]],
                    "area_ratio": (x1 - x0) * (y1 - y0) / (width * height),
                    "centroid": [(x0 + x1) / 2, (y0 + y1) / 2],
                    "side": side,
                    "modality": modality,
                    "body_part": body_part,
                    "plane": "axial",
                    "slice_index": 0,
                    "slice_position_mm": 0.0,
                    "pixel_spacing_mm": [1.0, 1.0],
                    "n_components": 1,
                    "source": {
                        "name": dataset,
                        "kind": "dicom",
                        "item": item_key,
                        "dataset": dataset,
                        "licence": "CC-BY-4.0",
                    },
                }
                c.execute(
                    "INSERT INTO regions VALUES (?,?,?,?,?,?)",
                    (region_id, image_id, dataset, label, modality, json.dumps(region)),
                )
                questions = [
                    ("localization", f"Is there a {label} in the image?", "yes"),
                    ("attribute", f"Is the {label} round or elongated?", "round"),
                ]
                if side in ("left", "right"):
                    questions.append(("position", f"On which side of the patient is the {label}?", side))
                for q_type, question, answer in questions:
                    draft_id = stable_id(region_id, q_type, "0")
                    draft = {
                        "id": draft_id,
                        "region_id": region_id,
                        "q_type": q_type,
                        "question": question,
                        "answer": answer,
                        "image": rel,
                        "boxes": [[x0, y0, x1, y1]],
                        "label": label,
                        "display_name": label,
                        "modality": modality,
                        "body_part": body_part,
                        "side": side,
                        "status": "ok",
                        "reason": None,
                        "provenance": {
                            "drafter": "templates",
                            "model": None,
                            "template": "t",
                            "template_hash": "0" * 64,
                            "params": {},
                            "prompt_tokens": 0,
                            "completion_tokens": 0,
                            "cost_usd": 0.0,
                            "created_at": "2026-01-01T00:00:00+00:00",
                        },
                    }
                    c.execute(
                        "INSERT INTO drafts VALUES (?,?,?,?,?,?,?)",
                        (
                            draft_id,
                            region_id,
                            q_type,
                            "ok",
                            None,
                            json.dumps(draft),
                            "2026-01-01T00:00:00+00:00",
                        ),
                    )
                    drafts[draft_id] = draft
    catalog.close()
    decisions = {
        d["id"]: Decision(d["id"], "accepted", d["question"], d["answer"], d["boxes"], 2, 1.0, False)
        for d in drafts.values()
    }
    return build, decisions, drafts


def find_draft(drafts: dict[str, dict], label: str, q_type: str) -> dict:
    return next(d for d in drafts.values() if d["label"] == label and d["q_type"] == q_type)


def add_review_event(
    catalog, draft: dict, reviewer: str, verdict: str, annotation_id: int, **changes
) -> None:
    """Store one review event as `review pull` does (the record validates against review.schema.json)."""
    stamp = f"2026-01-01T00:00:{annotation_id % 60:02d}+00:00"
    content = {k: changes.get(k, draft[k]) for k in ("question", "answer", "boxes")}
    record = {
        "draft_id": draft["id"],
        "project": "review",
        "project_id": 1,
        "task_id": annotation_id,
        "annotation_id": annotation_id,
        "revision": stamp,
        "reviewer": reviewer,
        "verdict": verdict,
        **content,
        "comment": None,
        "edited": content != {k: draft[k] for k in content},
        "dropped_boxes": 0,
        "created_at": stamp,
        "updated_at": stamp,
        "lead_time_s": 3.0,
    }
    assert schema_errors("review", record) == [], schema_errors("review", record)
    c = catalog.conn  # raw SQL of the fixture, inside the catalog's transaction
    with catalog.transaction():
        c.execute(
            "INSERT INTO review_events (draft_id, project, annotation_id, revision, reviewer, verdict,"
            " record_json, pulled_at) VALUES (?,?,?,?,?,?,?,?)",
            (draft["id"], "review", annotation_id, stamp, reviewer, verdict, json.dumps(record), stamp),
        )


def made_release(root: Path) -> Path:
    """The release of :func:`make_build`'s build under ``root``, written to ``root/rel`` at a fixed time."""
    build, decisions, _ = make_build(root)
    with open_catalog(build, create=False) as catalog:
        build_release(catalog, root / "rel", decisions, ReleaseOptions(created="2026-01-01T00:00:00Z"))
    return root / "rel"


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative POSIX path -> bytes), to show a folder unchanged byte for byte."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_jsonl(path: Path) -> list[dict]:
    """The records of a release's JSONL file, in order."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
