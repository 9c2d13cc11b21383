"""COCO object annotations over natural photographs: the paper's natural-image control set.

Layout of a COCO download: ``<root>/annotations/instances_<split>.json`` and the pictures in
``<root>/<split>/`` (``val2014/COCO_val2014_000000000042.jpg``); options name other files. Masks
come from each annotation's ``segmentation`` (polygons or RLE) through ``pycocotools``.

The published control set's rule: one region per (image, category), holding one box per instance of
that category (several people -> one "person" region with several boxes), the category name as
label; COCO's supercategory becomes the region's category. Crowd annotations (``iscrowd = 1``, one
RLE over a group of objects) are kept out of the boxes by default (option ``crowd``). Regions over
``max_area_ratio`` are dropped as for every source (the published set skipped objects covering more
than 40% of the image).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from vgmed_build import modality as modalities
from vgmed_build.sources import SOURCE_KINDS
from vgmed_build.sources.base import (
    STRING,
    STRINGS,
    Image2D,
    ItemSkipped,
    SourceError,
    SourceItem,
    SourceSpec,
)
from vgmed_build.sources.files import read_image, rel

CROWD_MODES = ("exclude", "include", "skip")


def instance_mask(segmentation: object, height: int, width: int, where: str) -> np.ndarray:
    """One annotation's mask (polygons, uncompressed or compressed RLE) as a (height, width) bool array."""
    from pycocotools import mask as mask_utils

    try:
        if isinstance(segmentation, list):  # polygons: [[x0, y0, x1, y1, ...], ...]
            polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6]
            if not polygons:
                raise SourceError("segmentation has no polygon with 3 or more points", path=where)
            _check_polygons(polygons, height, width, where)
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):  # crowds
            rle = mask_utils.frPyObjects(segmentation, *segmentation["size"])
        elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), str):
            rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
        else:
            raise SourceError("segmentation is neither polygons nor RLE", path=where)
        if [int(v) for v in rle["size"]] != [height, width]:
            raise SourceError(f"RLE size {rle['size']} differs from the image's [{height}, {width}]", path=where)
        return mask_utils.decode(rle).astype(bool)
    except SourceError:
        raise
    except (TypeError, ValueError, KeyError, UnicodeEncodeError) as exc:
        raise SourceError(f"cannot decode segmentation ({type(exc).__name__}: {exc})", path=where) from None


def _check_polygons(polygons: list[list], height: int, width: int, where: str) -> None:
    """Refuse polygon points that are not finite numbers or lie far off the picture (more than its own
    size beyond an edge) before rasterising: one point at 1e12 would make the rasteriser allocate
    until the process dies. Points slightly off the picture are common and are clipped by it."""
    for polygon in polygons:
        for i, v in enumerate(polygon):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise SourceError(f"polygon coordinate {i} is {v!r}, not a finite number", path=where)
            size = width if i % 2 == 0 else height
            if not -size <= v <= 2 * size:
                raise SourceError(
                    f"polygon {'x' if i % 2 == 0 else 'y'} coordinate {v:g} lies far outside the "
                    f"{width}x{height} picture",
                    path=where,
                )


def _load(spec: SourceSpec, root: Path, path: Path, info: dict, anns: list[dict], names: dict[int, str],
          supercategories: dict[str, str]) -> Image2D:
    """Read one picture and its objects: a union mask and one mask per object, per category."""
    name = rel(path, root)
    pixels = read_image(path, name)
    height, width = pixels.shape[:2]
    if (info.get("height"), info.get("width")) != (height, width):
        raise SourceError(
            f"picture is {width}x{height} but the annotations say {info.get('width')}x{info.get('height')}",
            path=name,
        )
    crowd = spec.options.get("crowd", "exclude")
    min_px = int(spec.options.get("min_component_px", 0))
    masks: dict[str, np.ndarray] = {}
    instances: dict[str, list[np.ndarray]] = {}
    crowded: set[str] = set()
    annotated: set[str] = set()
    for ann in anns:
        label = names[ann["category_id"]]
        annotated.add(label)
        if ann.get("iscrowd") and crowd != "include":
            crowded.add(label)
            continue
        mask = instance_mask(ann.get("segmentation"), height, width, f"{name}: annotation {ann.get('id')}")
        if np.count_nonzero(mask) < max(min_px, 1):
            continue  # a speck (or an empty polygon) gives no box, as small components do elsewhere
        masks[label] = masks[label] | mask if label in masks else mask
        instances.setdefault(label, []).append(mask)
    if crowd == "skip":
        for label in crowded:
            masks.pop(label, None)
            instances.pop(label, None)
    if not masks:
        raise ItemSkipped(f"no object left (crowd = {crowd!r}, min_component_px = {min_px})")
    return Image2D(pixels=pixels, modality=spec.modality or modalities.NATURAL, masks=masks, instances=instances,
                   categories={k: v for k, v in supercategories.items() if k in masks},
                   unmasked=sorted(annotated - set(masks)))


def _read_annotations(path: Path, root: Path) -> dict:
    name = rel(path, root)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SourceError(f"cannot read annotations ({exc.strerror or exc})", path=name) from None
    except ValueError as exc:
        raise SourceError(f"not valid JSON ({exc})", path=name) from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations",
                                                                                    "categories")):
        raise SourceError("not a COCO instances file (needs 'images', 'annotations' and 'categories' lists)", path=name)
    return doc


def _annotation_file(root: Path, opts: dict) -> tuple[Path, str]:
    """The instances file and the split it names (options ``annotations`` / ``split``)."""
    if opts.get("annotations"):
        path = root / str(opts["annotations"])
        split = str(opts.get("split") or path.stem.removeprefix("instances_"))
        return path, split
    if opts.get("split"):
        return root / "annotations" / f"instances_{opts['split']}.json", str(opts["split"])
    found = sorted((root / "annotations").glob("instances_*.json")) if (root / "annotations").is_dir() else []
    if len(found) != 1:
        shown = ", ".join(p.name for p in found) or "none"
        raise SourceError(f"expected one annotations/instances_<split>.json (found {shown}); "
                          "set options.split or options.annotations", path=root.name)
    return found[0], found[0].stem.removeprefix("instances_")


class CocoAdapter:
    """``kind = "coco"``: one item per annotated picture (see the module docstring)."""

    kind = "coco"
    option_types = {"split": STRING, "annotations": STRING, "images": STRING, "crowd": STRING, "categories": STRINGS}

    def items(self, spec: SourceSpec) -> Iterator[SourceItem | SourceError]:
        root, opts = Path(spec.path), spec.options
        if not root.is_dir():
            yield SourceError("source folder not found or not a folder", path=root.name)
            return
        crowd = opts.get("crowd", "exclude")
        if crowd not in CROWD_MODES:
            yield SourceError(f"source {spec.name!r}: options.crowd must be one of {', '.join(CROWD_MODES)}, "
                              f"not {crowd!r}")
            return
        try:
            ann_path, split = _annotation_file(root, opts)
            doc = _read_annotations(ann_path, root)
        except SourceError as exc:
            yield exc
            return
        ann_name = rel(ann_path, root)
        images_dir = root / str(opts.get("images") or split)
        wanted = {str(c) for c in opts.get("categories") or []}
        names: dict[int, str] = {}
        supercategories: dict[str, str] = {}
        known: set[int] = set()
        for cat in doc["categories"]:
            if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not cat.get("name"):
                yield SourceError(f"category {cat!r} needs an integer 'id' and a 'name'", path=ann_name)
                continue
            known.add(cat["id"])
            label = spec.labels.get(str(cat["name"]), str(cat["name"]))
            if label and (not wanted or cat["name"] in wanted):
                names[cat["id"]] = label
                if cat.get("supercategory"):
                    supercategories[label] = str(cat["supercategory"])
        by_image: dict[object, list[dict]] = {}
        for number, ann in enumerate(doc["annotations"]):
            if not isinstance(ann, dict) or ann.get("category_id") not in known:
                # Dropping it would lose an object without a word (and ask about it as absent).
                what = f"category_id {ann.get('category_id')!r} is not among its categories" if isinstance(
                    ann, dict) else "is not an object"
                entry = ann.get("id", f"#{number}") if isinstance(ann, dict) else f"#{number}"
                yield SourceError(f"annotation {entry}: {what}; left out", path=ann_name)
            elif ann["category_id"] in names:
                by_image.setdefault(ann.get("image_id"), []).append(ann)
        for info in sorted(doc["images"], key=lambda i: str(i.get("file_name", "")) if isinstance(i, dict) else ""):
            if not isinstance(info, dict) or not info.get("file_name"):
                yield SourceError(f"image entry {str(info)[:80]} has no file_name", path=ann_name)
                continue
            anns = by_image.get(info.get("id"))
            if not anns:
                continue  # a picture without (wanted) objects has nothing to ask about
            path = images_dir / str(info["file_name"])
            key = rel(path, root)
            if not path.is_file():
                yield SourceError(f"picture listed in {ann_name} not found", path=key)
                continue
            # The item's annotations live in the shared JSON file: their hash joins the resume fingerprint.
            digest = hashlib.sha256(json.dumps([info, anns], sort_keys=True, default=str).encode()).hexdigest()
            yield SourceItem(
                key=key,
                files=[path],
                load=partial(_load, spec, root, path, info, anns, names, supercategories),
                extra=digest,
            )


SOURCE_KINDS.register("coco", CocoAdapter())
