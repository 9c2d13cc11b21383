"""Convert between catalog drafts and Label Studio results (pure functions, no I/O).

Label Studio stores rectangles in percent of the image with the rotation (degrees, clockwise) about
the top-left corner; the catalog uses pixel-edge xyxy boxes with x1/y1 exclusive. Pushing a pixel
box and reading it back gives the same integers (the percent values are exact enough for rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vgmed_build.errors import VgmedError

# Names in config.xml; pushing, reading and the config must agree on them.
IMAGE, BOXES, QUESTION, ANSWER, VERDICT, COMMENT = "image", "bbox", "question", "answer", "verdict", "comment"
BOX_LABEL = "target"
VERDICTS = ("accept", "edit", "reject")
# When a draft has several boxes, each one is labelled "box N" in its own colour, so the reviewer can
# tell which is which on the image, in the region list and in the facts; config.xml lists the same.
BOX_COLOURS = (
    ("red", "#ff3b30"),
    ("blue", "#0a84ff"),
    ("green", "#30d158"),
    ("orange", "#ff9f0a"),
    ("purple", "#bf5af2"),
    ("cyan", "#00c7be"),
    ("yellow", "#ffd60a"),
    ("pink", "#ff2d92"),
)
NUMBERED_BOXES = len(BOX_COLOURS)  # boxes beyond these are labelled plainly (BOX_LABEL)


def box_label(index: int, n_boxes: int) -> str:
    """The label of box ``index`` (0-based) of ``n_boxes``: plain for a single box, "box N" otherwise."""
    return BOX_LABEL if n_boxes == 1 or index >= NUMBERED_BOXES else f"box {index + 1}"


def box_colour(index: int, n_boxes: int) -> tuple[str, str]:
    """(name, hex) of the colour box ``index`` is drawn in."""
    return BOX_COLOURS[0] if box_label(index, n_boxes) == BOX_LABEL else BOX_COLOURS[index % len(BOX_COLOURS)]


def box_labels() -> list[tuple[str, str]]:
    """Every (label, hex colour) the config declares for boxes."""
    return [(BOX_LABEL, BOX_COLOURS[0][1])] + [
        (f"box {i + 1}", BOX_COLOURS[i % len(BOX_COLOURS)][1]) for i in range(NUMBERED_BOXES)
    ]


def boxes_to_results(boxes: list[list[int]], width: int, height: int) -> list[dict]:
    """Pixel xyxy boxes -> Label Studio rectangle results (percent of the image)."""
    return [
        {
            "id": f"box{i}",
            "from_name": BOXES,
            "to_name": IMAGE,
            "type": "rectanglelabels",
            "original_width": width,
            "original_height": height,
            "value": {
                "x": 100.0 * x0 / width,
                "y": 100.0 * y0 / height,
                "width": 100.0 * (x1 - x0) / width,
                "height": 100.0 * (y1 - y0) / height,
                "rotation": 0,
                "rectanglelabels": [box_label(i, len(boxes))],
            },
        }
        for i, (x0, y0, x1, y1) in enumerate(boxes)
    ]


def text_result(name: str, text: str) -> dict:
    return {"id": name, "from_name": name, "to_name": IMAGE, "type": "textarea", "value": {"text": [text]}}


def draft_prediction(question: str, answer: str, boxes: list[list[int]], width: int, height: int) -> list[dict]:
    """The pre-filled result a reviewer starts from: the drafted boxes, question and answer."""
    return boxes_to_results(boxes, width, height) + [
        text_result(QUESTION, question),
        text_result(ANSWER, answer),
    ]


def rectangle_to_box(value: dict, width: int, height: int) -> list[int] | None:
    """One Label Studio rectangle -> pixel xyxy box clamped to the image; None when nothing is left.

    A rotated rectangle becomes the axis-aligned box around its corners. Edges are rounded to the
    nearest pixel edge, so x1/y1 stay exclusive.
    """
    x, y = value["x"] * width / 100.0, value["y"] * height / 100.0
    w, h = value["width"] * width / 100.0, value["height"] * height / 100.0
    theta = math.radians(value.get("rotation") or 0.0)
    cos, sin = math.cos(theta), math.sin(theta)
    corners = [(x + dx * cos - dy * sin, y + dx * sin + dy * cos) for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    x0, x1 = (min(max(round(v), 0), width) for v in (min(xs), max(xs)))
    y0, y1 = (min(max(round(v), 0), height) for v in (min(ys), max(ys)))
    if x1 <= x0 or y1 <= y0:
        return None
    return [x0, y0, x1, y1]


class InvalidAnnotation(VgmedError, ValueError):
    """An annotation whose result cannot be read as a review; the message lists every problem found."""


@dataclass
class AnnotationContent:
    """What one reviewer submitted, in catalog terms."""

    verdict: str
    question: str | None  # None when the reviewer removed the text field entirely
    answer: str | None
    boxes: list[list[int]]
    comment: str | None
    dropped_boxes: int  # rectangles entirely outside the image


RECTANGLE_KEYS = ("x", "y", "width", "height")


def _verdict(value: dict) -> tuple[str | None, str | None]:
    """(verdict, problem) of a choices result."""
    choices = value.get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        return None, f"verdict: choices {choices!r} is not a list of text"
    if len(choices) != 1:
        return None, f"verdict: {len(choices)} choices {choices!r}, expected one"
    if choices[0] not in VERDICTS:
        return None, f"unknown verdict {choices[0]!r} (expected one of {', '.join(VERDICTS)})"
    return choices[0], None


def _text(name: str, value: dict) -> tuple[str | None, str | None]:
    """(text, problem) of a textarea result: its lines joined."""
    lines = value.get("text", [])
    if not isinstance(lines, list) or not all(isinstance(t, str) for t in lines):
        return None, f"{name}: text {lines!r} is not a list of strings"
    return "\n".join(lines).strip(), None


def is_number(value: object) -> bool:
    """A finite JSON number (JSON true / false are not numbers, though Python's bools are ints)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _rectangle_problem(value: dict) -> str | None:
    """What keeps a rectangle result from being a box, or None."""
    for key in RECTANGLE_KEYS:
        if key not in value:
            return f"coordinate {key!r} is missing"
        if not is_number(value[key]):
            return f"{key} is {value[key]!r}, not a number"
    rotation = value.get("rotation")
    if rotation is not None and not is_number(rotation):
        return f"rotation is {rotation!r}, not a number"
    return None


def read_annotation(results: list[dict], width: int, height: int) -> AnnotationContent:
    """Read a Label Studio annotation result list back into verdict, text, boxes and comment.

    Raises InvalidAnnotation naming every problem (no verdict, an unknown one, a rectangle without a
    coordinate or with text where a number belongs, ...): a review is stored whole or not at all.
    """
    if not isinstance(results, list):
        raise InvalidAnnotation(f"result is {type(results).__name__}, not a list")
    verdicts: list[str] = []
    texts: dict[str, str | None] = {}
    boxes: list[list[int]] = []
    dropped = 0
    problems: list[str] = []
    n_rect = 0
    for i, r in enumerate(results):
        value = r.get("value") if isinstance(r, dict) else None
        if not isinstance(value, dict):
            problems.append(f"result {i + 1} has no value object")
            continue
        name = r.get("from_name")
        if name == VERDICT:
            verdict, problem = _verdict(value)
            verdicts += [verdict] if verdict else []
        elif name in (QUESTION, ANSWER, COMMENT):
            texts[name], problem = _text(name, value)
        elif name == BOXES and r.get("type") == "rectanglelabels":
            n_rect += 1
            problem = _rectangle_problem(value)
            box = None if problem else rectangle_to_box(value, width, height)
            if problem:
                problem = f"box {n_rect}: {problem}"
            elif box is None:
                dropped += 1
            else:
                boxes.append(box)
        else:
            problem = None
        if problem:
            problems.append(problem)
    if not verdicts and not any(p.startswith(("verdict:", "unknown verdict")) for p in problems):
        problems.insert(0, "no verdict")
    elif len(set(verdicts)) > 1:
        problems.append(f"several verdicts {sorted(set(verdicts))}")
    if problems:
        raise InvalidAnnotation("; ".join(problems))
    return AnnotationContent(
        verdicts[0], texts.get(QUESTION), texts.get(ANSWER), boxes, texts.get(COMMENT) or None, dropped
    )
