"""`vgmed-build generate`: draft localization, attribute and position questions for every region.

Work is planned per region as a list of draft slots with stable ids (sha256(region|q_type|slot)).
A slot already stored as ok/rejected by the same drafter (and model) is skipped, so reruns and resumes
redo nothing; 'error' drafts are retried. All drafts of one region are linted together (duplicates are
a per-region notion). Finished drafts and the LLM replies received so far are committed together in
small batches (every 64 drafts or 0.1 s: one commit per draft capped the rate at 100+ drafts/s), so a
draft is never half-written and a crash loses at most the last 0.1 s of replies.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw
from tqdm import tqdm

from vgmed_build.catalog import Catalog, now_iso
from vgmed_build.drafting.batch import BatchQueue, Deferred
from vgmed_build.drafting.lint import LintContext, LintLimits, lint, names_a_side, normalize
from vgmed_build.drafting.llm import BudgetExhausted, LlmClient, LlmConfig, LlmError, ResponseCache, redact
from vgmed_build.drafting.templates import (
    Prompts,
    Template,
    attribute_from_template,
    load_prompts,
    location_text,
    pick_slots,
    target_name,
    target_names,
)
from vgmed_build.identifiers import stable_id

log = logging.getLogger(__name__)

STAGE = "generate"
Q_TYPES = ("localization", "attribute", "position")
_REGION_CHUNK = 500
FLUSH_DRAFTS = 64  # commit a batch once this many drafts are ready ...
FLUSH_S = 0.1  # ... or this many seconds after the last commit


def draft_id(region_id: str, q_type: str, slot: int) -> str:
    return stable_id(region_id, q_type, slot)


@dataclass(frozen=True)
class DraftSpec:
    """One draft slot of one region, and how to fill it."""

    q_type: str
    slot: int
    drafter: str  # "templates" | "llm"
    attempt: int = 0  # > 0 when re-asking the LLM for a rejected draft
    previous: tuple[str, str] | None = None  # (rejected question, reason) shown to the LLM


@dataclass
class Proposal:
    """A drafted question before lint, with its provenance."""

    question: str
    answer: str
    template: Template
    params: dict
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cache_hit: bool | None = None
    error: str | None = None


@dataclass(frozen=True)
class Existing:
    region_id: str
    status: str
    drafter: str | None
    model: str | None
    question: str
    reason: str | None
    attempt: int


@dataclass
class GenerateOptions:
    drafter: str = "templates"
    localization_per_region: int = 1
    attributes_per_region: int = 1
    position_questions: bool = False
    paraphrase: bool = False
    with_image: bool = False
    regenerate_rejected: bool = False
    force: bool = False
    limit: int | None = None
    seed: int = 0
    prompts_dir: Path | None = None
    lint_limits: LintLimits = field(default_factory=LintLimits)
    llm: LlmConfig | None = None
    batch: bool = False  # LLM requests through the provider's batch service (drafting.batch)
    progress: bool = True

    @property
    def needs_llm(self) -> bool:
        return self.drafter == "llm" or self.paraphrase


@dataclass
class GenerateStats:
    regions: int = 0
    regions_drafted: int = 0
    drafts_skipped: int = 0
    ok: int = 0
    rejected: int = 0
    errors: int = 0
    regions_failed: int = 0
    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    cost_usd: float = 0.0
    budget_reached: str | None = None
    batch_waiting: int = 0  # drafts waiting on a batch reply (asked now or earlier)
    batch_submitted: list[str] = field(default_factory=list)  # batch ids created by this run
    batch_downloaded: int = 0

    def summary(self) -> str:
        text = (
            f"{self.regions} regions ({self.regions_drafted} drafted), drafts: {self.ok} ok, "
            f"{self.rejected} rejected, {self.errors} errors, {self.drafts_skipped} already done, "
            f"{self.regions_failed} regions failed; "
            f"LLM: {self.requests} requests, {self.cache_hits} cache hits, {self.retries} retries, "
            f"estimated ${self.cost_usd:.4f}"
        )
        if self.batch_waiting or self.batch_submitted or self.batch_downloaded:
            text += (f"; batch service: {self.batch_downloaded} replies downloaded, {self.batch_waiting} drafts "
                     f"waiting (rerun later to collect them)"
                     + (f", submitted {', '.join(self.batch_submitted)}" if self.batch_submitted else ""))
        return text + (f"; STOPPED: {self.budget_reached}" if self.budget_reached else "")


def run_generate(catalog: Catalog, options: GenerateOptions) -> GenerateStats:
    """Draft every region of ``catalog`` that still needs drafts; returns the run's counts."""
    if options.needs_llm and (options.llm is None or not options.llm.model):
        raise ValueError("the LLM drafter and --paraphrase need --model")
    return asyncio.run(_Generator(catalog, options).run())


class _Generator:
    def __init__(self, catalog: Catalog, options: GenerateOptions):
        self.catalog, self.opt = catalog, options
        self.prompts: Prompts = load_prompts(options.prompts_dir)
        self.stats = GenerateStats()
        self.existing = _load_existing(catalog)
        self.by_region: dict[str, list[tuple[str, Existing]]] = {}
        for i, e in self.existing.items():
            self.by_region.setdefault(e.region_id, []).append((i, e))
        self.client: LlmClient | None = None
        self.stop = False
        self.pending: list[tuple[str, list[dict]]] = []  # (source name, region's drafts) awaiting commit
        self.pending_drafts = 0
        self.last_flush = time.monotonic()
        self.model = options.llm.model if options.needs_llm and options.llm else None

    async def run(self) -> GenerateStats:
        if self.opt.needs_llm:
            self.client = LlmClient(self.opt.llm, ResponseCache(self.catalog))
            if self.opt.batch:
                self.client.batch = BatchQueue(self.catalog, self.client.openai, self.opt.llm.max_retries)
                await self.client.batch.sync()
        n_workers = self.opt.llm.concurrency if self.client else 1
        total = self.catalog.conn.execute("SELECT COUNT(*) FROM regions").fetchone()[0]
        if self.opt.limit is not None:
            total = min(total, self.opt.limit)
        queue: asyncio.Queue = asyncio.Queue(maxsize=2 * n_workers)
        bar = tqdm(total=total, desc="generate", unit="region", disable=not self.opt.progress or None)

        async def produce() -> None:
            for region, specs in self._plan():
                if self.stop:
                    break
                if specs:
                    await queue.put((region, specs))
                else:
                    bar.update(1)
            for _ in range(n_workers):
                await queue.put(None)

        async def work() -> None:
            while (item := await queue.get()) is not None:
                if not self.stop:
                    try:
                        await self._region(*item)
                    except Exception as exc:  # noqa: BLE001 - one bad region never aborts the run
                        self._region_failed(item[0], exc)
                bar.update(1)

        async def flush_periodically() -> None:
            while True:
                await asyncio.sleep(FLUSH_S)
                self._flush()

        flusher = asyncio.create_task(flush_periodically())
        try:
            await asyncio.gather(produce(), *(work() for _ in range(n_workers)))
            if self.client and self.client.batch:
                self._flush()
                await self.client.batch.submit()
        finally:
            flusher.cancel()
            self._flush()
            bar.close()
            if self.client and self.client.batch:
                self.stats.batch_submitted = self.client.batch.submitted
                self.stats.batch_downloaded = self.client.batch.downloaded
            if self.client:
                self.stats.requests = self.client.budget.requests
                self.stats.cache_hits = self.client.cache_hits
                self.stats.retries = self.client.retries
                self.stats.cost_usd = self.client.budget.cost_usd
                await self.client.close()
        return self.stats

    # --- planning -----------------------------------------------------------------------------

    def _plan(self) -> Iterator[tuple[dict, list[DraftSpec]]]:
        for region in _iter_regions(self.catalog, self.opt.limit):
            self.stats.regions += 1
            specs = [s for s in self._slots(region) if self._needs_work(region["id"], s)]
            yield region, [self._with_history(region["id"], s) for s in specs]

    def _slots(self, region: dict) -> list[DraftSpec]:
        p, o = self.prompts.for_region(region), self.opt
        loc_drafter = "llm" if o.paraphrase else "templates"
        specs = [
            DraftSpec("localization", s, loc_drafter)
            for s in pick_slots(region["id"], len(p.localization), o.localization_per_region)
        ]
        n_attr = (
            o.attributes_per_region
            if o.drafter == "llm"
            else min(o.attributes_per_region, len(p.attribute_profile(region)))
        )
        specs += [DraftSpec("attribute", s, o.drafter) for s in range(n_attr)]
        lateral = region.get("side") in ("left", "right")
        if o.position_questions and lateral and p.position and not names_a_side(target_name(region)):
            specs.append(DraftSpec("position", 0, "templates"))
        return specs

    def _needs_work(self, region_id: str, spec: DraftSpec) -> bool:
        old = self.existing.get(draft_id(region_id, spec.q_type, spec.slot))
        if old is None or self.opt.force or old.status == "error":
            return True
        if old.drafter != spec.drafter or (spec.drafter == "llm" and old.model != self.model):
            return True
        if old.status == "rejected" and self.opt.regenerate_rejected and spec.drafter == "llm":
            return True
        self.stats.drafts_skipped += 1
        return False

    def _with_history(self, region_id: str, spec: DraftSpec) -> DraftSpec:
        old = self.existing.get(draft_id(region_id, spec.q_type, spec.slot))
        if old and old.status == "rejected" and self.opt.regenerate_rejected and spec.drafter == "llm":
            return DraftSpec(spec.q_type, spec.slot, spec.drafter, old.attempt + 1, (old.question, old.reason or ""))
        return spec

    # --- drafting -----------------------------------------------------------------------------

    async def _region(self, region: dict, specs: list[DraftSpec]) -> None:
        results = await asyncio.gather(*(self._propose(region, s) for s in specs), return_exceptions=True)
        done = []
        for spec, result in zip(specs, results, strict=True):
            if isinstance(result, Deferred):  # its reply comes from a batch; the slot stays open
                self.stats.batch_waiting += 1
            elif isinstance(result, BudgetExhausted):
                self.stop = True
                self.stats.budget_reached = str(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                done.append((spec, result))
        if done:
            self._store(region, done)
            self.stats.regions_drafted += 1

    async def _propose(self, region: dict, spec: DraftSpec) -> Proposal:
        name = target_name(region)
        base = {"slot": spec.slot}
        prompts = self.prompts.for_region(region)
        if spec.q_type == "position":
            tpl = prompts.position[pick_slots(region["id"], len(prompts.position), 1)[0]]
            return Proposal(tpl.ask_about(name), region["side"], tpl, base)
        if spec.q_type == "localization":
            tpl = prompts.localization[spec.slot]
            question = tpl.ask_about(name)
            if spec.drafter == "templates":
                return Proposal(question, "yes", tpl, base)
            return await self._llm_paraphrase(region, spec, tpl, question)
        if spec.drafter == "templates":
            found = attribute_from_template(prompts, region, spec.slot)
            if found is None:  # planning only asks for slots a profile covers
                raise RuntimeError(f"region {region['id']}: no attribute profile")
            tpl, question, answer = found
            return Proposal(question, answer, tpl, {**base, "attribute": tpl.name.split(":", 1)[1]})
        return await self._llm_attribute(region, spec)

    def _llm_params(self, spec: DraftSpec) -> dict:
        return {"seed": self.opt.seed + spec.slot + 1000 * spec.attempt}

    async def _llm_attribute(self, region: dict, spec: DraftSpec) -> Proposal:
        url = None
        if self.opt.with_image:
            url = await asyncio.to_thread(boxed_image_data_url, self.catalog.build_dir, region)
        prompts = self.prompts.for_region(region)
        messages = attribute_messages(prompts, region, url, _previous_note(spec))
        system, user = prompts.llm_attribute
        tpl = Template("llm_attribute", system.text + "\n" + user.text)
        params = {
            "slot": spec.slot,
            "attempt": spec.attempt,
            "with_image": self.opt.with_image,
            **self._llm_params(spec),
        }
        return await self._ask(messages, "llm_attribute", tpl, params, answer=None)

    async def _llm_paraphrase(self, region: dict, spec: DraftSpec, loc: Template, question: str) -> Proposal:
        system, user = self.prompts.for_region(region).llm_paraphrase
        values = {
            "obj": target_name(region),
            "modality": region["modality"],
            "question": question,
            "previous_note": _previous_note(spec),
        }
        messages = [
            {"role": "system", "content": system.fill(values)},
            {"role": "user", "content": user.fill(values)},
        ]
        tpl = Template(f"llm_paraphrase+{loc.name}", system.text + "\n" + user.text + "\n" + loc.text)
        params = {"slot": spec.slot, "attempt": spec.attempt, "original": question, **self._llm_params(spec)}
        return await self._ask(messages, "llm_paraphrase", tpl, params, answer="yes")

    async def _ask(self, messages: list, schema: str, tpl: Template, params: dict, answer: str | None) -> Proposal:
        assert self.client is not None
        call_params = {"seed": params["seed"]}
        params = {
            **params,
            "temperature": self.client.config.temperature,
            "max_tokens": self.client.config.max_tokens,
        }
        try:
            reply = await self.client.complete(messages, schema, call_params)
        except LlmError as exc:
            return Proposal(
                "",
                "",
                tpl,
                params,
                self.model,
                exc.prompt_tokens,
                exc.completion_tokens,
                exc.cost_usd,
                False,
                error=f"llm: {exc}",
            )
        data = reply.data
        if "attribute" in data:
            params["attribute"] = data["attribute"]
        return Proposal(
            data["question"].strip(),
            answer or data["answer"].strip(),
            tpl,
            params,
            self.model,
            reply.prompt_tokens,
            reply.completion_tokens,
            reply.cost_usd,
            reply.cache_hit,
        )

    def _region_failed(self, region: dict, exc: Exception) -> None:
        """A region that cannot be drafted at all (e.g. its image is missing for --with-image): stored
        in the errors table, the run goes on, and the next run tries the region again."""
        self.stats.regions_failed += 1
        message = redact(f"cannot draft: {type(exc).__name__}: {exc}")
        log.error("region %s (%s): %s", region["id"], region.get("image", "?"), message)
        self.catalog.record_error(STAGE, f"region {region['id']}", message, source=region["source"]["name"])

    # --- lint and store -----------------------------------------------------------------------

    def _store(self, region: dict, done: list[tuple[DraftSpec, Proposal]]) -> None:
        redone = {draft_id(region["id"], s.q_type, s.slot) for s, _ in done}
        others = {
            normalize(e.question)
            for i, e in self.by_region.get(region["id"], [])
            if e.status == "ok" and i not in redone
        }
        ctx = LintContext(target_names(region), others, self.opt.lint_limits)
        records = []
        for spec, prop in sorted(done, key=lambda d: (Q_TYPES.index(d[0].q_type), d[0].slot)):
            record = build_record(region, spec, prop)
            if prop.error is None:
                reason = lint(record, ctx)
                if reason:
                    record["status"], record["reason"] = "rejected", reason
                else:
                    ctx.others.add(normalize(record["question"]))
            records.append(record)
        self.pending.append((region["source"]["name"], records))
        self.pending_drafts += len(records)
        for rec in records:
            counter = {"ok": "ok", "rejected": "rejected", "error": "errors"}[rec["status"]]
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
            if rec["status"] == "error":
                log.warning("%s: %s", rec["id"], rec["reason"])
        if self.pending_drafts >= FLUSH_DRAFTS or time.monotonic() - self.last_flush >= FLUSH_S:
            self._flush()

    def _flush(self) -> None:
        """Commit the finished regions' drafts and the LLM replies received so far in one transaction:
        every draft is whole or absent, and at most FLUSH_S of finished work is lost to a crash."""
        self.last_flush = time.monotonic()
        cache = self.client.cache if self.client else None
        discarded = self.client.batch.discarded if self.client and self.client.batch else None
        if not self.pending and not (cache and cache.pending) and not discarded:
            return
        with self.catalog.transaction() as conn:
            if cache:
                cache.flush(conn)
            if self.client and self.client.batch:
                self.client.batch.flush(conn)
            for source, records in self.pending:
                conn.execute(
                    "DELETE FROM errors WHERE stage=? AND item=?", (STAGE, f"region {records[0]['region_id']}")
                )
                for rec in records:
                    _write_draft(conn, source, rec)
        self.pending, self.pending_drafts = [], 0


def _write_draft(conn: sqlite3.Connection, source: str, rec: dict) -> None:
    """Upsert one draft (never INSERT OR REPLACE: that would cascade-delete its review tasks) and keep
    the errors table in step with its status."""
    conn.execute(
        "INSERT INTO drafts (id, region_id, q_type, status, reason, record_json, created_at) "
        "VALUES (?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET status=excluded.status, "
        "reason=excluded.reason, record_json=excluded.record_json, created_at=excluded.created_at",
        (
            rec["id"],
            rec["region_id"],
            rec["q_type"],
            rec["status"],
            rec["reason"],
            json.dumps(rec, ensure_ascii=False),
            rec["provenance"]["created_at"],
        ),
    )
    item = f"region {rec['region_id']} draft {rec['id']} ({rec['q_type']})"
    conn.execute("DELETE FROM errors WHERE stage=? AND item=?", (STAGE, item))
    if rec["status"] == "error":
        conn.execute(
            "INSERT OR IGNORE INTO errors (stage, source, item, message, created_at) VALUES (?,?,?,?,?)",
            (STAGE, source, item, rec["reason"], now_iso()),
        )


def attribute_messages(prompts: Prompts, region: dict, image_url: str | None, previous_note: str = "") -> list:
    """The chat messages asking the LLM for one attribute question about ``region``'s boxed target."""
    system, user = prompts.llm_attribute
    values = {
        "obj": target_name(region),
        "modality": region["modality"],
        "body_part": region.get("body_part") or "not given",
        "category": region.get("category") or "not given",
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


def _previous_note(spec: DraftSpec) -> str:
    if not spec.previous:
        return ""
    question, reason = spec.previous
    return (
        f"An earlier draft was rejected by the automatic checks ({reason}): {question!r}. "
        "Write a different question that passes them.\n"
    )


def build_record(region: dict, spec: DraftSpec, prop: Proposal) -> dict:
    """The draft record (schemas/draft.schema.json); status 'ok' until lint says otherwise."""
    return {
        "id": draft_id(region["id"], spec.q_type, spec.slot),
        "region_id": region["id"],
        "q_type": spec.q_type,
        "slot": spec.slot,
        "question": prop.question,
        "answer": prop.answer,
        "image": region["image"],
        "width": region["width"],
        "height": region["height"],
        "boxes": [list(b) for b in region["boxes"]],
        "label": region["label"],
        "display_name": region["display_name"],
        "modality": region["modality"],
        "body_part": region.get("body_part", ""),
        "side": region["side"],
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


def _load_existing(catalog: Catalog) -> dict[str, Existing]:
    rows = catalog.conn.execute(
        "SELECT id, region_id, status, json_extract(record_json, '$.provenance.drafter'), "
        "json_extract(record_json, '$.provenance.model'), json_extract(record_json, '$.question'), reason, "
        "json_extract(record_json, '$.provenance.params.attempt') FROM drafts"
    )
    return {r[0]: Existing(r[1], r[2], r[3], r[4], r[5] or "", r[6], int(r[7] or 0)) for r in rows}


def _iter_regions(catalog: Catalog, limit: int | None) -> Iterator[dict]:
    """Regions by id, read in chunks so no cursor stays open while drafts are written."""
    sql = "SELECT id FROM regions ORDER BY id" + (f" LIMIT {int(limit)}" if limit is not None else "")
    ids = [r[0] for r in catalog.conn.execute(sql).fetchall()]
    for start in range(0, len(ids), _REGION_CHUNK):
        chunk = ids[start : start + _REGION_CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = catalog.conn.execute(
            f"SELECT record_json FROM regions WHERE id IN ({marks}) ORDER BY id", chunk
        ).fetchall()
        for (rec,) in rows:
            yield json.loads(rec)


def export_drafts(catalog: Catalog, status: str = "all", q_type: str | None = None) -> Iterator[dict]:
    """Stored drafts in a stable order, filtered by status ('ok', 'rejected', 'error', 'all')."""
    sql, args = "SELECT record_json FROM drafts WHERE 1=1", []
    if status != "all":
        sql += " AND status=?"
        args.append(status)
    if q_type:
        sql += " AND q_type=?"
        args.append(q_type)
    for (rec,) in catalog.conn.execute(sql + " ORDER BY region_id, q_type, id", args):
        yield json.loads(rec)
