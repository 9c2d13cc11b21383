"""Draft records: built from a proposal, linted per region, and written to the catalog.

All drafts of one region are linted together (duplicates are a per-region notion). A draft is
upserted, never replaced (a replace would cascade-delete its review tasks), and the errors table is
kept in step with its status in the same transaction.
"""

from __future__ import annotations

from dataclasses import replace

from vgmed_build.catalog import Transaction, now_iso
from vgmed_build.drafting.lint import LintContext, LintLimits, lint, normalize
from vgmed_build.drafting.plan import DraftSpec
from vgmed_build.drafting.propose import Proposal
from vgmed_build.drafting.templates import target_names
from vgmed_build.release_format import QUESTION_TYPES

STAGE = "generate"


def build_record(region: dict, spec: DraftSpec, prop: Proposal) -> dict:
    """The draft record (schemas/draft.schema.json); status 'ok' until lint says otherwise. A question
    about an absent structure names that structure, has no boxes and no side (it is not in the image)."""
    target = prop.absent or region
    return {
        "id": spec.draft_id(region["id"]),
        "region_id": region["id"],
        "q_type": spec.q_type,
        "slot": spec.slot,
        "question": prop.question,
        "answer": prop.answer,
        "image": region["image"],
        "width": region["width"],
        "height": region["height"],
        "boxes": [] if prop.absent else [list(b) for b in region["boxes"]],
        "absent": prop.absent is not None,
        "label": target["label"],
        "display_name": target["display_name"],
        "modality": region["modality"],
        "body_part": region.get("body_part", ""),
        "side": "unknown" if prop.absent else region["side"],
        "status": "error" if prop.error else "ok",
        "reason": prop.error,
        "provenance": {
            "drafter": spec.drafter,
            "model": prop.model,
            "template": prop.template.name,
            "template_hash": prop.template.sha256,
            "params": prop.params,
            "prompt_tokens": prop.prompt_tokens,
            "completion_tokens": prop.completion_tokens,
            "cost_usd": round(prop.cost_usd, 8),
            **({"cache_hit": prop.cache_hit} if prop.cache_hit is not None else {}),
            "created_at": now_iso(),
        },
    }


def region_records(
    region: dict, done: list[tuple[DraftSpec, Proposal]], kept_questions: list[str], limits: LintLimits
) -> list[dict]:
    """The records of one region's new drafts, linted together and against the region's other ok
    questions (``kept_questions``); a draft lint rejects gets status 'rejected' and the reason."""
    ctx = LintContext(target_names(region), {normalize(q) for q in kept_questions}, limits,
                      str(region.get("category") or ""))
    records = []
    order = {q_type: i for i, q_type in enumerate(QUESTION_TYPES)}
    for spec, prop in sorted(done, key=lambda d: (order[d[0].q_type], d[0].absent is not None, d[0].slot)):
        record = build_record(region, spec, prop)
        if prop.error is None:
            own = ctx if prop.absent is None else replace(ctx, names=target_names(prop.absent),
                                                         category=prop.absent["category"])
            reason = lint(record, own)
            if reason:
                record["status"], record["reason"] = "rejected", reason
            else:
                ctx.others.add(normalize(record["question"]))
        records.append(record)
    return records


def region_item(region_id: str) -> str:
    """The errors table's item for a region that could not be drafted at all."""
    return f"region {region_id}"


def write_region_drafts(tx: Transaction, source: str, records: list[dict]) -> None:
    """Store one region's drafts in the caller's unit of work: the region's own error (it could be
    drafted now) goes, each draft's error follows its status."""
    tx.clear_errors(STAGE, region_item(records[0]["region_id"]))
    for rec in records:
        tx.upsert_draft(rec)
        item = f"{region_item(rec['region_id'])} draft {rec['id']} ({rec['q_type']})"
        tx.clear_errors(STAGE, item)
        if rec["status"] == "error":
            tx.record_error(STAGE, item, rec["reason"], source=source)
