"""The picture a reviewer sees: a rendered slice with the patient's directions drawn at its edges.

Label Studio shows the task's image as it is, so the letters (R / L, A / P, S / I, the same table the
report's overlays use, vgmed_build/directions.py) are drawn into a copy under
``images/_review/`` of the build; photos and 2D images, which have no plane, are shown unmarked. The
copy has the original's size, so boxes and edits keep their pixel coordinates; the release uses
the original.
"""

from __future__ import annotations

import os
from pathlib import Path

from vgmed_build.directions import draw_marks, edge_directions
from vgmed_build.review.state import DraftRow

MARKED_DIR = "_review"  # under the build's images/ folder, beside the sources' folders


def marked_path(image: str) -> str:
    """Where the marked copy of ``image`` (a build-relative path, images/<source>/<name>.png) lies."""
    rel = Path(image)
    inner = rel.relative_to("images") if rel.parts[:1] == ("images",) else Path(rel.name)
    return (Path("images") / MARKED_DIR / inner).as_posix()


def review_image(build_dir: Path, row: DraftRow) -> str:
    """The build-relative path of the image to show for ``row``: the marked copy (written when missing or
    older than the original) for a slice with a plane, the original otherwise."""
    from PIL import Image

    plane = row.region.get("plane")
    if not edge_directions(plane):
        return row.draft["image"]
    source, rel = build_dir / row.draft["image"], marked_path(row.draft["image"])
    target = build_dir / rel
    if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
        return rel
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as im:
        marked = draw_marks(im, plane)
    scratch = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    marked.save(scratch, format="PNG")
    os.replace(scratch, target)
    return rel
