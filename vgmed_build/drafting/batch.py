"""``generate --batch``: the LLM requests through the provider's batch service (files + batches API).

Why: a large offline drafting job costs half as much on OpenAI's batch service as live. The drafting
pass runs exactly as live, except that a request whose reply is not in hand is queued instead of sent
(its draft waits for a later run); after the pass the queue becomes one batch input file (one
``/v1/chat/completions`` body per line, the reply-cache key as ``custom_id``), uploaded and submitted.
A later run polls the open batches and downloads the finished ones before its pass, and the pass then
finds the replies: they are validated, cached, linted and stored exactly as live replies are. Lines
that failed with a retryable status (429, 5xx, timeouts, lines an expired batch never answered) are
asked again in a follow-up batch, up to ``--max-retries`` times.

No request is paid twice, wherever a run is killed: the requests and our batch id are recorded
before anything is uploaded; on a rerun the upload is found again by its file name and the batch by
its input file (list calls), so what the service already holds is adopted, never submitted again;
downloaded replies are stored in the same transaction that marks their batch finished, and a valid
reply then lives in the reply cache like a live one.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field

from vgmed_build.catalog import Catalog, Transaction
from vgmed_build.drafting.llm import LlmError

log = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
WINDOW = "24h"
RUNNING = ("validating", "in_progress", "finalizing", "cancelling")
_RETRY_CODES = {0, 408, 409, 429}  # 0: the line has no HTTP response (expired, or in the error file)


class Deferred(Exception):
    """The reply will come from a batch: this draft is made on a later run."""


def input_line(key: str, body: dict) -> str:
    return json.dumps({"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body},
                      ensure_ascii=False, sort_keys=True)


def parse_output(text: str) -> dict[str, tuple[int, dict]]:
    """A batch output (or error) file -> {custom_id: (HTTP status, body)}; 0 = no response."""
    results: dict[str, tuple[int, dict]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        obj = json.loads(line)
        response = obj.get("response") or {}
        code = int(response.get("status_code") or 0)
        body = response.get("body") if isinstance(response.get("body"), dict) else {"error": obj.get("error")}
        results[obj["custom_id"]] = (code, body)
    return results


def retryable(code: int) -> bool:
    return code in _RETRY_CODES or code >= 500


@dataclass
class BatchQueue:
    """Replies from finished batches, requests still waiting, and the requests this run queues."""

    catalog: Catalog
    client: object  # openai.AsyncOpenAI
    max_retries: int
    state: dict[str, dict] = field(default_factory=dict)
    queued: dict[str, dict] = field(default_factory=dict)  # key -> request body, submitted after the pass
    discarded: set[str] = field(default_factory=set)  # downloaded replies used up (invalid, or re-asked)
    waiting: int = 0  # requests whose batch is still running
    downloaded: int = 0
    submitted: list[str] = field(default_factory=list)  # service batch ids created by this run

    async def sync(self) -> None:
        """Finish submitting batches a killed run left half-done, poll the others, download finished ones."""
        for row in self.catalog.open_llm_batches():
            if row["status"] == "preparing":
                await self._submit(row)
            else:
                await self._poll(row)
        self.state = self.catalog.llm_batch_state()
        self.waiting = sum(1 for e in self.state.values() if e["waiting"])

    def reply(self, key: str) -> dict | None:
        """The downloaded reply body for ``key``; None if it must be asked (:meth:`queue`); raises
        :class:`Deferred` while a batch still works on it and LlmError once it failed for good."""
        entry = self.state.get(key)
        if entry is None:
            return None
        if entry["reply"] is not None:
            code, body = entry["reply"]
            if code == 200:
                return body
            if not retryable(code) or entry["failures"] > self.max_retries:
                message = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
                tries = f" after {entry['failures']} batch attempts" if retryable(code) else ""
                raise LlmError(f"batch request failed{tries}: HTTP {code}: {message or 'no message'}")
            return None  # asked again in a follow-up batch
        if entry["waiting"]:
            raise Deferred(key)
        if entry["failures"] > self.max_retries:
            raise LlmError(f"batch request failed after {entry['failures']} batch attempts: never answered")
        return None

    def queue(self, key: str, body: dict) -> None:
        """Ask for ``key`` in the batch this run submits; its draft waits for a later run."""
        self.queued[key] = body
        raise Deferred(key)

    def discard(self, key: str) -> None:
        """A downloaded reply that did not validate: the next run asks again (as live retries would)."""
        self.discarded.add(key)

    def flush(self, tx: Transaction) -> None:
        """In the generate stage's unit of work: mark the discarded replies used."""
        if self.discarded:
            tx.consume_llm_batch_replies(sorted(self.discarded))
            self.discarded = set()

    async def submit(self) -> None:
        """The queued requests as one new batch (recorded first, then uploaded, then created)."""
        if not self.queued:
            return
        ours = uuid.uuid4().hex[:16]
        self.catalog.add_llm_batch(ours, list(self.queued.items()))
        self.queued = {}
        await self._submit({"id": ours, "input_file_id": None})

    async def _submit(self, row: dict) -> None:
        name = f"vgmed-batch-{row['id']}.jsonl"
        file_id = row["input_file_id"] or await self._find_file(name)
        if file_id is None:
            bodies = self.catalog.llm_batch_bodies(row["id"])
            content = "".join(input_line(k, b) + "\n" for k, b in bodies).encode("utf-8")
            file_id = (await self.client.files.create(file=(name, content, "application/jsonl"),
                                                      purpose="batch")).id
        if file_id != row["input_file_id"]:
            self.catalog.update_llm_batch(row["id"], input_file_id=file_id)
        batch_id = await self._find_batch(file_id)
        if batch_id is None:
            batch = await self.client.batches.create(input_file_id=file_id, endpoint=ENDPOINT,
                                                     completion_window=WINDOW, metadata={"vgmed_batch": row["id"]})
            batch_id = batch.id
            self.submitted.append(batch_id)
        else:
            log.info("batch %s: adopting %s, which the service already holds", row["id"], batch_id)
        self.catalog.update_llm_batch(row["id"], batch_id=batch_id, status="submitted")
        log.info("batch %s submitted as %s (input file %s)", row["id"], batch_id, file_id)

    async def _find_file(self, name: str) -> str | None:
        async for f in self.client.files.list(purpose="batch"):
            if f.filename == name:
                return f.id
        return None

    async def _find_batch(self, file_id: str) -> str | None:
        async for b in self.client.batches.list():
            if b.input_file_id == file_id:
                return b.id
        return None

    async def _poll(self, row: dict) -> None:
        batch = await self.client.batches.retrieve(row["batch_id"])
        if batch.status in RUNNING:
            counts = batch.request_counts
            done = f"{counts.completed + counts.failed}/{counts.total}" if counts else "?"
            log.info("batch %s (%s): %s, %s requests answered", row["id"], batch.id, batch.status, done)
            return
        results: dict[str, tuple[int, dict]] = {}
        for file_id in (batch.error_file_id, batch.output_file_id):  # output last: it wins
            if file_id:
                results.update(parse_output((await self.client.files.content(file_id)).text))
        self.catalog.store_llm_batch_results(row["id"], results, batch.status)
        self.downloaded += len(results)
        log.info("batch %s (%s): %s, %d replies downloaded", row["id"], batch.id, batch.status, len(results))
