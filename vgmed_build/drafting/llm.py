"""The LLM client: any OpenAI-compatible server through the `openai` package.

Why our own layer over ``AsyncOpenAI``: every reply is cached in the catalog (a rerun or a resume
costs zero requests), requests are bounded (concurrency, retries we count ourselves, a budget), and
every reply is validated against the JSON schema it was asked to follow. The API key comes from
``OPENAI_API_KEY`` only; it is never put into the cache key, the catalog, a log line or a stored error.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import logging
import os
import random
import re
import sqlite3
import time
from dataclasses import dataclass, field
from functools import cache

from vgmed_build.catalog import Catalog
from vgmed_build.resources import load_schema, schema_problems

log = logging.getLogger(__name__)

API_KEY_ENV = "OPENAI_API_KEY"
_RETRY_STATUS = {408, 409, 429}
_MAX_BACKOFF_S = 60.0


class BudgetExhausted(Exception):
    """The run's request or cost budget is spent; no further request is sent."""


class LlmError(Exception):
    """A request failed for good, or its reply is unusable. The message is already redacted."""

    def __init__(self, message: str, prompt_tokens: int = 0, completion_tokens: int = 0, cost_usd: float = 0.0):
        super().__init__(redact(message))
        self.prompt_tokens, self.completion_tokens, self.cost_usd = prompt_tokens, completion_tokens, cost_usd


def redact(text: str) -> str:
    """Remove the API key from any text that could be stored or logged."""
    key = os.environ.get(API_KEY_ENV, "")
    return text.replace(key, "[redacted]") if len(key) >= 4 else text


class RedactingFilter(logging.Filter):
    """Belt and braces: a log record never carries the API key, whoever logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = ()
        return True


def install_log_redaction() -> None:
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


@dataclass
class LlmConfig:
    model: str
    base_url: str | None = None
    temperature: float = 0.7
    max_tokens: int = 300
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_s: float = 1.0  # first retry waits about this long, doubling each time (plus jitter)
    concurrency: int = 8
    json_schema: bool = True  # response_format json_schema; False = parse JSON out of the text
    max_requests: int | None = None
    max_cost_usd: float | None = None
    price_in: float = 0.0  # USD per 1M prompt tokens
    price_out: float = 0.0  # USD per 1M completion tokens


@dataclass
class LlmReply:
    data: dict
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    cache_hit: bool


@dataclass
class Budget:
    """Counts requests sent (retries included) and the estimated cost, against the run's limits."""

    max_requests: int | None
    max_cost_usd: float | None
    requests: int = 0
    cost_usd: float = 0.0
    exhausted: bool = False

    def take_request(self) -> None:
        if (self.max_requests is not None and self.requests >= self.max_requests) or (
            self.max_cost_usd is not None and self.cost_usd >= self.max_cost_usd
        ):
            self.exhausted = True
            raise BudgetExhausted(f"budget reached ({self.requests} requests, estimated ${self.cost_usd:.4f})")
        self.requests += 1


def cache_key(model: str, messages: list[dict], params: dict) -> str:
    """sha256 over what determines the reply: model, messages and sampling/format parameters."""
    blob = json.dumps(
        {"model": model, "messages": messages, "params": params},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """The catalog's ``llm_cache`` table: only replies that passed validation are stored.

    New replies wait in memory until the generate stage's next batch commit (:meth:`flush`), which
    writes them together with the drafts they produced; lookups see them immediately.
    """

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.pending: dict[str, dict] = {}
        # Keys only (64 bytes each): a miss, the common case in a first run, then costs no query.
        self.keys = catalog.llm_cache_keys()

    def get(self, key: str) -> dict | None:
        if key in self.pending:
            return self.pending[key]
        if key not in self.keys:
            return None
        return self.catalog.llm_cached(key)

    def put(self, key: str, response: dict) -> None:
        self.pending[key] = response
        self.keys.add(key)

    def flush(self, conn: sqlite3.Connection) -> None:
        """Write the pending replies inside the caller's transaction."""
        self.catalog.cache_llm_replies(conn, self.pending)
        self.pending = {}


def parse_json_reply(text: str) -> dict:
    """The JSON object in a reply, also when wrapped in prose or a ```json fence."""
    text = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    if fence:
        text = fence.group(1).strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end <= start:
            raise ValueError("reply contains no JSON object") from None
        try:
            value = json.loads(text[start : end + 1])
        except json.JSONDecodeError as exc:
            raise ValueError(f"reply is not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ValueError("reply JSON is not an object")
    return value


def retry_after_s(exc: Exception) -> float | None:
    """Seconds the server asked us to wait (Retry-After as seconds or HTTP date, or retry-after-ms)."""
    response = getattr(exc, "response", None)
    if response is None:
        return None
    headers = response.headers
    if headers.get("retry-after-ms"):
        try:
            return float(headers["retry-after-ms"]) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _retryable(exc: Exception) -> bool:
    import openai

    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
        return True
    return isinstance(exc, openai.APIStatusError) and (exc.status_code in _RETRY_STATUS or exc.status_code >= 500)


@dataclass
class LlmClient:
    """Schema-validated, cached, bounded chat completions. Create inside the running event loop."""

    config: LlmConfig
    cache: ResponseCache
    budget: Budget = field(init=False)
    cache_hits: int = 0
    retries: int = 0
    batch: object | None = None  # a drafting.batch.BatchQueue: replies come from the batch service

    def __post_init__(self) -> None:
        import openai  # imported here: it takes seconds, and every other vgmed-build command skips it

        key = os.environ.get(API_KEY_ENV) or "not-set"  # local servers often need none
        # The aiohttp transport costs about half the CPU of httpx's per request, which is what bounds
        # throughput at high concurrency on a small machine.
        self._client = openai.AsyncOpenAI(
            api_key=key,
            base_url=self.config.base_url,
            max_retries=0,
            timeout=self.config.timeout_s,
            http_client=openai.DefaultAioHttpClient(),
        )
        self._sem = asyncio.Semaphore(self.config.concurrency)
        self._json_schema = self.config.json_schema
        self.budget = Budget(self.config.max_requests, self.config.max_cost_usd)

    @property
    def openai(self):
        """The SDK client (the batch service talks to its files and batches API)."""
        return self._client

    async def close(self) -> None:
        await self._client.close()

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.config.price_in + completion_tokens * self.config.price_out) / 1e6

    async def complete(self, messages: list[dict], schema_name: str, params: dict) -> LlmReply:
        """One structured reply following ``schemas/<schema_name>.schema.json``.

        ``params`` (seed, ...) join temperature and max_tokens in the cache key; the transport (json
        schema mode or text) does not, so a fallback run still reuses the cache.
        """
        params = {
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
            "schema": schema_name,
            **params,
        }
        key = cache_key(self.config.model, messages, params)
        cached = self.cache.get(key)
        if cached is not None and not schema_problems(schema_name, cached.get("data")):
            self.cache_hits += 1
            return LlmReply(
                cached["data"],
                cached["prompt_tokens"],
                cached["completion_tokens"],
                self.cost(cached["prompt_tokens"], cached["completion_tokens"]),
                cache_hit=True,
            )
        if self.batch is not None:
            body = self.batch.reply(key)
            if body is None:  # never asked, or to be asked again: the batch this run submits
                self.budget.take_request()
                self.batch.queue(key, self._body(messages, schema_name, params))
        else:
            async with self._sem:
                body = await self._send(messages, schema_name, params)
        usage = body.get("usage") or {}
        p_tok = int(usage.get("prompt_tokens") or 0)
        c_tok = int(usage.get("completion_tokens") or 0)
        cost = self.cost(p_tok, c_tok)
        self.budget.cost_usd += cost
        try:
            data = self._validated(body, schema_name, p_tok, c_tok, cost)
        except LlmError:
            if self.batch is not None:
                self.batch.discard(key)
            raise
        self.cache.put(
            key,
            {"data": data, "prompt_tokens": p_tok, "completion_tokens": c_tok, "model": self.config.model},
        )
        return LlmReply(data, p_tok, c_tok, cost, cache_hit=False)

    def _validated(self, body: dict, schema_name: str, p_tok: int, c_tok: int, cost: float) -> dict:
        def fail(msg: str) -> LlmError:
            return LlmError(msg, p_tok, c_tok, cost)

        choices = body.get("choices") or []
        message = choices[0].get("message") if choices and isinstance(choices[0], dict) else None
        if not isinstance(message, dict):
            raise fail("reply has no message")
        if message.get("refusal"):
            raise fail(f"model refused: {str(message['refusal'])[:200]}")
        content = message.get("content")
        if not content or not isinstance(content, str):
            raise fail("reply is empty")
        try:
            data = parse_json_reply(content)
        except ValueError as exc:
            raise fail(f"{exc}: {content[:120]!r}") from None
        errors = schema_problems(schema_name, data)
        if errors:
            raise fail(f"reply does not follow {schema_name}.schema.json: {'; '.join(errors[:3])}")
        return data

    def _body(self, messages: list[dict], schema_name: str, params: dict) -> dict:
        """The chat-completions request body (live, or one line of a batch input file)."""
        body = {"model": self.config.model, "messages": messages}
        body.update((k, v) for k, v in params.items() if k in ("temperature", "max_tokens", "seed"))
        if self._json_schema:
            body["response_format"] = response_format(schema_name)
        return body

    async def _send(self, messages: list[dict], schema_name: str, params: dict) -> dict:
        """The reply's JSON body, through the SDK's documented low-level ``post``: the body is built
        here (and its reply validated against our schema), so the SDK's typed transform of the request
        and its pydantic ChatCompletion are skipped; together they cost ~2 ms of CPU per request."""
        import openai

        attempt = 0
        while True:
            self.budget.take_request()
            body = self._body(messages, schema_name, params)
            try:
                text = await self._client.post("/chat/completions", body=body, cast_to=str)
                try:
                    reply = json.loads(text)
                except ValueError:
                    raise LlmError(f"reply is not JSON: {text[:120]!r}") from None
                if not isinstance(reply, dict):
                    raise LlmError("reply is not a JSON object")
                return reply
            except openai.BadRequestError as exc:
                if self._json_schema:
                    log.warning(
                        "server rejected response_format json_schema (HTTP 400); "
                        "parsing JSON from plain text replies from now on"
                    )
                    self._json_schema = False
                    continue
                raise LlmError(f"request rejected: {exc}") from None
            except openai.OpenAIError as exc:
                if not _retryable(exc) or attempt >= self.config.max_retries:
                    tries = f" after {attempt + 1} attempts" if _retryable(exc) else ""
                    raise LlmError(f"request failed{tries}: {type(exc).__name__}: {exc}") from None
                wait = retry_after_s(exc)
                if wait is None:
                    wait = self.config.backoff_s * (2**attempt) * (0.5 + random.random())
                wait = min(wait, _MAX_BACKOFF_S)
                log.debug("retrying in %.2fs after %s", wait, type(exc).__name__)
                attempt += 1
                self.retries += 1
                await asyncio.sleep(wait)


@cache
def response_format(name: str) -> dict:
    """response_format json_schema for ``schemas/<name>.schema.json`` (strict mode; no $schema/$id)."""
    schema = {k: v for k, v in load_schema(name).items() if k not in ("$schema", "$id", "title", "description")}
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
