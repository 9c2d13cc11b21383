"""What a review task holds: the labeling config and instructions, the task data a reviewer sees
(question, answer, context line, region facts), its content hash and the pre-filled prediction.

Pure functions of a draft and its region: the push (``review/push.py``) sends them, the benchmarks
time them, and nothing here talks to a server.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path

from vgmed_build import modality
from vgmed_build.resources import resource_dir
from vgmed_build.review.convert import BOX_LABEL, NUMBERED_BOXES, box_colour, box_label, draft_prediction
from vgmed_build.review.images import IMAGE_KEY, REVIEW_WINDOWS, WINDOW_KEYS, window_choice, window_key
from vgmed_build.review.state import DraftRow

MODEL_VERSION = "vgmed-draft"
CONFIG_PATH = Path(__file__).with_name("config.xml")
INSTRUCTIONS_FILE = "review_instructions.md"
HASH_KEY = "vgmed_hash"  # task data field holding the content hash, so an adopted task needs no refresh


WINDOWS_PART = re.compile(r"[ \t]*<!-- ct-windows.*?<!-- /ct-windows -->\n", re.S)


def label_config(windows: bool = True) -> str:
    """The labeling config kept in the repository (vgmed_build/review/config.xml); ``windows=False``
    leaves out the CT window views, whose images Label Studio could not take as uploads (it uploads
    files only to a project whose config has one data object)."""
    text = CONFIG_PATH.read_text(encoding="utf-8")
    return text if windows else WINDOWS_PART.sub("", text)


def instructions_html() -> str:
    """The written instructions (``prompts/review_instructions.md``, a team edits it), as the HTML
    Label Studio shows before the first task and from the labeling screen's instructions button."""
    return markdown_html((resource_dir("prompts") / INSTRUCTIONS_FILE).read_text(encoding="utf-8"))


def markdown_html(text: str) -> str:
    """Markdown as HTML with any HTML in the text escaped, and links only to safe schemes.

    Label Studio inserts the project's instructions into the page as raw HTML (unlike task data,
    which every tag our config uses, ``Header`` and the task list's cells, shows as text), so this
    is the one place where escaping is ours to do.
    """
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).render(text)


def context_line(draft: dict) -> str:
    """Region facts shown above the image so the reviewer knows what the draft claims."""
    return (
        f"{draft['q_type']} question · structure: {_structure(draft)} · "
        f"modality: {draft['modality']} · body part: {draft.get('body_part') or '-'} · side: {draft['side']}"
    )


def _structure(draft: dict) -> str:
    """The display name, with the raw label only when it says something the name does not."""
    name, label = draft["display_name"], draft["label"]
    return name if label.lower() == name.lower() else f"{name} (label: {label})"


FACT_KEYS = ("facts_what", "facts_where", "facts_size", "facts_source", "facts_boxes", "facts_note")


def region_facts(draft: dict, region: dict, width: int, height: int, note: str = "") -> dict[str, str]:
    """What a reviewer checks an answer against, one line per task data key of config.xml
    (FACT_KEYS): structure, side and slice, area, source dataset, and each box in image pixels
    (numbered and coloured as on the image)."""
    # a photo has no patient and no plane: neither a side nor edge letters would mean anything
    photo = draft["modality"] == modality.NATURAL
    where = ["photograph (natural-image control)"] if photo else [
        f"patient side: {draft['side']} (from the scanner's coordinates)"]
    plane = region.get("plane")
    if plane and plane != "2d":
        slice_text = f"{plane} slice" + (f" {region['slice_index']}" if region.get("slice_index") is not None else "")
        if region.get("slice_position_mm") is not None:
            slice_text += f" at {float(region['slice_position_mm']):.1f} mm"
        where.append(slice_text)
    if draft.get("absent"):  # the question is about a structure the image does not hold
        return {
            "facts_what": f"{_structure(draft)} · localization question about an absent structure · "
            f"{draft['modality']}, {draft.get('body_part') or 'body part not given'}",
            "facts_where": f"no labelled pixel of {draft['display_name']} in this image (answer 'no')",
            "facts_size": f"image {width} x {height} px",
            "facts_source": f"source: {(region.get('source') or {}).get('dataset') or 'not given'}",
            "facts_boxes": "no boxes: reject the question if the structure is visible after all",
            "facts_note": note,
        }
    size = []
    if "area_ratio" in region:
        size.append(f"area: {100 * float(region['area_ratio']):.2f} % of the image")
    if region.get("n_components") is not None:
        size.append(f"{region['n_components']} separate part(s)")
    size.append(f"image {width} x {height} px")
    source = region.get("source") or {}
    dataset = source.get("dataset") or source.get("name")  # never the item: folder names may name a patient
    boxes = draft["boxes"]
    box_texts = [
        f"{box_label(i, len(boxes))} ({box_colour(i, len(boxes))[0]}): x {x0}-{x1}, y {y0}-{y1}"
        for i, (x0, y0, x1, y1) in enumerate(boxes)
    ]
    if len(boxes) > NUMBERED_BOXES:
        box_texts.append(f"boxes after box {NUMBERED_BOXES} are all labelled {BOX_LABEL} (red)")
    return {
        "facts_what": f"{_structure(draft)} · {draft['q_type']} question · {draft['modality']}, "
        f"{draft.get('body_part') or 'body part not given'}",
        "facts_where": " · ".join(where),
        "facts_size": " · ".join(size),
        "facts_source": f"source: {dataset or 'not given'}",
        "facts_boxes": "boxes in pixels (right/bottom edge exclusive): " + "; ".join(box_texts),
        "facts_note": note,
    }


AS_RELEASED = "as released"  # the window switch's choice that shows the image the boxes are edited on


def window_data(images: Mapping[str, str]) -> dict:
    """The window switch's task data: its title and choices (none unless ``images`` holds the CT
    windows' URLs) and one URL per window of config.xml ('' where there is none: Label Studio wants
    every key its config names, and a window view is only shown once its choice is picked)."""
    names = [n for n in REVIEW_WINDOWS if images.get(window_key(n))]
    return {
        "window_title": "CT window:" if names else "",
        "windows": [{"value": v} for v in ([AS_RELEASED, *map(window_choice, names)] if names else [])],
        **{k: images.get(k) or "" for k in WINDOW_KEYS},
    }


def task_data(row: DraftRow, images: str | Mapping[str, str], note: str = "") -> dict:
    """What the task shows for ``row``; ``images``: the image URL, or task data key -> URL (the image
    and, for a CT slice, its windows: review/images.py ``review_images``)."""
    d = row.draft
    urls = {IMAGE_KEY: images} if isinstance(images, str) else images
    context = context_line(d) + (f" · {note}" if note else "")
    return {
        **region_facts(d, row.region, row.width, row.height, note),
        **window_data(urls),
        "image": urls[IMAGE_KEY],
        "draft_id": d["id"],
        "region_id": d["region_id"],
        "q_type": d["q_type"],
        "modality": d["modality"],
        "label": d["label"],
        "side": d["side"],
        "context": context,
        # shown under the editors, so an edit can be checked against what was drafted
        "draft_text": f"as drafted: {d['question']} | answer: {d['answer']}",
    }


def content_hash(row: DraftRow, note: str = "") -> str:
    """Hash of everything a task shows, independent of where the image is served from."""
    d = row.draft
    payload = [
        task_data(row, d["image"], note),
        d["question"],
        d["answer"],
        d["boxes"],
        row.width,
        row.height,
    ]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def task_payload(row: DraftRow, images: str | Mapping[str, str], note: str = "") -> dict:
    d = row.draft
    return {
        "data": {**task_data(row, images, note), HASH_KEY: content_hash(row, note)},
        "predictions": [
            {
                "model_version": MODEL_VERSION,
                "result": draft_prediction(d["question"], d["answer"], d["boxes"], row.width, row.height),
            }
        ],
    }
