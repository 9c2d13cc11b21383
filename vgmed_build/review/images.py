"""The pictures a reviewer sees: a rendered slice with the patient's directions drawn at its edges, and
for a CT slice the same slice in other windows.

Label Studio shows the task's image as it is, so the letters (R / L, A / P, S / I, the same table the
report's overlays use, vgmed_build/directions.py) are drawn into a copy under
``images/_review/`` of the build; photos and 2D images, which have no plane, are shown unmarked. The
copy has the original's size, so boxes and edits keep their pixel coordinates; the release uses
the original.

A released CT slice is windowed once, at ingest. For review, each CT slice is also rendered in the
windows of REVIEW_WINDOWS (soft tissue, lung, bone: ``modality.CT_WINDOWS``) from the Hounsfield
units ingest kept beside it (vgmed_build/ctslices.py), never from the windowed PNG, with the letters
and the draft's boxes drawn in (outlines in the box colours of the review screen); the review screen
switches to them (config.xml, "Window").
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from vgmed_build.ctslices import beside, decode_hu, hu_path
from vgmed_build.directions import draw_marks, edge_directions
from vgmed_build.modality import CT_WINDOWS
from vgmed_build.review.convert import box_colour
from vgmed_build.review.state import DraftRow

MARKED_DIR = "_review"  # under the build's images/ folder, beside the sources' folders
IMAGE_KEY = "image"  # the task data key of the image the boxes are drawn and edited on
REVIEW_WINDOWS = ("soft_tissue", "lung", "bone")  # the CT windows a reviewer can switch to


def window_key(name: str) -> str:
    """The task data key of the slice rendered in CT window ``name``."""
    return f"window_{name}"


WINDOW_KEYS = tuple(window_key(n) for n in REVIEW_WINDOWS)


def window_choice(name: str) -> str:
    """What the review screen's window switch calls CT window ``name`` (no comma: config.xml's
    ``whenChoiceValue`` lists values with commas), e.g. ``lung W1500 L-600``."""
    level, width = CT_WINDOWS[name]
    return f"{name.replace('_', ' ')} W{width:g} L{level:g}"


def marked_path(image: str) -> str:
    """Where the marked copy of ``image`` (a build-relative path, images/<source>/<name>.png) lies."""
    return beside(image, MARKED_DIR)


def review_images(build_dir: Path, row: DraftRow, windows: bool = True) -> dict[str, str]:
    """Task data key -> build-relative path of each picture shown for ``row``: ``image`` (see
    :func:`review_image`) and, with ``windows`` and for a CT slice whose Hounsfield units ingest kept,
    one per window of REVIEW_WINDOWS (:func:`window_key`)."""
    shown = {IMAGE_KEY: review_image(build_dir, row)}
    hu = build_dir / hu_path(row.draft["image"])
    if windows and hu.exists():
        shown.update({window_key(n): window_image(build_dir, row, n) for n in REVIEW_WINDOWS})
    return shown


def review_image(build_dir: Path, row: DraftRow) -> str:
    """The build-relative path of the image to show for ``row``: the marked copy (written when missing or
    older than the original) for a slice with a plane, the original otherwise."""
    from PIL import Image

    plane = row.region.get("plane")
    if not edge_directions(plane):
        return row.draft["image"]
    source, rel = build_dir / row.draft["image"], marked_path(row.draft["image"])
    target = build_dir / rel
    if _fresh(target, source):
        return rel
    with Image.open(source) as im:
        _save(draw_marks(im, plane), target)
    return rel


def window_image(build_dir: Path, row: DraftRow, name: str) -> str:
    """The build-relative path of ``row``'s CT slice in window ``name``, with the letters and the draft's
    boxes drawn in; written when missing or older than the Hounsfield units. Drafts with the same
    boxes on one slice share the file."""
    from PIL import Image, ImageDraw

    from vgmed_build.imaging import ct_window, to_uint8

    boxes = row.draft["boxes"]
    key = hashlib.sha256(json.dumps(boxes).encode("utf-8")).hexdigest()[:10]
    units = build_dir / hu_path(row.draft["image"])
    rel = marked_path(row.draft["image"]).removesuffix(".png") + f".{name}.{key}.png"
    target = build_dir / rel
    if _fresh(target, units):
        return rel
    grey = Image.fromarray(to_uint8(decode_hu(units.read_bytes()), *ct_window(name)))
    shown = draw_marks(grey, row.region.get("plane")) or grey.convert("RGB")
    draw = ImageDraw.Draw(shown)
    line = max(1, round(min(shown.size) / 256))
    for i, (x0, y0, x1, y1) in enumerate(boxes):  # right / bottom edges are exclusive
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=box_colour(i, len(boxes))[1], width=line)
    _save(shown, target)
    return rel


def _fresh(target: Path, source: Path) -> bool:
    return target.exists() and target.stat().st_mtime >= source.stat().st_mtime


def _save(image, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    image.save(scratch, format="PNG")
    os.replace(scratch, target)
