"""Patient directions at the edges of a rendered slice (R / L, A / P, S / I), as letters a reader expects.

Every rendered slice follows the radiological display convention (vgmed_build/imaging.py, docs/ingest.md):
axial and coronal slices show the patient's left on the image right, sagittal ones anterior on the left.
The report's overlays and the review screen's images mark the edges from this one table; a 2D image or
a photo has no plane and gets no marks (a mark would be a guess).
"""

from __future__ import annotations

EDGE_DIRECTIONS = {
    "axial": {"left": "R", "right": "L", "top": "A", "bottom": "P"},
    "coronal": {"left": "R", "right": "L", "top": "S", "bottom": "I"},
    "sagittal": {"left": "A", "right": "P", "top": "S", "bottom": "I"},
}


def edge_directions(plane: str | None) -> dict[str, str] | None:
    """The letter at each image edge of a slice in ``plane``; None for 2D images and unknown planes."""
    return EDGE_DIRECTIONS.get(plane or "")


def mark_positions(width: int, height: int) -> dict[str, tuple[float, float]]:
    """Where each edge's letter is centred, in image pixels: the middle of the edge, a little inside."""
    inset_x, inset_y = max(10.0, 0.035 * width), max(10.0, 0.035 * height)
    return {"left": (inset_x, height / 2), "right": (width - inset_x, height / 2),
            "top": (width / 2, inset_y), "bottom": (width / 2, height - inset_y)}


def draw_marks(image, plane: str | None):
    """A copy of the PIL ``image`` (RGB) with the plane's letters drawn at the edges, white on a dark
    box; None when the plane has no directions."""
    from PIL import ImageDraw, ImageFont

    marks = edge_directions(plane)
    if not marks:
        return None
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=max(7, round(min(out.size) / 18)))
    for edge, (x, y) in mark_positions(*out.size).items():
        box = draw.textbbox((x, y), marks[edge], font=font, anchor="mm")
        pad = max(2, font.size // 5)
        draw.rectangle((box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad), fill=(0, 0, 0))
        draw.text((x, y), marks[edge], font=font, anchor="mm", fill=(255, 255, 255))
    return out
