"""Read grounding questions from our releases and from the published VGMED files.

All boxes come out as pixel-edge xyxy with x1/y1 exclusive (what :mod:`vgmed_eval.geometry` wants):
- our release: ``bbox`` plus ``bbox_convention`` (``xyxy_exclusive`` as is; ``xyxy_inclusive``: +1);
- published VGMED: ``bbox`` (fallback ``original_bboxes``) are inclusive max indices (min/max of the
  mask's pixels), so +1; SLAKE items are ``[x, y, w, h]`` (recognised by a ``bbox_format`` field or
  "slake" in the source or image path) -> ``[x, y, x + w, y + h]``.
A malformed line becomes a :class:`ReadError` and reading goes on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

FILES = {"localization": "VGMED_localization.jsonl", "attribute": "VGMED_attribute.jsonl"}


@dataclass
class Question:
    id: str
    image: Path  # absolute
    image_rel: str
    question: str
    boxes: list[tuple[float, float, float, float]]
    q_type: str
    modality: str
    source: str
    label: str = ""
    extra: dict = field(default_factory=dict)


@dataclass
class ReadError:
    id: str
    file: str
    line: int
    error: str


def _is_slake(record: dict) -> bool:
    fmt = str(record.get("bbox_format", "")).lower()
    if fmt:
        return fmt == "xywh"
    source = record.get("source")
    source = source.get("dataset", "") if isinstance(source, dict) else str(source or "")
    return "slake" in source.lower() or "slake" in str(record.get("image", "")).lower()


def _as_box_list(raw) -> list[list[float]]:
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"bbox must be a non-empty list, got {raw!r}")
    boxes = [raw] if all(isinstance(v, (int, float)) for v in raw) else raw
    out = []
    for box in boxes:
        if not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
            raise ValueError(f"each box needs 4 numbers, got {box!r}")
        out.append([float(v) for v in box])
    return out


def convert_boxes(record: dict) -> list[tuple[float, float, float, float]]:
    """The record's boxes as exclusive pixel-edge xyxy."""
    raw = record.get("bbox")
    if raw is None:
        raw = record.get("original_bboxes")
    if raw is None:
        raise ValueError("no 'bbox' or 'original_bboxes' field")
    boxes = _as_box_list(raw)
    convention = record.get("bbox_convention")
    if convention is None:
        convention = "xywh" if _is_slake(record) else "xyxy_inclusive"
    if convention == "xywh":
        out = [(x, y, x + w, y + h) for x, y, w, h in boxes]
    elif convention == "xyxy_inclusive":
        out = [(x0, y0, x1 + 1, y1 + 1) for x0, y0, x1, y1 in boxes]
    elif convention == "xyxy_exclusive":
        out = [tuple(b) for b in boxes]
    else:
        raise ValueError(f"unknown bbox_convention {convention!r}")
    for box in out:
        if box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(f"empty box {list(box)} (convention {convention})")
    return out


def _source_name(record: dict) -> str:
    source = record.get("source")
    if isinstance(source, dict):
        return str(source.get("dataset") or "unknown")
    if source:
        return str(source)
    parts = Path(str(record.get("image", ""))).parts
    return parts[1] if len(parts) > 2 and parts[0] == "images" else (parts[0] if len(parts) > 1 else "unknown")


def parse_record(record: dict, root: Path, q_type: str, fallback_id: str) -> Question:
    if not isinstance(record, dict):
        raise ValueError("line is not a JSON object")
    for key in ("image", "question"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise ValueError(f"missing or empty {key!r}")
    return Question(
        id=str(record.get("id") or fallback_id),
        image=(root / record["image"]).resolve(),
        image_rel=record["image"],
        question=record["question"],
        boxes=convert_boxes(record),
        q_type=str(record.get("q_type") or q_type),
        modality=str(record.get("modality") or "unknown"),
        source=_source_name(record),
        label=str(record.get("label") or ""),
    )


def read_release(root: str | Path, q_types: tuple[str, ...] = ("localization", "attribute")
                 ) -> tuple[list[Question], list[ReadError]]:
    """Questions of the requested types (files that do not exist are skipped) and the bad lines."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"release directory {root} does not exist")
    questions, errors = [], []
    found = False
    for q_type in q_types:
        path = root / FILES[q_type]
        if not path.exists():
            continue
        found = True
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                fallback = f"{path.stem}:{number}"
                record = None
                try:
                    record = json.loads(line)
                    questions.append(parse_record(record, root, q_type, fallback))
                except (ValueError, TypeError) as exc:
                    rid = record.get("id") if isinstance(record, dict) and record.get("id") else fallback
                    errors.append(ReadError(str(rid), path.name, number, str(exc)))
    if not found:
        raise FileNotFoundError(f"{root}: none of {', '.join(FILES[t] for t in q_types)} found")
    return questions, errors
