"""`vgmed-build generate`: draft localization, attribute and position questions for every region.

The loop: regions stream in by id (drafting.plan says which slots each still needs), workers fill
the slots (drafting.propose: templates or the LLM), and each region's drafts are linted together and
stored (drafting.records). Finished drafts and the LLM replies received so far are committed together
in small batches (every 64 drafts or 0.1 s: one commit per draft capped the rate at 100+ drafts/s), so
a draft is never half-written and a crash loses at most the last 0.1 s of replies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from vgmed_build.catalog import Catalog
from vgmed_build.drafting.batch import BatchQueue, Deferred
from vgmed_build.drafting.llm import BudgetExhausted, LlmClient, LlmFatal, ResponseCache, redact
from vgmed_build.drafting.plan import UNBALANCED, DraftSpec, GenerateOptions, Planner
from vgmed_build.drafting.propose import Proposal, Proposer
from vgmed_build.drafting.records import STAGE, region_item, region_records, write_region_drafts
from vgmed_build.drafting.templates import Prompts, load_prompts
from vgmed_build.interrupt import disk_full

log = logging.getLogger(__name__)

_REGION_CHUNK = 128  # regions read at a time (by id, after the last one): memory stays flat
FLUSH_DRAFTS = 64  # commit a batch once this many drafts are ready ...
FLUSH_S = 0.1  # ... or this many seconds after the last commit


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
    usage_estimated: int = 0  # replies whose token usage was unusable (cost counted as an upper bound)
    budget_reached: str | None = None
    fatal: str | None = None  # why no request of this run could succeed (bad key, model not served)
    batch_waiting: int = 0  # drafts waiting on a batch reply (asked now or earlier)
    batch_submitted: list[str] = field(default_factory=list)  # batch ids created by this run
    batch_downloaded: int = 0
    # Per source whose images lack absent structures: ("no" planned, "no" as many as "yes" would be,
    # localization "yes" left out to balance them (--unbalanced drop-yes; 0 under keep), "yes" it had)
    unbalanced: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    unknown_labels: dict[str, int] = field(default_factory=dict)  # per source: regions ingest kept no labels of
    surplus_stored: int = 0  # stored ok "yes" drafts of earlier runs beyond the balance (kept, released)

    def summary(self) -> str:
        text = (
            f"{self.regions} regions ({self.regions_drafted} drafted), drafts: {self.ok} ok, "
            f"{self.rejected} rejected, {self.errors} errors, {self.drafts_skipped} already done, "
            f"{self.regions_failed} regions failed; "
            f"LLM: {self.requests} requests, {self.cache_hits} cache hits, {self.retries} retries, "
            f"estimated ${self.cost_usd:.4f}"
        )
        if self.usage_estimated:
            text += f" ({self.usage_estimated} replies without usable token usage: counted as an upper bound)"
        if self.batch_waiting or self.batch_submitted or self.batch_downloaded:
            text += (f"; batch service: {self.batch_downloaded} replies downloaded, {self.batch_waiting} drafts "
                     f"waiting (rerun later to collect them)"
                     + (f", submitted {', '.join(self.batch_submitted)}" if self.batch_submitted else ""))
        text += self._balance_text()
        stopped = self.fatal or self.budget_reached
        return text + (f"; STOPPED: {stopped}" if stopped else "")

    def _balance_text(self) -> str:
        """What the result line says about the localization answers' balance (docs/generate.md)."""
        text = ""
        dropped = {s: u for s, u in sorted(self.unbalanced.items()) if u[2]}
        kept = {s: u for s, u in sorted(self.unbalanced.items()) if not u[2]}
        if dropped:
            text += ("; localization 'yes' left out to balance the 'no' (too few structures absent from their "
                     "images; --unbalanced keep keeps them): " + ", ".join(
                         f"{source} {out} of {yes}" + (f" ({no} 'no')" if no else " (no 'no' possible: no "
                                                        "localization question)")
                         for source, (no, _, out, yes) in dropped.items()))
        if kept:
            text += "; localization answers unbalanced (too few structures absent from their images): " + ", ".join(
                f"{source} {no} 'no' of {target}" for source, (no, target, _, _) in kept.items())
        if self.unknown_labels:
            text += ("; localization answers not balanced on regions whose image labels ingest did not record "
                     "(ingest --force records them): " + ", ".join(
                         f"{source} {n}" for source, n in sorted(self.unknown_labels.items())))
        if self.surplus_stored:
            text += (f"; {self.surplus_stored} localization 'yes' drafts stored by an earlier run are beyond the "
                     "balance: they stay in the catalog and are released unless review rejects them")
        return text


def run_generate(catalog: Catalog, options: GenerateOptions) -> GenerateStats:
    """Draft every region of ``catalog`` that still needs drafts; returns the run's counts."""
    if options.needs_llm and (options.llm is None or not options.llm.model):
        raise ValueError("the LLM drafter and --paraphrase need --model")
    if options.unbalanced not in UNBALANCED:
        raise ValueError(f"--unbalanced {options.unbalanced!r}: expected one of {', '.join(UNBALANCED)}")
    return asyncio.run(_Generator(catalog, options).run())


class _Generator:
    def __init__(self, catalog: Catalog, options: GenerateOptions):
        self.catalog, self.opt = catalog, options
        self.prompts: Prompts = load_prompts(options.prompts_dir)
        self.stats = GenerateStats()
        self.planner = Planner(catalog, options, self.prompts)
        self.stats.unbalanced = self.planner.unbalanced()
        self.stats.unknown_labels = {s: b.unknown for s, b in self.planner.balance.items() if b.unknown}
        self.client: LlmClient | None = None
        self.proposer = Proposer(catalog.build_dir, options, self.prompts, None, self.planner.structures)
        self.stop = False
        self.pending: list[tuple[str, list[dict]]] = []  # (source name, region's drafts) awaiting commit
        self.pending_drafts = 0
        self.last_flush = time.monotonic()

    async def run(self) -> GenerateStats:
        if self.opt.needs_llm:
            self.client = LlmClient(self.opt.llm, ResponseCache(self.catalog))
            self.proposer.client = self.client
            if self.opt.batch:
                self.client.batch = BatchQueue(self.catalog, self.client.openai, self.opt.llm.max_retries)
                await self.client.batch.sync()
        n_workers = self.opt.llm.concurrency if self.client else 1
        total = self.catalog.count_regions()
        if self.opt.limit is not None:
            total = min(total, self.opt.limit)
        queue: asyncio.Queue = asyncio.Queue(maxsize=2 * n_workers)
        bar = tqdm(total=total, desc="generate", unit="region", disable=not self.opt.progress or None)

        async def produce() -> None:
            for region in self.catalog.regions_in_chunks(self.opt.limit, _REGION_CHUNK):
                self.stats.regions += 1
                specs, done = self.planner.work_for(region)
                self.stats.drafts_skipped += done
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
                        if disk_full(exc):  # no fault of the region's: the run stops with one line
                            raise
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
            self.stats.surplus_stored = self.planner.surplus_stored
            if self.client and self.client.batch:
                self.stats.batch_submitted = self.client.batch.submitted
                self.stats.batch_downloaded = self.client.batch.downloaded
            if self.client:
                self.stats.requests = self.client.budget.requests
                self.stats.cache_hits = self.client.cache_hits
                self.stats.retries = self.client.retries
                self.stats.cost_usd = self.client.budget.cost_usd
                self.stats.usage_estimated = self.client.usage_estimated
                await self.client.close()
        return self.stats

    async def _region(self, region: dict, specs: list[DraftSpec]) -> None:
        results = await asyncio.gather(*(self.proposer.propose(region, s) for s in specs), return_exceptions=True)
        done = []
        for spec, result in zip(specs, results, strict=True):
            if isinstance(result, Deferred):  # its reply comes from a batch; the slot stays open
                self.stats.batch_waiting += 1
            elif isinstance(result, BudgetExhausted):
                self.stop = True
                self.stats.budget_reached = str(result)
            elif isinstance(result, LlmFatal):  # the slot stays open; the run stops sending
                self.stop = True
                self.stats.fatal = self.stats.fatal or str(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                done.append((spec, result))
        if done:
            self._store(region, done)
            self.stats.regions_drafted += 1

    def _region_failed(self, region: dict, exc: Exception) -> None:
        """A region that cannot be drafted at all (e.g. its image is missing for --with-image): stored
        in the errors table, the run goes on, and the next run tries the region again."""
        self.stats.regions_failed += 1
        message = redact(f"cannot draft: {type(exc).__name__}: {exc}")
        log.error("region %s (%s): %s", region["id"], region.get("image", "?"), message)
        with self.catalog.transaction() as tx:
            tx.record_error(STAGE, region_item(region["id"]), message, source=region["source"]["name"])

    def _store(self, region: dict, done: list[tuple[DraftSpec, Proposal]]) -> None:
        redone = {s.draft_id(region["id"]) for s, _ in done}
        kept = self.planner.ok_questions(region["id"], redone)
        records = region_records(region, done, kept, self.opt.lint_limits)
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
        with self.catalog.transaction() as tx:
            if cache:
                cache.flush(tx)
            if self.client and self.client.batch:
                self.client.batch.flush(tx)
            for source, records in self.pending:
                write_region_drafts(tx, source, records)
        self.pending, self.pending_drafts = [], 0
