"""What the judge asks and what its verdicts mean, pure: the chat messages for one draft, the key of a
verdict (which judge saw which content) and each draft's current verdict.

A verdict belongs to the draft's content as judged (question, answer, image, boxes) and to the judge
(model and prompt): a redrafted or re-prompted draft is judged anew, and the old verdict stays stored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

from vgmed_build.catalog import now_iso
from vgmed_build.drafting.messages import quoted
from vgmed_build.drafting.templates import Template, sha256_text

if TYPE_CHECKING:
    from vgmed_build.catalog import Catalog

SCHEMA = "llm_judge"
VERDICTS = ("ok", "wrong_target", "not_answerable", "ambiguous", "wrong_answer")
PASS = "ok"  # every other verdict flags the draft for a clinician
_ABSENT_NOTE = "The draft asks about a structure said to be absent from this image (no box).\n"


def content_hash(draft: dict) -> str:
    """sha256 of what the judge saw of ``draft``: question, answer, image and boxes."""
    blob = json.dumps([draft["question"], draft["answer"], draft["image"], draft["boxes"]], separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def judge_name(model: str, prompts: tuple[Template, Template]) -> str:
    """``model@prompt-hash``: verdicts of another model or an edited prompt are another judge's."""
    return f"{model}@{sha256_text(prompts[0].text + chr(10) + prompts[1].text)[:12]}"


def judge_messages(prompts: tuple[Template, Template], draft: dict, image_url: str) -> list[dict]:
    """The chat messages asking for a verdict on ``draft``, its image attached with the boxes in red."""
    system, user = prompts
    absent = bool(draft.get("absent"))
    values = {
        "obj": quoted(draft.get("display_name") or draft["label"]),
        "modality": quoted(draft.get("modality", "")),
        "q_type": draft["q_type"],
        "boxes": "; ".join(str(list(b)) for b in draft["boxes"]) or "none",
        "width": draft["width"],
        "height": draft["height"],
        "absent_note": _ABSENT_NOTE if absent else "",
        "question": quoted(draft["question"]),
        "answer": quoted(draft["answer"]),
    }
    text = user.fill(values)
    return [
        {"role": "system", "content": system.fill(values)},
        {"role": "user", "content": [{"type": "text", "text": text},
                                     {"type": "image_url", "image_url": {"url": image_url}}]},
    ]


def verdict_record(draft: dict, judge: str, model: str, data: dict, usage: dict) -> dict:
    """The stored verdict of ``judge`` on ``draft`` (its current content)."""
    return {
        "draft_id": draft["id"],
        "judge": judge,
        "model": model,
        "content_hash": content_hash(draft),
        "verdict": data["verdict"],
        "reason": data["reason"].strip(),
        **usage,
        "created_at": now_iso(),
    }


def current_verdicts(drafts: Iterable[dict], records: Iterable[dict], judge: str | None = None) -> dict[str, dict]:
    """Per draft id: the latest verdict (of ``judge``, when given) on the draft's current content; a draft
    changed since it was judged has none. ``records`` come oldest first."""
    hashes = {d["id"]: content_hash(d) for d in drafts}
    out: dict[str, dict] = {}
    for rec in records:
        if hashes.get(rec["draft_id"]) == rec["content_hash"] and (judge is None or rec["judge"] == judge):
            out[rec["draft_id"]] = rec
    return out


def current_verdict(catalog: Catalog, draft: dict) -> str | None:
    """The verdict :func:`current_verdicts` keeps for ``draft`` (any judge), looked up in the catalog for
    this draft alone: a stage that streams its drafts never loads every verdict."""
    return catalog.current_judge_verdict(draft["id"], content_hash(draft))


def pick_judge(records: Iterable[dict], name: str | None = None) -> str | None:
    """The judge whose verdicts to use: the one that judged last, or with ``name`` (a judge ``model@hash``
    or a model name) the last of those it names; None when no verdict is stored. ``records`` come oldest
    first. Raises ValueError naming the judges stored when ``name`` names none of them."""
    judges: dict[str, str] = {}  # judge -> model, in the order of their latest verdict
    for rec in records:
        judges.pop(rec["judge"], None)
        judges[rec["judge"]] = rec["model"]
    named = [j for j, model in judges.items() if name is None or name in (j, model)]
    if name is not None and not named:
        raise ValueError(f"--judge-model {name}: no verdict of that judge is stored; the judges run on this build: "
                         f"{', '.join(sorted(judges)) or 'none (run `vgmed-build judge`)'}")
    return named[-1] if named else None


def flags(verdict: dict) -> bool:
    """Whether a verdict sends its draft to a clinician."""
    return verdict["verdict"] != PASS
