"""`vgmed-build judge`: a VLM judges every ok draft before clinicians see it.

The same LLM client as drafting (drafting.llm): replies validated against ``schemas/llm_judge.schema.json``,
cached in the catalog (a rerun sends nothing), retried, bounded by the budget, optionally through the
batch service (drafting.batch). Verdicts and the replies they came from are committed together every
64 verdicts or 0.1 s, so a killed run loses at most that much and the next run judges only what is
missing. A verdict is stored beside its draft's lint result and never overwrites anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from vgmed_build.catalog import Catalog
from vgmed_build.drafting.batch import BatchQueue, Deferred
from vgmed_build.drafting.llm import BudgetExhausted, LlmClient, LlmConfig, LlmError, LlmFatal, ResponseCache, redact
from vgmed_build.drafting.messages import boxed_image_data_url
from vgmed_build.drafting.templates import Template, TemplateError
from vgmed_build.judge.verdicts import SCHEMA, content_hash, judge_messages, judge_name, verdict_record
from vgmed_build.resources import resource_dir

log = logging.getLogger(__name__)

STAGE = "judge"
FLUSH_VERDICTS = 64
FLUSH_S = 0.1
_UNREACHABLE = "failed after"  # LlmError once the retries of a timeout, connection error or 5xx are spent


@dataclass
class JudgeOptions:
    llm: LlmConfig
    prompts_dir: Path | None = None
    limit: int | None = None  # judge at most this many drafts (by id)
    seed: int = 0
    batch: bool = False
    progress: bool = True


@dataclass
class JudgeStats:
    judge: str = ""
    drafts: int = 0  # ok drafts in the build
    already: int = 0  # judged before (same judge, same content)
    verdicts: Counter = field(default_factory=Counter)
    errors: int = 0
    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    cost_usd: float = 0.0
    budget_reached: str | None = None
    fatal: str | None = None
    batch_waiting: int = 0
    batch_submitted: list[str] = field(default_factory=list)
    batch_downloaded: int = 0

    def summary(self) -> str:
        judged = sum(self.verdicts.values())
        text = (f"judge {self.judge}: {self.drafts} ok drafts, {judged} judged now "
                f"({', '.join(f'{k} {v}' for k, v in sorted(self.verdicts.items())) or 'none'}), "
                f"{self.already} judged before, {self.errors} errors; LLM: {self.requests} requests, "
                f"{self.cache_hits} cache hits, {self.retries} retries, estimated ${self.cost_usd:.4f}")
        if self.batch_waiting or self.batch_submitted or self.batch_downloaded:
            text += (f"; batch service: {self.batch_downloaded} replies downloaded, {self.batch_waiting} drafts "
                     "waiting (rerun later to collect them)"
                     + (f", submitted {', '.join(self.batch_submitted)}" if self.batch_submitted else ""))
        stopped = self.fatal or self.budget_reached
        return text + (f"; STOPPED: {stopped}" if stopped else "")


def load_judge_prompts(folder: Path | None) -> tuple[Template, Template]:
    """``judge_system.txt`` and ``judge_user.txt`` of ``folder`` (default: the bundled prompts/)."""
    folder = Path(folder) if folder else resource_dir("prompts")
    out = []
    for name in ("judge_system", "judge_user"):
        path = folder / f"{name}.txt"
        try:
            out.append(Template(name, path.read_text(encoding="utf-8").strip()))
        except OSError as exc:
            raise TemplateError(f"{path}: cannot read the judge prompt ({exc.strerror})") from exc
    return out[0], out[1]


def run_judge(catalog: Catalog, options: JudgeOptions) -> JudgeStats:
    """Judge every ok draft of ``catalog`` that this judge has not judged in its current content."""
    if not options.llm.model:
        raise ValueError("judge needs --model (a multimodal model the server serves)")
    return asyncio.run(_Judge(catalog, options).run())


class _Judge:
    def __init__(self, catalog: Catalog, options: JudgeOptions):
        self.catalog, self.opt = catalog, options
        self.prompts = load_judge_prompts(options.prompts_dir)
        self.stats = JudgeStats(judge=judge_name(options.llm.model, self.prompts))
        self.pending: list[dict] = []
        self.failed: list[tuple[str, str]] = []  # (draft id, message) awaiting commit
        self.last_flush = time.monotonic()
        self.stop = False
        self.answered = False  # a reply (cached or not) came in this run: the server is reachable

    def _todo(self) -> list[dict]:
        done = self.catalog.judge_verdict_keys()
        drafts = [d for d, *_ in self.catalog.ok_drafts_with_images()]
        self.stats.drafts = len(drafts)
        todo = [d for d in drafts if (d["id"], self.stats.judge, content_hash(d)) not in done]
        self.stats.already = len(drafts) - len(todo)
        return todo[: self.opt.limit] if self.opt.limit is not None else todo

    async def run(self) -> JudgeStats:
        self.client = LlmClient(self.opt.llm, ResponseCache(self.catalog))
        try:
            if self.opt.batch:
                self.client.batch = BatchQueue(self.catalog, self.client.openai, self.opt.llm.max_retries)
                await self.client.batch.sync()
            todo = self._todo()
            queue: asyncio.Queue = asyncio.Queue()
            for draft in todo:
                queue.put_nowait(draft)
            bar = tqdm(total=len(todo), desc="judge", unit="draft", disable=not self.opt.progress or None)

            async def work() -> None:
                while not self.stop and not queue.empty():
                    await self._judge(queue.get_nowait())
                    bar.update(1)
                    if len(self.pending) >= FLUSH_VERDICTS or time.monotonic() - self.last_flush >= FLUSH_S:
                        self._flush()

            try:
                await asyncio.gather(*(work() for _ in range(self.opt.llm.concurrency)))
                if self.client.batch:
                    self._flush()
                    await self.client.batch.submit()
            finally:
                self._flush()
                bar.close()
        finally:
            self._close_stats()
            await self.client.close()
        return self.stats

    async def _judge(self, draft: dict) -> None:
        try:
            image = {"image": draft["image"], "boxes": draft["boxes"]}
            url = await asyncio.to_thread(boxed_image_data_url, self.catalog.build_dir, image)
            messages = judge_messages(self.prompts, draft, url)
            reply = await self.client.complete(messages, SCHEMA, {"seed": self.opt.seed})
        except Deferred:
            self.stats.batch_waiting += 1
        except BudgetExhausted as exc:
            self.stop, self.stats.budget_reached = True, str(exc)
        except LlmFatal as exc:
            self.stop, self.stats.fatal = True, self.stats.fatal or str(exc)
        except LlmError as exc:
            if not self.answered and _UNREACHABLE in str(exc):  # a server down fails every draft alike
                self.stop = True
                self.stats.fatal = self.stats.fatal or (
                    f"the judge server {self.client.server} cannot be reached ({exc}); no verdict or error was "
                    "stored by this run")
            else:
                self._failed(draft, exc)
        except OSError as exc:  # its image cannot be read
            self._failed(draft, exc)
        else:
            self.answered = True
            usage = {"prompt_tokens": reply.usage.prompt_tokens, "completion_tokens": reply.usage.completion_tokens,
                     "cost_usd": round(reply.cost_usd, 8), "cache_hit": reply.cache_hit}
            self.pending.append(verdict_record(draft, self.stats.judge, self.opt.llm.model, reply.data, usage))
            self.stats.verdicts[reply.data["verdict"]] += 1

    def _failed(self, draft: dict, exc: Exception) -> None:
        """One draft's problem: stored as an error, asked again by the next run."""
        message = redact(f"cannot judge: {exc}")
        log.warning("draft %s: %s", draft["id"], message)
        self.failed.append((draft["id"], message))
        self.stats.errors += 1

    def _flush(self) -> None:
        """Commit the verdicts, their replies and the errors so far in one transaction."""
        self.last_flush = time.monotonic()
        cache, batch = self.client.cache, self.client.batch
        if not (self.pending or self.failed or cache.pending or (batch and batch.discarded)):
            return
        with self.catalog.transaction() as tx:
            cache.flush(tx)
            if batch:
                batch.flush(tx)
            tx.add_judge_verdicts(self.pending)
            for rec in self.pending:
                tx.clear_errors(STAGE, f"draft {rec['draft_id']}")
            for draft_id, message in self.failed:
                tx.record_error(STAGE, f"draft {draft_id}", message, replace=True)
        self.pending, self.failed = [], []

    def _close_stats(self) -> None:
        c, s = self.client, self.stats
        s.requests, s.cache_hits, s.retries, s.cost_usd = c.budget.requests, c.cache_hits, c.retries, c.budget.cost_usd
        if c.batch:
            s.batch_submitted, s.batch_downloaded = c.batch.submitted, c.batch.downloaded
