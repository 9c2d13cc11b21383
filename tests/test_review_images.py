"""What a review task shows, without a server: the slice with the patient's directions drawn at its edges
(photos and 2D images unmarked, at the original's size), no patient side for a photo, the draft beside
the edit, and what "target" means when a draft has more boxes than colours.

The build is the real CT crop of labelstudio_fixture.make_build, as push reads it (load_drafts).
"""

from __future__ import annotations

import numpy as np
from labelstudio_fixture import make_build
from PIL import Image

from vgmed_build.directions import edge_directions, mark_positions
from vgmed_build.review.images import review_image
from vgmed_build.review.state import DraftRow, load_drafts
from vgmed_build.review.tasks import region_facts, task_data


def _row(tmp_path, plane):
    catalog = make_build(tmp_path / "build", n_images=1, q_types=("localization",), plane=plane)
    return catalog.build_dir, load_drafts(catalog)[0]


def test_a_slice_is_shown_with_its_directions_marked_at_the_edges(tmp_path):
    build, row = _row(tmp_path, "axial")
    shown = review_image(build, row)
    assert shown == "images/_review/ct/series0.png" and row.draft["image"] == "images/ct/series0.png"
    original = np.asarray(Image.open(build / row.draft["image"]).convert("RGB")).astype(int)
    marked = np.asarray(Image.open(build / shown).convert("RGB")).astype(int)
    assert marked.shape == original.shape  # boxes keep their pixel coordinates
    changed = np.argwhere((marked != original).any(axis=2))
    h, w = original.shape[:2]
    centres = np.array([(y, x) for x, y in mark_positions(w, h).values()])
    # every changed pixel belongs to one of the four marks, and every mark has a dark box and a white letter
    nearest = np.abs(changed[:, None, :] - centres[None, :, :]).max(axis=2).min(axis=1)
    assert nearest.max() <= 14
    for x, y in mark_positions(w, h).values():
        patch = marked[round(y) - 5: round(y) + 6, round(x) - 5: round(x) + 6]
        assert (patch == 0).all(axis=2).any() and (patch > 160).all(axis=2).any(), (x, y)  # letters antialiased
    assert edge_directions("axial") == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    # a second push reuses the copy; a newer original is marked again
    mtime = (build / shown).stat().st_mtime_ns
    assert review_image(build, row) == shown and (build / shown).stat().st_mtime_ns == mtime


def test_photos_and_2d_images_are_shown_unmarked(tmp_path):
    build, row = _row(tmp_path, None)
    assert review_image(build, row) == row.draft["image"]
    assert not (build / "images" / "_review").exists()


def _draft(modality: str, n_boxes: int = 1) -> dict:
    return {"id": "d", "region_id": "r", "q_type": "localization", "question": "Is there a cup?", "answer": "yes",
            "image": "images/x.png", "boxes": [[i, i, i + 5, i + 5] for i in range(n_boxes)], "label": "cup",
            "display_name": "cup", "modality": modality, "body_part": None, "side": "none"}


def test_a_photo_has_no_patient_side_a_slice_has(tmp_path):
    photo = region_facts(_draft("Natural"), {"plane": "2d"}, 600, 400)
    assert photo["facts_where"] == "photograph (natural-image control)"
    ct = region_facts(_draft("CT") | {"side": "right"}, {"plane": "axial", "slice_index": 12}, 512, 512)
    assert ct["facts_where"] == "patient side: right (from the scanner's coordinates) · axial slice 12"


def test_the_draft_is_shown_beside_the_edit_and_target_is_explained():
    data = task_data(DraftRow(_draft("CT", n_boxes=10), 512, 512, {"plane": "axial"}), "/img")
    assert data["draft_text"] == "as drafted: Is there a cup? | answer: yes"
    boxes = data["facts_boxes"]
    assert "box 8 (pink)" in boxes and "target (red): x 8-13" in boxes
    assert boxes.endswith("boxes after box 8 are all labelled target (red)")
