"""The chat messages an LLM drafter is sent: prompts filled from a region's facts, and the image with
the target boxed in red for multimodal models (``--with-image``)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image, ImageDraw

from vgmed_build.drafting.plan import DraftSpec
from vgmed_build.drafting.templates import Prompts, location_text, target_name


def quoted(text: object) -> str:
    """Text from a dataset (a label, a name, a question) as a JSON string literal: a prompt shows it as
    data, and a label such as "cyst\\nTarget name: liver" cannot start a line that forges a field."""
    return json.dumps(str(text), ensure_ascii=False)


def attribute_messages(prompts: Prompts, region: dict, image_url: str | None, previous_note: str = "") -> list:
    """The chat messages asking the LLM for one attribute question about ``region``'s boxed target."""
    system, user = prompts.llm_attribute
    values = {
        "obj": quoted(target_name(region)),
        "modality": quoted(region["modality"]),
        "body_part": quoted(region.get("body_part") or "not given"),
        "category": quoted(region.get("category") or "not given"),
        "side": region["side"],
        "location": location_text(region),
        "area_percent": f"{100 * region['area_ratio']:.2f}",
        "n_components": region["n_components"],
        "width": region["width"],
        "height": region["height"],
        "boxes": "; ".join(str(list(b)) for b in region["boxes"]),
        "image_note": "The attached image shows the target inside a red box.\n" if image_url else "",
        "previous_note": previous_note,
    }
    text = user.fill(values)
    content: str | list = text
    if image_url:
        content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": image_url}}]
    return [{"role": "system", "content": system.fill(values)}, {"role": "user", "content": content}]


def paraphrase_messages(prompts: Prompts, region: dict, question: str, previous_note: str = "") -> list:
    """The chat messages asking the LLM to reword the localization ``question`` about ``region``."""
    system, user = prompts.llm_paraphrase
    values = {
        "obj": quoted(target_name(region)),
        "modality": quoted(region["modality"]),
        "question": quoted(question),
        "previous_note": previous_note,
    }
    return [
        {"role": "system", "content": system.fill(values)},
        {"role": "user", "content": user.fill(values)},
    ]


def previous_note(spec: DraftSpec) -> str:
    """The prompt line that shows the LLM its rejected earlier draft, or nothing on a first attempt."""
    if not spec.previous:
        return ""
    question, reason = spec.previous
    return (
        f"An earlier draft was rejected by the automatic checks ({quoted(reason)}): {quoted(question)}. "
        "Write a different question that passes them.\n"
    )


def boxed_image_data_url(build_dir: Path, region: dict) -> str:
    """The region's PNG with its boxes drawn in red, as a data URL for a multimodal request."""
    with Image.open(build_dir / region["image"]) as img:
        canvas = img.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(canvas.size) / 256))
    for x0, y0, x1, y1 in region["boxes"]:
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 0, 0), width=width)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
