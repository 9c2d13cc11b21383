"""The SLAKE 1.0 layout (Liu et al., ISBI 2021): one folder per image with its semantic labels.

    <root>/imgs/xmlab<N>/source.jpg       the image
    <root>/imgs/xmlab<N>/mask.png         segmentation: one grey value or colour per structure
    <root>/imgs/xmlab<N>/detection.json   [{"<name>": [x, y, w, h]}, ...]  boxes in pixels (xywh)
    <root>/imgs/xmlab<N>/question.json    the image's questions ({"img_name", "modality", "location", ...})
    <root>/train.json, validate.json, test.json   all questions, split by split

``mask.png`` carries no names; a structure's name comes from the sources file's ``labels`` (keyed
by grey value "7" or colour "255,0,0") or else from the detection.json box that best matches the
structure's extent (intersection over union >= ``options.match_iou``). Detection boxes without a
matching mask structure become box-shaped masks (``options.unmatched_boxes = "box"``, the default,
as VGMED used SLAKE's boxes) or are skipped (``"skip"``). Modality comes from the questions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from vgmed_build.sources import SOURCE_KINDS
from vgmed_build.sources.base import NUMBER, STRING, STRINGS, Image2D, SourceError, SourceItem, SourceSpec
from vgmed_build.sources.files import PIL_ERRORS, read_image, read_json, rel, sized_mask

# Split -> file names (the Hugging Face copy renamed validate.json to validation.json).
SPLIT_FILES = {"train": ("train.json",), "validate": ("validate.json", "validation.json"), "test": ("test.json",)}
IMAGE_FOLDERS = ("imgs", "images")
IMAGE_NAME = "source.jpg"


def _question_index(root: Path, splits: list[str]) -> tuple[dict[str, dict], list[SourceError]]:
    """img folder name -> {"modality", "location", "splits"} from the split files that exist."""
    index: dict[str, dict] = {}
    errors = []
    for split in SPLIT_FILES:
        path = _split_file(root, split)
        if path is None:
            continue
        try:
            records = read_json(path, root)
        except SourceError as exc:
            errors.append(exc)
            continue
        for rec in records if isinstance(records, list) else []:
            folder = str(rec.get("img_name", "")).split("/")[0]
            if folder:
                entry = index.setdefault(folder, {"splits": set()})
                entry["splits"].add(split)
                entry.setdefault("modality", rec.get("modality"))
                entry.setdefault("location", rec.get("location"))
    if splits:
        missing = [s for s in splits if _split_file(root, s) is None]
        if missing:
            names = ", ".join(SPLIT_FILES.get(s, (f"{s}.json",))[0] for s in missing)
            errors.append(SourceError("split file not found", path=names))
    return index, errors


def _split_file(root: Path, split: str) -> Path | None:
    for name in SPLIT_FILES.get(split, (f"{split}.json",)):
        if (root / name).is_file():
            return root / name
    return None


def read_detections(path: Path, root: Path) -> list[tuple[str, list[float]]]:
    """detection.json -> [(name, [x, y, w, h]), ...] (a list of one-key objects, or one object)."""
    data = read_json(path, root)
    entries = data if isinstance(data, list) else [data]
    out = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise SourceError("expected objects like {\"Liver\": [x, y, w, h]}", path=rel(path, root))
        for name, box in entry.items():
            numbers = isinstance(box, list) and all(isinstance(v, (int, float)) for v in box)
            if not numbers or len(box) != 4:
                raise SourceError(f"box of {name!r} is not [x, y, w, h]", path=rel(path, root))
            if not all(math.isfinite(v) for v in box):
                raise SourceError(f"box of {name!r} has a coordinate that is not a finite number", path=rel(path, root))
            if box[2] <= 0 or box[3] <= 0:
                raise SourceError(f"box of {name!r} has no area", path=rel(path, root))
            out.append((str(name), [float(v) for v in box]))
    return out


def read_structure_mask(path: Path, root: Path) -> tuple[np.ndarray, dict[int, str]]:
    """mask.png -> (ids, {id: key}) where key is the grey value ("7") or the colour ("255,0,0")."""
    name = rel(path, root)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode == "P":
                img = img.convert("RGB")
            arr = np.asarray(img)
    except PIL_ERRORS as exc:
        raise SourceError(f"cannot read mask ({exc})", path=name) from None
    if arr.ndim == 3:
        rgb = arr[..., :3].astype(np.int64)
        if all(np.array_equal(rgb[..., 0], rgb[..., c]) for c in (1, 2)):
            arr = rgb[..., 0]
        else:
            codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
            values, ids = np.unique(codes, return_inverse=True)
            ids = ids.reshape(codes.shape)
            keys = {i: f"{v >> 16},{(v >> 8) & 255},{v & 255}" for i, v in enumerate(values.tolist())}
            if 0 in values:  # black is background
                zero = int(np.searchsorted(values, 0))
                ids = np.where(ids == zero, -1, ids)
                keys.pop(zero)
            return ids, keys
    arr = arr.astype(np.int64)
    return np.where(arr == 0, -1, arr), {int(v): str(int(v)) for v in np.unique(arr) if v != 0}


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def name_structures(
    ids: np.ndarray, keys: dict[int, str], detections: list[tuple[str, list[float]]], min_iou: float
) -> tuple[dict[int, str], list[int]]:
    """Give each mask structure the name of its best-matching detection box (greedy by IoU).

    Returns ({structure id: name}, indices of detections no structure matched).
    """
    extents = {}
    for sid in keys:
        rows, cols = np.nonzero(ids == sid)
        if rows.size:  # pixel-edge extent, x1/y1 exclusive
            extents[sid] = (cols.min(), rows.min(), cols.max() + 1.0, rows.max() + 1.0)
    pairs = sorted(
        ((_iou(ext, (x, y, x + w, y + h)), sid, d) for sid, ext in extents.items()
         for d, (_, (x, y, w, h)) in enumerate(detections)),
        reverse=True,
    )
    names: dict[int, str] = {}
    used: set[int] = set()
    for iou, sid, d in pairs:
        if iou < min_iou or sid in names or d in used:
            continue
        names[sid] = detections[d][0]
        used.add(d)
    return names, [d for d in range(len(detections)) if d not in used]


def box_mask(box: list[float], shape: tuple[int, int]) -> np.ndarray:
    """An xywh box as a filled mask over the pixels it touches."""
    x, y, w, h = box
    mask = np.zeros(shape, dtype=bool)
    x0, y0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
    x1, y1 = min(int(np.ceil(x + w)), shape[1]), min(int(np.ceil(y + h)), shape[0])
    mask[y0:y1, x0:x1] = True
    return mask


class SlakeAdapter:
    """``kind = "slake"``: one item per ``imgs/<folder>`` holding ``source.jpg``."""

    kind = "slake"
    option_types = {"splits": STRINGS, "locations": STRINGS, "match_iou": NUMBER, "unmatched_boxes": STRING}

    def items(self, spec: SourceSpec) -> Iterator[SourceItem | SourceError]:
        root = Path(spec.path)
        imgs = next((root / f for f in IMAGE_FOLDERS if (root / f).is_dir()), None)
        if imgs is None:
            yield SourceError("not a SLAKE folder (no imgs/ inside)", path=root.name)
            return
        splits = [str(s) for s in spec.options.get("splits") or []]
        locations = {str(s).lower() for s in spec.options.get("locations") or []}
        unmatched = str(spec.options.get("unmatched_boxes", "box"))
        if unmatched not in ("box", "skip"):
            yield SourceError(f"source {spec.name!r}: options.unmatched_boxes must be 'box' or 'skip'")
            return
        index, errors = _question_index(root, splits)
        yield from errors
        for folder in sorted((p for p in imgs.iterdir() if p.is_dir()), key=_natural):
            meta = index.get(folder.name) or self._folder_questions(folder, root)
            if splits and not meta.get("splits", set()) & set(splits):
                continue
            if locations and str(meta.get("location") or "").lower() not in locations:
                continue
            key = rel(folder, root)
            image = folder / IMAGE_NAME
            mask, det = folder / "mask.png", folder / "detection.json"
            if not image.is_file():
                yield SourceError(f"no {IMAGE_NAME}", path=key)
                continue
            if not mask.is_file() and not det.is_file():
                yield SourceError("neither mask.png nor detection.json; nothing to ground", path=key)
                continue
            if not mask.is_file() and unmatched == "skip":
                yield SourceError("no mask.png, and options.unmatched_boxes = 'skip' leaves out every box of "
                                  "detection.json: nothing to ground", path=key)
                continue
            modality = spec.modality or meta.get("modality")
            if not modality:
                yield SourceError("modality unknown (no question names it); set it for the source", path=key)
                continue
            yield SourceItem(
                key=key,
                files=[p for p in (image, mask, det) if p.is_file()],
                load=partial(_load, spec, root, folder, str(modality), unmatched),
            )

    @staticmethod
    def _folder_questions(folder: Path, root: Path) -> dict:
        """Fallback when no split file lists the folder: its own question.json."""
        path = folder / "question.json"
        try:
            records = read_json(path, root) if path.is_file() else []
        except SourceError:
            records = []
        first = records[0] if isinstance(records, list) and records and isinstance(records[0], dict) else {}
        return {"modality": first.get("modality"), "location": first.get("location"), "splits": set()}


def _natural(path: Path) -> tuple:
    digits = "".join(c for c in path.name if c.isdigit())
    return (path.name.rstrip("0123456789"), int(digits) if digits else -1, path.name)


def _load(spec: SourceSpec, root: Path, folder: Path, modality: str, unmatched: str) -> Image2D:
    pixels = read_image(folder / IMAGE_NAME, rel(folder / IMAGE_NAME, root))
    shape = pixels.shape[:2]
    det_path, mask_path = folder / "detection.json", folder / "mask.png"
    detections = read_detections(det_path, root) if det_path.is_file() else []
    masks: dict[str, np.ndarray] = {}

    def add(raw: str, mask: np.ndarray) -> None:
        name = spec.labels.get(raw, raw)
        if name:
            masks[name] = masks[name] | mask if name in masks else mask

    leftover = list(range(len(detections)))
    if mask_path.is_file():
        ids, keys = read_structure_mask(mask_path, root)
        sized_mask(ids, shape, rel(mask_path, root))
        named = {sid: spec.labels[key] for sid, key in keys.items() if key in spec.labels}
        by_box, leftover = name_structures(
            ids, {s: k for s, k in keys.items() if s not in named}, detections,
            float(spec.options.get("match_iou", 0.5)),
        )
        for sid, name in {**by_box, **named}.items():
            add(name, ids == sid)
    if unmatched == "box":
        for d in leftover:
            add(detections[d][0], box_mask(detections[d][1], shape))
    if not masks:
        raise SourceError(
            "no named structure (mask structures matched no detection box and "
            "no label in the sources file names them)",
            path=rel(folder, root),
        )
    return Image2D(pixels=pixels, modality=modality, masks=masks)


SOURCE_KINDS.register("slake", SlakeAdapter())
