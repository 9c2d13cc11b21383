"""Grounding questions from a release (ours, or the published VGMED files in either layout).

File names, record lines, box conventions and image resolution come from
:mod:`vgmed_build.release_format`; this module only turns records into :class:`Question`. Every box
comes out as pixel-edge xyxy with x1/y1 exclusive (what :mod:`vgmed_eval.geometry` wants). A
malformed line becomes a :class:`ReadError` naming file and line, and reading goes on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from vgmed_build.errors import VgmedError
from vgmed_build.release_format import (
    DEFAULT_READING,
    MASK_FIELD,
    Q_TYPES,
    Box,
    BoxError,
    BoxReading,
    RecordFileError,
    expected_names,
    gt_tokens_of,
    question_file,
    read_lines,
    record_boxes,
    record_id,
    resolve_image,
)

# A Hugging Face Hub repository id (``org/name``), as `datasets.load_dataset` takes one.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


class ReleaseNotFound(VgmedError, ValueError):
    """``--release`` is neither a folder here nor a Hub dataset that could be fetched (the message says why)."""


def resolve_release(value: str | Path) -> Path:
    """The folder of ``--release``: a local folder as it is; otherwise an ``org/name`` Hub dataset id,
    downloaded (or found in the local cache, also with ``HF_HUB_OFFLINE=1``) by
    ``huggingface_hub.snapshot_download(repo_type="dataset")``, as `datasets` users expect."""
    path = Path(value)
    if path.exists() or not HUB_ID.fullmatch(str(value)):
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=str(value), repo_type="dataset"))
    except Exception as exc:  # offline and not cached, no such repository, gated, network: all say the same
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ReleaseNotFound(
            f"{value}: no such folder here, and the Hugging Face Hub dataset {value} could not be fetched "
            f"({type(exc).__name__}: {reason}); give a local release folder, or a Hub id you can download "
            "(HF_HUB_OFFLINE=1 uses only the local Hugging Face cache)"
        ) from exc


@dataclass
class Question:
    id: str
    image: Path  # absolute
    image_rel: str
    question: str
    boxes: list[Box]
    q_type: str
    modality: str
    source: str
    label: str = ""
    plane: str = ""  # axial / coronal / sagittal / 2d when the record says (vgmed releases), else ""
    extra: dict = field(default_factory=dict)
    where: str = ""  # "file:line" of the record
    box_convention: str = ""  # the convention the boxes were read in
    gt_tokens: set[tuple[int, int]] | None = None  # the published (col, row) cells, when the record has them
    gt_boxes: list[Box] = field(default_factory=list)  # the boxes as the authors' code reads them (for gt_tokens)
    gt_boxes_other: list[Box] = field(default_factory=list)  # ... read in the other format (xywh <-> xyxy)
    mask: dict | None = None  # the record's region mask (COCO RLE, decoded when scored); None: box only
    answer: str | None = None  # the record's reference answer (our releases; the published files have none)


@dataclass
class ReadError:
    id: str
    file: str
    line: int
    error: str


def _source_name(record: dict, file_name: str) -> str:
    source = record.get("source")
    if isinstance(source, dict):
        return str(source.get("dataset") or "unknown")
    if source:
        return str(source)
    if file_name.startswith("COCO_"):
        return "COCO"
    if file_name.startswith("SLAKE_"):
        return "SLAKE"
    image = record.get("image")
    parts = Path(image).parts if isinstance(image, str) else ()
    return parts[1] if len(parts) > 2 and parts[0] == "images" else (parts[0] if len(parts) > 1 else "unknown")


def parse_record(record: dict, root: Path, q_type: str, file_name: str, number: int, *,
                 images: Path | None = None, reading: BoxReading = DEFAULT_READING) -> Question:
    """One record as a :class:`Question` (ValueError with the reason when it cannot be one)."""
    if not isinstance(record, dict):
        raise ValueError("line is not a JSON object")
    if not isinstance(record.get("question"), str) or not record["question"].strip():
        raise ValueError("missing or empty 'question'")
    if "image" not in record:
        raise ValueError("missing 'image'")
    boxes, convention = record_boxes(record, file_name, reading)
    gt_tokens = gt_tokens_of(record)
    gt_boxes, other = [], []
    if gt_tokens:
        gt_boxes = record_boxes(record, file_name, BoxReading(reading.format, "edges"))[0]
        fmt = "xyxy" if convention == "xywh" else "xywh"
        try:
            other = record_boxes(record, file_name, BoxReading(fmt, "edges"))[0]
        except BoxError:
            other = []
    return Question(
        id=record_id(record, file_name, number),
        image=resolve_image(record["image"], root, images),
        image_rel=str(record["image"]),
        question=record["question"],
        boxes=boxes,
        q_type=str(record.get("q_type") or q_type),
        modality=str(record.get("modality") or "unknown"),
        source=_source_name(record, file_name),
        label=str(record.get("label") or ""),
        plane=str(record.get("plane") or ""),
        where=f"{file_name}:{number}",
        box_convention=convention,
        gt_tokens=gt_tokens,
        gt_boxes=gt_boxes,
        gt_boxes_other=other,
        mask=record.get(MASK_FIELD) if isinstance(record.get(MASK_FIELD), dict) else None,
        answer=str(record["answer"]) if record.get("answer") is not None else None,
    )


def read_release(root: str | Path, q_types: tuple[str, ...] = Q_TYPES, *, images: Path | None = None,
                 reading: BoxReading = DEFAULT_READING, control: bool = False
                 ) -> tuple[list[Question], list[ReadError]]:
    """Questions of the requested types (files that do not exist are skipped) and the bad lines.

    ``images``: where pictures live when not under ``root``; ``control``: prefer the COCO files.
    Questions about an absent structure (``absent: true``, answer "no", no boxes) are passed over:
    there is no region to measure attention against (they serve VQA accuracy).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"release directory {root} does not exist")
    questions, errors = [], []
    found = False
    for q_type in q_types:
        path = question_file(root, q_type, control)
        if path is None:
            continue
        found = True
        try:
            lines = list(read_lines(path))
        except RecordFileError as exc:
            errors.append(ReadError(path.stem, path.name, 0, str(exc)))
            continue
        for line in lines:
            if isinstance(line.record, dict) and line.record.get("absent") is True:
                continue
            try:
                if line.error:
                    raise ValueError(line.error)
                questions.append(parse_record(line.record, root, q_type, path.name, line.number,
                                              images=images, reading=reading))
            except (ValueError, TypeError) as exc:
                errors.append(ReadError(record_id(line.record, path.name, line.number), path.name, line.number,
                                        str(exc)))
    if not found:
        raise FileNotFoundError(f"{root}: none of {expected_names(q_types)} found")
    return questions, errors
