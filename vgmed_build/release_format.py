"""The VGMED release on disk: file names, records, box conventions and checksums, in one place.

Three layouts are read:
- ours (``vgmed-build release``): ``VGMED_{localization,attribute}.jsonl`` + ``images/`` +
  ``manifest.json``; every record states its ``bbox_convention``;
- the hub layout of the published release (``guimeng-liu/VGMED``): the same two names plus the natural-
  image control files ``COCO_{localization,attribute}.jsonl``, ``image`` relative to the root;
- the older submission layout: ``SLAKE_*_questions.jsonl`` / ``VGMED_*_questions.jsonl`` /
  ``COCO_*_questions.jsonl``, ``image`` a SLAKE folder id (``xmlab462``) or a COCO val2014 id (int).

Boxes of a published record are never guessed silently: an explicit ``--bbox-format`` wins, then the
record's own ``bbox_format``, then the authors' rule (``[x, y, w, h]`` for images under ``Slake*``,
for a bare SLAKE folder id or COCO integer id, for records whose ``source`` is SLAKE, for every
record of the older layout and of the COCO files;
``[x0, y0, x1, y1]`` otherwise). Every box that
is empty or inverted after conversion is a :class:`BoxError` naming the box and the convention.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal, get_args

from vgmed_build.errors import VgmedError
from vgmed_build.modality import NATURAL as NATURAL_MODALITY

# ---------------------------------------------------------------- file names

LOCALIZATION_FILE = "VGMED_localization.jsonl"
ATTRIBUTE_FILE = "VGMED_attribute.jsonl"
MANIFEST_FILE = "manifest.json"
CARD_FILE = "README.md"
RELEASE_FORMAT = "vgmed-release"  # the manifest's "format": how a release proves it is ours
RELEASE_IMAGES = "images"
RELEASE_SCHEMAS = ("release_record", "manifest")  # copied into every release's schemas/
QType = Literal["localization", "attribute", "position"]  # a question's type, from its draft to its record
QUESTION_TYPES: tuple[QType, ...] = get_args(QType)
Q_TYPES = ("localization", "attribute")  # those with a question file of their own (position: the attribute file)
CONFIGS = {"localization": LOCALIZATION_FILE, "attribute": ATTRIBUTE_FILE}
FILE_OF_QTYPE: dict[QType, str] = {"localization": LOCALIZATION_FILE, "attribute": ATTRIBUTE_FILE,
                                   "position": ATTRIBUTE_FILE}
# Published layouts, per question type, in the order they are looked for.
MEDICAL_FILES = {t: (f"VGMED_{t}.jsonl", f"SLAKE_{t}_questions.jsonl", f"VGMED_{t}_questions.jsonl") for t in Q_TYPES}
CONTROL_FILES = {t: (f"COCO_{t}.jsonl", f"COCO_{t}_questions.jsonl") for t in Q_TYPES}
# Our release's natural-image control questions (regions of modality NATURAL_MODALITY, e.g. the coco
# source kind) go into the published hub's control names; the manifest lists them as control_<q_type>.
CONTROL_CONFIGS = {t: CONTROL_FILES[t][0] for t in Q_TYPES}
CONTROL_FILE_OF_QTYPE = {q: CONTROL_CONFIGS["localization" if q == "localization" else "attribute"]
                         for q in FILE_OF_QTYPE}


def record_file(q_type: str, modality: str) -> str | None:
    """The release file a record belongs in (None for an unknown question type)."""
    return (CONTROL_FILE_OF_QTYPE if modality == NATURAL_MODALITY else FILE_OF_QTYPE).get(q_type)


def manifest_configs(files: Iterable[str]) -> dict[str, str]:
    """The manifest's ``configs``: both medical files always, the control files when the release has them."""
    present = set(files)
    return {**CONFIGS, **{f"control_{t}": n for t, n in CONTROL_CONFIGS.items() if n in present}}

# ---------------------------------------------------------------- box conventions

# What ``vgmed-build release --bbox-convention`` writes (key) and the record field's value.
CONVENTIONS = {"exclusive": "xyxy_exclusive", "published": "xyxy_inclusive"}
# What a published record's boxes can be declared as (record field ``bbox_format`` or ``--bbox-format``).
BOX_FORMATS = ("xywh", "xyxy")
# How the maxima of a published xyxy box are read: +1 (inclusive max pixel indices, as the masks'
# min/max give them; vgmed's default) or as pixel edges (what the authors' code does).
XYXY_MAXIMA = ("inclusive", "edges")

Box = tuple[float, float, float, float]
SLAKE_ID = re.compile(r"xmlab\d+")  # the older layout's `image`: a SLAKE folder id


class BoxError(VgmedError, ValueError):
    """A record's boxes cannot be read (the message names the box and the convention)."""


class RecordFileError(VgmedError, ValueError):
    """A question file cannot be read at all (the message names the file)."""


@dataclass(frozen=True)
class BoxReading:
    """How published boxes are read: ``format`` overrides every record (None = per record / rule)."""

    format: str | None = None
    xyxy_maxima: str = "inclusive"

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in BOX_FORMATS:
            raise ValueError(f"unknown bbox format {self.format!r}; choose one of {', '.join(BOX_FORMATS)}")
        if self.xyxy_maxima not in XYXY_MAXIMA:
            raise ValueError(f"unknown xyxy maxima reading {self.xyxy_maxima!r}; choose one of {XYXY_MAXIMA}")


DEFAULT_READING = BoxReading()


def encode_boxes(boxes: Iterable[Iterable[int]], convention: str) -> list[list[int]]:
    """Boxes from the catalog's exclusive pixel edges to ``convention`` ('exclusive' | 'published')."""
    if convention == "exclusive":
        return [[int(v) for v in box] for box in boxes]
    if convention == "published":
        return [[int(x0), int(y0), int(x1) - 1, int(y1) - 1] for x0, y0, x1, y1 in boxes]
    raise ValueError(f"unknown bbox convention {convention!r}; choose one of {sorted(CONVENTIONS)}")


def check_boxes(boxes: list[list[int]], width: int, height: int) -> str | None:
    """Why exclusive xyxy ``boxes`` do not fit a ``width`` x ``height`` image, or None when they do."""
    if not boxes:
        return "no boxes"
    for box in boxes:
        if len(box) != 4 or not all(isinstance(v, int) for v in box):
            return f"box {box} is not four integers"
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            return f"box {box} is empty or outside the {width}x{height} image"
    return None


def raw_boxes(record: dict) -> list[list[float]]:
    """A record's boxes as given (``bbox``, falling back to ``original_bboxes``; one box or a list)."""
    raw = record.get("bbox")
    if raw is None:
        raw = record.get("original_bboxes")
    if raw is None:
        raise BoxError("no 'bbox' or 'original_bboxes' field")
    if not isinstance(raw, list) or not raw:
        raise BoxError(f"bbox must be a non-empty list, got {raw!r}")
    boxes = [raw] if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw) else raw
    for box in boxes:
        if not (isinstance(box, list) and len(box) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            raise BoxError(f"each box needs 4 numbers, got {box!r}")
    return [list(box) for box in boxes]


def is_older_layout(file_name: str) -> bool:
    return file_name.endswith("_questions.jsonl")


def under_slake(image: object) -> bool:
    """The authors' rule: an image path with a folder (or the file) named ``Slake*``."""
    return isinstance(image, str) and any(p.lower().startswith("slake") for p in PurePosixPath(image).parts)


def _source_of(record: dict) -> str:
    source = record.get("source")
    return str(source.get("dataset", "") if isinstance(source, dict) else source or "")


def box_format(record: dict, file_name: str = "", reading: BoxReading = DEFAULT_READING) -> tuple[str, str]:
    """``(convention, why)`` of a record's boxes: xyxy_exclusive | xyxy_inclusive | xyxy_edges | xywh."""
    convention = record.get("bbox_convention")
    if convention is not None:
        if convention not in CONVENTIONS.values():
            raise BoxError(f"unknown bbox_convention {convention!r}")
        return convention, "the record's bbox_convention"
    if reading.format is not None:
        fmt, why = reading.format, "--bbox-format"
    elif record.get("bbox_format") is not None:
        fmt, why = str(record["bbox_format"]).lower(), "the record's bbox_format"
        if fmt not in BOX_FORMATS:
            raise BoxError(f"unknown bbox_format {record['bbox_format']!r}; expected one of {', '.join(BOX_FORMATS)}")
    elif is_older_layout(file_name) or Path(file_name).name.startswith("COCO_"):
        fmt, why = "xywh", f"published rule: {Path(file_name).name} holds SLAKE / COCO boxes, all [x, y, w, h]"
    elif under_slake(record.get("image")):
        fmt, why = "xywh", "published rule: image under Slake*"
    elif isinstance(record.get("image"), str) and SLAKE_ID.fullmatch(record["image"]):
        fmt, why = "xywh", "published rule: image is a SLAKE folder id"
    elif isinstance(record.get("image"), int) and not isinstance(record.get("image"), bool):
        fmt, why = "xywh", "published rule: image is a COCO id (COCO boxes are [x, y, w, h])"
    elif "slake" in _source_of(record).lower():
        fmt, why = "xywh", "the record's source is SLAKE"
    else:
        fmt, why = "xyxy", "published rule: image not under Slake*"
    if fmt == "xyxy":
        return ("xyxy_inclusive" if reading.xyxy_maxima == "inclusive" else "xyxy_edges"), why
    return fmt, why


def to_edges(box: list[float], convention: str) -> Box:
    """One box as pixel-edge xyxy (x1/y1 exclusive) under ``convention``."""
    a, b, c, d = (float(v) for v in box)
    if convention == "xywh":
        return a, b, a + c, b + d
    if convention == "xyxy_inclusive":
        return a, b, c + 1, d + 1
    if convention in ("xyxy_exclusive", "xyxy_edges"):
        return a, b, c, d
    raise BoxError(f"unknown box convention {convention!r}")


def record_boxes(record: dict, file_name: str = "", reading: BoxReading = DEFAULT_READING) -> tuple[list[Box], str]:
    """A record's boxes as pixel-edge xyxy and the convention they were read in, or :class:`BoxError`."""
    boxes = raw_boxes(record)
    convention, why = box_format(record, file_name, reading)
    out = [to_edges(box, convention) for box in boxes]
    for given, edges in zip(boxes, out, strict=True):
        if edges[2] <= edges[0] or edges[3] <= edges[1]:
            raise BoxError(f"empty box {list(edges)}: {given} read as {convention} ({why}) has x1 <= x0 or y1 <= y0")
    return out, convention


def box_problem(box: list[float], fmt: str, width: int, height: int) -> str | None:
    """Why ``box`` is empty or outside a ``width`` x ``height`` image under ``fmt``, else None.

    fmt: 'xyxy_exclusive' / 'xyxy_edges' (pixel edges), 'xyxy_inclusive' / 'xyxy' (max pixel indices),
    'xywh'.
    """
    if fmt == "xywh":
        x, y, w, h = box
        ok = x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= width and y + h <= height
    elif fmt in ("xyxy_exclusive", "xyxy_edges"):
        x0, y0, x1, y1 = box
        ok = 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    else:
        x0, y0, x1, y1 = box
        ok = 0 <= x0 <= x1 <= width - 1 and 0 <= y0 <= y1 <= height - 1
    return None if ok else f"box {box} ({fmt}) is empty or outside the {width}x{height} image"


# ---------------------------------------------------------------- region masks

# A region's mask travels in its record as uncompressed COCO RLE (``{"size": [height, width], "counts":
# [run, ...]}``: run lengths over the pixels in column-major order, starting with a background run, as
# pycocotools' ``frPyObjects`` reads them): the exact pixels the boxes were measured on, under the same
# checksum as the record file. Integers, not the compressed string, whose letters read like identifiers
# (``Ab^Cd``) to the release's identifier scan. Published records have none (box only).
MASK_FIELD = "mask"


def encode_mask(mask) -> dict:
    """Uncompressed COCO RLE of a boolean (height, width) mask, JSON-ready."""
    import numpy as np

    mask = np.asarray(mask, dtype=bool)
    flat = mask.ravel(order="F")
    edges = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    runs = np.diff(edges).tolist()
    return {"size": [int(v) for v in mask.shape], "counts": ([0] if flat.size and flat[0] else []) + runs}


def decode_mask(encoded: Mapping[str, Any]):
    """The boolean (height, width) mask of a record's ``mask`` (ValueError naming what is wrong)."""
    import numpy as np

    size, counts = encoded.get("size"), encoded.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ValueError(f"mask size {size!r} is not [height, width]")
    if not (isinstance(counts, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                             for v in counts)):
        raise ValueError("mask counts is not a list of run lengths")
    if sum(counts) != size[0] * size[1]:
        raise ValueError(f"mask runs cover {sum(counts)} pixels, not the {size[0] * size[1]} of a "
                         f"{size[1]}x{size[0]} image")
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(size, order="F")


def mask_problem(encoded: object, boxes: list[Box], width: int, height: int, area_ratio: float) -> str | None:
    """Why a record's ``mask`` does not belong to its image, boxes and area, or None.

    The mask must decode, be ``width`` x ``height``, hold ``area_ratio`` of the pixels (as rounded in the
    record) and lie inside the union of the edge ``boxes`` (a reviewer's moved box never carries a mask).
    """
    import numpy as np

    if not isinstance(encoded, Mapping):
        return "mask is not a COCO RLE object"
    try:
        mask = decode_mask(encoded)
    except ValueError as exc:
        return f"mask cannot be decoded: {exc}"
    if mask.shape != (height, width):
        return f"mask is {mask.shape[1]}x{mask.shape[0]}, the image {width}x{height}"
    area = int(mask.sum())
    if area == 0:
        return "mask is empty"
    if abs(area / (width * height) - area_ratio) > 1e-6:  # the record rounds area_ratio to 6 places
        return f"mask covers {area} pixels ({area / (width * height):.6f} of the image), area_ratio says {area_ratio}"
    inside = np.zeros_like(mask)
    for x0, y0, x1, y1 in boxes:
        inside[max(int(math.floor(y0)), 0):int(math.ceil(y1)), max(int(math.floor(x0)), 0):int(math.ceil(x1))] = True
    outside = int((mask & ~inside).sum())
    if outside:
        return f"mask has {outside} pixel(s) outside the record's boxes"
    return None


# ---------------------------------------------------------------- the published token mapping

PUBLISHED_SIZE = 336
PUBLISHED_GRID = 24


def published_cells(boxes: Iterable[Box], width: int, height: int, *, pad: bool = False,
                    size: int = PUBLISHED_SIZE, grid: int = PUBLISHED_GRID) -> set[tuple[int, int]]:
    """``(col, row)`` cells the authors' code gives edge boxes: resize to ``size`` (after padding to a
    centred square when ``pad``), floor of the min edge and ceil of the max edge on a ``grid`` grid."""
    side_w, side_h, off_x, off_y = width, height, 0.0, 0.0
    if pad:
        side = max(width, height)
        side_w = side_h = side
        off_x, off_y = float((side - width) // 2), float((side - height) // 2)
    cell_x, cell_y = side_w / grid, side_h / grid
    cells = set()
    for x0, y0, x1, y1 in boxes:
        c0, c1 = math.floor((x0 + off_x) / cell_x), math.ceil((x1 + off_x) / cell_x)
        r0, r1 = math.floor((y0 + off_y) / cell_y), math.ceil((y1 + off_y) / cell_y)
        cells |= {(c, r) for c in range(max(c0, 0), min(c1, grid)) for r in range(max(r0, 0), min(r1, grid))}
    return cells


def gt_tokens_of(record: dict) -> set[tuple[int, int]] | None:
    """The record's published ``gt_tokens`` as ``(col, row)`` pairs, or None when it has none."""
    raw = record.get("gt_tokens")
    if raw is None:
        return None
    try:
        return {(int(c), int(r)) for c, r in raw}
    except (TypeError, ValueError):
        raise BoxError(f"gt_tokens is not a list of [col, row] pairs: {str(raw)[:80]}") from None


# The box -> cell mappings of the authors' code: the later code's plain resize; the earliest notebook's pad-to-square
# first (the evaluator's --box-mapping offers them beside the model's real preprocessing).
PublishedBoxMapping = Literal["resize", "pad"]
PUBLISHED_BOX_MAPPINGS: tuple[PublishedBoxMapping, ...] = get_args(PublishedBoxMapping)


def gt_tokens_mapping(given: set[tuple[int, int]], boxes: list[Box], width: int, height: int
                      ) -> tuple[str | None, str]:
    """Which published mapping reproduces ``given`` cells from edge ``boxes`` ('resize', 'pad' or None),
    and, when none does, what differs under the plain resize."""
    for mapping in PUBLISHED_BOX_MAPPINGS:
        if published_cells(boxes, width, height, pad=mapping == "pad") == given:
            return mapping, ""
    mine = published_cells(boxes, width, height)
    return None, (f"gt_tokens disagree with the boxes: {len(given - mine)} cell(s) only in gt_tokens "
                  f"{sorted(given - mine)[:6]}, {len(mine - given)} only from the boxes {sorted(mine - given)[:6]} "
                  f"(plain resize of the {width}x{height} image)")


# ---------------------------------------------------------------- files and records


def question_file(root: Path, q_type: str, control: bool = False) -> Path | None:
    """The question file of ``q_type`` in ``root`` under any layout (None when there is none).

    A control release looks for the COCO names first, a medical one for the VGMED / SLAKE names; each
    falls back to the other's names, so a folder that holds only one set is read whichever flag it
    came with.
    """
    medical, coco = MEDICAL_FILES[q_type], CONTROL_FILES[q_type]
    names = coco + medical if control else medical + coco
    for name in names:
        if (root / name).is_file():
            return root / name
    return None


def expected_names(q_types: Iterable[str]) -> str:
    return ", ".join(n for t in q_types for n in MEDICAL_FILES[t] + CONTROL_FILES[t])


@dataclass(frozen=True)
class Line:
    """One line of a question file: the record, or why it is not one."""

    number: int
    record: Any = None
    decode_error: json.JSONDecodeError | None = None
    blank: bool = False
    length: int = 0  # set only for a line over MAX_LINE_CHARS, which is not parsed

    @property
    def error(self) -> str | None:
        if self.blank:
            return "empty line"
        if self.length:
            return f"line of {self.length} characters, more than the {MAX_LINE_CHARS} a record may have: not read"
        if self.decode_error is not None:
            return f"not valid JSON ({self.decode_error.msg} at column {self.decode_error.colno})"
        return None


# The longest line a question file may hold. A record is a few hundred characters of text plus, in
# ours, a region mask as run lengths (a few KB; an adversarial mask of a 2048 x 2048 image stays under
# this); a longer line is reported, never parsed or scanned, so one hostile line cannot stall `validate`.
MAX_LINE_CHARS = 8_000_000


def read_lines(path: Path, blank_lines: bool = False) -> Iterator[Line]:
    """Lines of a JSONL file, parsed; empty lines are skipped (or yielded when ``blank_lines``); a line
    over MAX_LINE_CHARS comes with its length and no record (its ``error`` says so).

    Read as a stream (one line in memory, whatever the file's size): the file is first checked to be
    UTF-8 throughout, so an undecodable file is one RecordFileError before any line, as before."""
    try:
        _check_utf8(Path(path))
        fh = open(path, "rb")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordFileError(f"{path}: cannot be read as UTF-8 text ({exc})") from exc
    with fh:
        # Split on "\n" only (binary lines), never splitlines(): U+2028 may sit unescaped in a JSON string.
        for number, raw in enumerate(fh, 1):
            line = raw.removesuffix(b"\n").decode("utf-8")
            if not line.strip():
                if blank_lines:
                    yield Line(number, blank=True)
                continue
            if len(line) > MAX_LINE_CHARS:
                yield Line(number, length=len(line))
                continue
            try:
                yield Line(number, json.loads(line))
            except json.JSONDecodeError as exc:
                yield Line(number, decode_error=exc)


def _check_utf8(path: Path) -> None:
    """Raise UnicodeDecodeError where ``path`` is not UTF-8, reading it in blocks."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(READ_BLOCK), b""):
            decoder.decode(block)
    decoder.decode(b"", final=True)


def record_id(record: dict, file_name: str, number: int) -> str:
    """The record's ``id``, or ``<file stem>:<line>`` for published records, which carry none."""
    rid = record.get("id") if isinstance(record, dict) else None
    return str(rid) if rid not in (None, "") else f"{Path(file_name).name.removesuffix('.jsonl')}:{number}"


def path_inside(base: Path, rel: str, where: str) -> Path:
    """``base / rel``, or ValueError when ``rel`` (as written) is absolute or climbs above ``base``.

    Every reader of record image paths goes through this: a record may only name files inside its
    own release (or ``--images``), never ``../other/x.png`` or ``/etc/...``. The check is lexical, so
    a release whose ``images/`` is a symbolic link to shared storage still reads.
    """
    normal = os.path.normpath(rel)
    if os.path.isabs(rel) or "\\" in rel or normal == ".." or normal.startswith(".." + os.sep):
        raise ValueError(f"image {rel!r} leaves {where}; records may only name files inside it")
    return base / rel


def leaves_root(root: Path, rel: str) -> str | None:
    """Why ``root / rel`` is not a file of the release itself, or None; nothing is opened.

    Stricter than :func:`path_inside`: besides absolute and ``..`` paths, a symbolic link anywhere
    on the way that leads out of ``root`` (``images/x.png -> /home/me/secret``) is refused, so
    `validate` and `export` never read, hash or embed a file outside the release they check.
    """
    normal = os.path.normpath(rel)
    if os.path.isabs(rel) or "\\" in rel or normal == ".." or normal.startswith(".." + os.sep):
        return "leaves the release (an absolute or ../ path)"
    try:
        inside = (root / rel).resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a symbolic link loop
        return "cannot be resolved (a symbolic link loop)"
    return None if inside else "is a symbolic link that leads out of the release"


def listed_file_problems(root: Path, listed: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, str]]:
    """(path, problem) for every file the manifest lists (``(path, entry)`` pairs, problems come in
    their order) that is outside the release, missing, or differs from the manifest in size or SHA-256
    (a changed or tampered release)."""
    for rel, entry in listed:
        outside = leaves_root(root, rel)
        if outside:
            yield rel, f"lists {rel!r}, which {outside}; not read"
            continue
        path = root / rel
        if not path.is_file():
            yield rel, f"lists {rel}, which is missing"
            continue
        if not isinstance(entry, dict):
            continue
        size = path.stat().st_size
        if entry.get("bytes") != size:
            yield rel, f"{rel}: size {size} differs from the manifest's {entry.get('bytes')}"
        if entry.get("sha256") != sha256_file(path):
            yield rel, f"{rel}: SHA-256 differs from the manifest (file changed or corrupt)"


def resolve_image(image: object, root: Path, images: Path | None = None) -> Path:
    """Where a record's picture lives: ``image`` relative to ``images`` (default: the release root);
    a SLAKE folder id -> ``<images>/<id>/source.jpg``; an integer COCO id ->
    ``<images>/COCO_val2014_<id:012d>.jpg`` (or ``<images>/val2014/...``). A path leaving that folder
    is a ValueError (see :func:`path_inside`)."""
    base = Path(images) if images is not None else Path(root)
    if isinstance(image, bool) or not isinstance(image, (str, int)):
        raise ValueError(f"image must be a path or an id, got {image!r}")
    if isinstance(image, int) or (isinstance(image, str) and image.isdigit()):
        name = f"COCO_val2014_{int(image):012d}.jpg"
        for candidate in (base / name, base / "val2014" / name):
            if candidate.is_file():
                return candidate.resolve()
        return (base / name).resolve()
    if not image.strip():
        raise ValueError("empty 'image'")
    direct = path_inside(base, image, "the --images folder" if images is not None else "the release directory")
    if "/" not in image and "." not in image and not direct.is_file():
        return (base / image / "source.jpg").resolve()
    return direct.resolve()


# Files are hashed and checked in blocks of this size: memory stays flat whatever their size (a 1 MB
# block made the peak follow the record files up to 1 MB).
READ_BLOCK = 1 << 16


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(READ_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


# Counts added after format version 1 was published: a manifest without them is still valid.
LATER_COUNTS = ("localization_answers", "review")


def preview_note(root: Path) -> str | None:
    """The warning for a preview release (``manifest.json`` of ours with ``preview: true``), or None.

    The one reader behind `export`, `vgmed-eval grounding` and `vqa`: results on a preview must not pass
    for results on a reviewed release. A folder without our manifest (a published download) is no preview.
    """
    from vgmed_build.release_manifest import read_manifest

    try:
        manifest = read_manifest(Path(root) / MANIFEST_FILE).head  # the file list is not needed
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    ours = isinstance(manifest, dict) and manifest.get("format") == RELEASE_FORMAT
    if not ours or manifest.get("preview") is not True:
        return None
    counts = manifest.get("counts") if isinstance(manifest.get("counts"), dict) else {}
    total = counts.get("records")
    accepted = (counts.get("by_review_status") or {}).get("accepted", 0)
    how_many = f"{total - accepted} of its {total} questions have" if isinstance(total, int) else "questions have"
    return (f"{root} is a PREVIEW release (manifest.json preview: true): {how_many} not been accepted by "
            "clinical review; do not report or publish results on it")
