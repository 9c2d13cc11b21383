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
import math
import os
import random
import re
import time
from dataclasses import dataclass, field
from functools import cache

from vgmed_build.catalog import Catalog, Transaction
from vgmed_build.errors import VgmedError
from vgmed_build.resources import load_schema, schema_problems

log = logging.getLogger(__name__)

API_KEY_ENV = "OPENAI_API_KEY"
_RETRY_STATUS = {408, 409, 429}
_MAX_BACKOFF_S = 60.0


class BudgetExhausted(Exception):
    """The run's request or cost budget is spent; no further request is sent."""


class LlmError(VgmedError):
    """A request failed for good, or its reply is unusable. The message is already redacted."""

    def __init__(self, message: str, usage: Usage | None = None, cost_usd: float = 0.0):
        super().__init__(redact(message))
        self.usage, self.cost_usd = usage or Usage(0, 0), cost_usd


class LlmFatal(VgmedError):
    """No request of this run can succeed (the key is refused, the model is not served): the run stops
    before sending more, instead of failing once per draft. The message is already redacted."""

    def __init__(self, message: str):
        super().__init__(redact(message))


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
    response_format: str = "json_schema"  # one of RESPONSE_FORMATS; "text" parses JSON out of the text
    check_model: bool = True  # ask /models whether the server serves ``model`` before the first request
    max_requests: int | None = None
    max_cost_usd: float | None = None
    price_in: float = 0.0  # USD per 1M prompt tokens
    price_out: float = 0.0  # USD per 1M completion tokens


# The options of an LlmConfig that have a lower bound: field -> (`generate` option, least value).
_AT_LEAST = {
    "concurrency": ("--concurrency", 1),
    "max_tokens": ("--max-tokens", 1),
    "max_retries": ("--max-retries", 0),
    "backoff_s": ("--retry-backoff", 0),
    "temperature": ("--temperature", 0),
    "price_in": ("--price-in", 0),
    "price_out": ("--price-out", 0),
    "max_requests": ("--max-requests", 0),
    "max_cost_usd": ("--max-cost-usd", 0),
}


def llm_option_problem(config: LlmConfig) -> str | None:
    """What is wrong with the LLM options, before any work (a zero concurrency would hang, a negative
    timeout fails every request, a zero max-tokens yields empty replies that are still paid for)."""
    for name, (flag, low) in _AT_LEAST.items():
        value = getattr(config, name)
        if value is not None and not low <= value < math.inf:  # NaN fails too
            return f"{flag} must be a finite number >= {low} (got {value})"
    if not 0 < config.timeout_s < math.inf:
        return f"--timeout must be a positive number of seconds (got {config.timeout_s})"
    return None


@dataclass(frozen=True)
class Usage:
    """Token counts of one reply; ``estimated`` when the server reported none we could trust."""

    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False


@dataclass
class LlmReply:
    data: dict
    usage: Usage
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

    def flush(self, tx: Transaction) -> None:
        """Write the pending replies in the caller's unit of work."""
        tx.cache_llm_replies(self.pending)
        self.pending = {}


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


def without_reasoning(text: str) -> str:
    """A reasoning model's reply without its ``<think>...</think>`` part (also when the server's chat
    template opened the block itself, so only ``</think>`` is in the reply); an unfinished block
    (max_tokens spent on thinking) is an error, never parsed for JSON."""
    text = _THINK.sub("", text)
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    if "<think>" in text:
        raise ValueError("reply ends inside <think> (reasoning not finished: raise --max-tokens)")
    return text


def parse_json_reply(text: str) -> dict:
    """The JSON object in a reply, also when wrapped in prose, a ```json fence or after reasoning."""
    text = without_reasoning(text).strip()
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


def _count(value: object) -> int | None:
    """A token count as reported, or None unless it is a whole number >= 0 (not a string, list, bool,
    negative or NaN: a negative count would lower the spend and slip past --max-cost-usd)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return None
    return int(value) if value >= 0 else None


def reply_usage(body: dict, messages: list[dict], max_tokens: int) -> Usage:
    """The reply's token usage; when the server reports none that is usable, an upper bound: one token
    per byte of the request's messages (image data URLs included) and ``max_tokens`` for the reply."""
    usage = body.get("usage")
    if isinstance(usage, dict):
        p_tok, c_tok = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
        if p_tok is not None and c_tok is not None:
            return Usage(p_tok, c_tok)
    size = len(json.dumps(messages, ensure_ascii=False).encode("utf-8"))
    return Usage(size, max_tokens, estimated=True)


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


_PERMANENT = re.compile(r"not supported|unsupported|does not support|not implemented", re.IGNORECASE)
_CONTEXT = re.compile(r"context length|context window|context_length|maximum context|too many tokens", re.IGNORECASE)
_FORMAT = re.compile(r"response_format|response format|json_schema|json schema|json_object|schema|grammar|"
                     r"structured output|guided", re.IGNORECASE)
RESPONSE_FORMATS = ("json_schema", "json_object", "text")  # in fallback order


def _status_text(exc: Exception) -> str:
    return f"{getattr(exc, 'message', '')} {getattr(exc, 'body', '')} {getattr(exc, 'param', '') or ''}"


def retryable_error(exc: Exception) -> bool:
    """Timeouts, connection errors, 408/409/429 and 5xx, unless a 5xx says the request can never
    work ("image input is not supported"): asking again would fail the same way."""
    import openai

    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, asyncio.TimeoutError)):
        return True
    if not isinstance(exc, openai.APIStatusError):
        return False
    if exc.status_code in _RETRY_STATUS:
        return True
    return exc.status_code >= 500 and exc.status_code != 501 and not _PERMANENT.search(_status_text(exc))


def failure_detail(exc: Exception, server: str) -> str:
    """What went wrong with one request, for its error line. A server that cannot be reached (refused,
    dropped, gone mid-run) is said so: the aiohttp transport reports it as APITimeoutError "Request
    timed out." whose cause (httpx ConnectTimeout / ConnectError) holds what really happened."""
    cause = exc.__cause__
    if type(cause).__name__ in ("ConnectTimeout", "ConnectError"):
        return f"cannot reach the LLM server {server} ({type(cause).__name__}: {cause})"
    return f"{type(exc).__name__}: {exc}"


def format_rejected(exc: Exception) -> bool:
    """Whether a 400 rejects the response_format (and not, say, a prompt over the context length)."""
    text = _status_text(exc)
    return not _CONTEXT.search(text) and bool(_FORMAT.search(text))


def served_model(model: str, served: list[str]) -> bool:
    """Ollama serves ``name:latest`` under the bare name too."""
    return model in served or (":" not in model and f"{model}:latest" in served)


@dataclass
class LlmClient:
    """Schema-validated, cached, bounded chat completions. Create inside the running event loop."""

    config: LlmConfig
    cache: ResponseCache
    budget: Budget = field(init=False)
    cache_hits: int = 0
    retries: int = 0
    usage_estimated: int = 0  # replies whose token usage was unusable (counted as an upper bound)
    batch: object | None = None  # a drafting.batch.BatchQueue: replies come from the batch service

    def __post_init__(self) -> None:
        import openai  # imported here: it takes seconds, and every other vgmed-build command skips it

        if self.config.response_format not in RESPONSE_FORMATS:
            raise ValueError(f"response format must be one of {', '.join(RESPONSE_FORMATS)}")
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
        self._format = self.config.response_format
        self._gate = asyncio.Lock()  # the model check and the first request go alone
        self._checked = self._opened = False
        self._fatal: LlmFatal | None = None
        self.budget = Budget(self.config.max_requests, self.config.max_cost_usd)

    @property
    def openai(self):
        """The SDK client (the batch service talks to its files and batches API)."""
        return self._client

    @property
    def server(self) -> str:
        """The server's URL for messages, without any user:password part."""
        url = self._client.base_url
        return str(url.copy_with(username=None, password=None)).rstrip("/")

    async def close(self) -> None:
        await self._client.close()

    def cost(self, usage: Usage) -> float:
        return (usage.prompt_tokens * self.config.price_in + usage.completion_tokens * self.config.price_out) / 1e6

    async def complete(self, messages: list[dict], schema_name: str, params: dict) -> LlmReply:
        """One structured reply following ``schemas/<schema_name>.schema.json``.

        ``params`` (seed, ...) join temperature and max_tokens in the cache key; the transport (response
        format mode) does not, so a fallback run still reuses the cache.
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
            usage = Usage(cached["prompt_tokens"], cached["completion_tokens"], bool(cached.get("usage_estimated")))
            return LlmReply(cached["data"], usage, self.cost(usage), cache_hit=True)
        if self.batch is not None:
            body = self.batch.reply(key)
            if body is None:  # never asked, or to be asked again: the batch this run submits
                self.budget.take_request()
                self.batch.queue(key, self._body(messages, schema_name, params, self._format))
        else:
            async with self._sem:
                body = await self._send(messages, schema_name, params)
        usage = reply_usage(body, messages, self.config.max_tokens)
        if usage.estimated:
            self.usage_estimated += 1
            if self.usage_estimated == 1:
                log.warning(
                    "the server reported no usable token usage (%.80r); counting %d prompt + %d completion "
                    "tokens per such reply (an upper bound) towards the cost and --max-cost-usd",
                    body.get("usage"), usage.prompt_tokens, usage.completion_tokens,
                )
        cost = self.cost(usage)
        self.budget.cost_usd += cost
        try:
            data = self._validated(body, schema_name, usage, cost)
        except LlmError:
            if self.batch is not None:
                self.batch.discard(key)
            raise
        self.cache.put(
            key,
            {"data": data, "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
             "usage_estimated": usage.estimated, "model": self.config.model},
        )
        return LlmReply(data, usage, cost, cache_hit=False)

    def _validated(self, body: dict, schema_name: str, usage: Usage, cost: float) -> dict:
        def fail(msg: str) -> LlmError:
            return LlmError(msg, usage, cost)

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

    def _body(self, messages: list[dict], schema_name: str, params: dict, mode: str) -> dict:
        """The chat-completions request body (live, or one line of a batch input file)."""
        body = {"model": self.config.model, "messages": messages}
        body.update((k, v) for k, v in params.items() if k in ("temperature", "max_tokens", "seed"))
        if mode == "json_schema":
            body["response_format"] = response_format(schema_name)
        elif mode == "json_object":
            body["response_format"] = {"type": "json_object"}
        return body

    async def _send(self, messages: list[dict], schema_name: str, params: dict) -> dict:
        """The reply's JSON body. Until one request has been answered, requests go one at a time after
        the model check: a refused key or a rejected response format is learnt from one request, not
        from ``--concurrency`` of them."""
        if not self._opened:
            async with self._gate:
                if not self._opened:
                    if not self._checked:
                        await self._check_model()
                        self._checked = True
                    try:
                        return await self._chat(messages, schema_name, params)
                    finally:
                        self._opened = self._fatal is None
        return await self._chat(messages, schema_name, params)

    async def _chat(self, messages: list[dict], schema_name: str, params: dict) -> dict:
        """One chat completion, through the SDK's documented low-level ``post``: the body is built here
        (and its reply validated against our schema), so the SDK's typed transform of the request and
        its pydantic ChatCompletion are skipped; together they cost ~2 ms of CPU per request.

        A 400 that rejects the response format switches the run to the next mode (json_schema ->
        json_object -> text) and sends this request again, also when another request in flight made
        the switch first; any other 400 (a prompt over the context length) fails this draft at once."""
        import openai

        while True:
            mode = self._format
            body = self._body(messages, schema_name, params, mode)
            try:
                text = await self._request(
                    lambda body=body: self._client.post("/chat/completions", body=body, cast_to=str), "request"
                )
            except openai.BadRequestError as exc:
                if mode != "text" and format_rejected(exc):
                    self._downgrade(mode)
                    continue
                raise LlmError(f"request rejected: {exc}") from None
            except openai.NotFoundError as exc:  # wrong --base-url or --model: every request would fail
                self._fatal = LlmFatal(
                    f"the LLM server {self.server} answered 404 to a chat completion ({exc}): check --base-url "
                    "and --model; no further request is sent"
                )
                raise self._fatal from None
            try:
                reply = json.loads(text)
            except ValueError:
                raise LlmError(f"reply is not JSON: {text[:120]!r}") from None
            if not isinstance(reply, dict):
                raise LlmError("reply is not a JSON object")
            return reply

    def _downgrade(self, mode: str) -> None:
        if self._format == mode:  # not yet switched by another request that met the same rejection
            self._format = RESPONSE_FORMATS[RESPONSE_FORMATS.index(mode) + 1]
            log.warning(
                "server rejected response_format %s (HTTP 400); using %s from now on", mode, self._format
            )

    async def _request(self, call, what: str, counted: bool = True) -> str:
        """``call()`` with retries and a deadline of ``--timeout`` for the whole reply (a server dripping
        bytes never resets it). Raises LlmFatal on 401/403 (every request would fail alike),
        BadRequestError and NotFoundError for the caller to judge, LlmError otherwise."""
        import openai

        attempt = 0
        while True:
            if self._fatal:
                raise self._fatal
            if counted:
                self.budget.take_request()
            try:
                return await asyncio.wait_for(call(), self.config.timeout_s)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                self._fatal = LlmFatal(
                    f"the LLM server {self.server} refused the API key (HTTP {exc.status_code}): set a valid "
                    f"{API_KEY_ENV}; no further request is sent"
                )
                raise self._fatal from None
            except (openai.BadRequestError, openai.NotFoundError):
                raise
            except (openai.OpenAIError, asyncio.TimeoutError) as exc:
                if isinstance(exc, asyncio.TimeoutError):
                    detail = f"APITimeoutError: no complete reply within {self.config.timeout_s:g} s"
                else:
                    detail = failure_detail(exc, self.server)
                if not retryable_error(exc) or attempt >= self.config.max_retries:
                    tries = f" after {attempt + 1} attempts" if retryable_error(exc) else ""
                    raise LlmError(f"{what} failed{tries}: {detail}") from None
                wait = retry_after_s(exc)
                if wait is None:
                    wait = self.config.backoff_s * (2**attempt) * (0.5 + random.random())
                wait = min(wait, _MAX_BACKOFF_S)
                log.debug("retrying in %.2fs after %s", wait, type(exc).__name__)
                attempt += 1
                self.retries += 1
                await asyncio.sleep(wait)

    async def _check_model(self) -> None:
        """Stop before the first request when the server does not serve ``--model`` (listing what it
        serves); a server without a usable ``/models`` endpoint is not checked."""
        if not self.config.check_model:
            return
        import openai

        try:
            text = await self._request(lambda: self._client.get("/models", cast_to=str), "model list", False)
            served = [m["id"] for m in json.loads(text)["data"] if isinstance(m, dict) and "id" in m]
        except openai.NotFoundError:
            log.warning("the LLM server %s has no /models endpoint: --model %s is not checked",
                        self.server, self.config.model)
            return
        except (LlmError, openai.BadRequestError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot list the models the LLM server serves (%s): --model %s is not checked",
                        redact(str(exc))[:200], self.config.model)
            return
        if not served_model(self.config.model, served):
            listing = ", ".join(served[:30]) + (f" (and {len(served) - 30} more)" if len(served) > 30 else "")
            self._fatal = LlmFatal(
                f"the LLM server {self.server} does not serve --model {self.config.model!r}; it serves: "
                f"{listing or 'nothing'} (pass --no-model-check if the list does not name deployments)"
            )
            raise self._fatal


@cache
def response_format(name: str) -> dict:
    """response_format json_schema for ``schemas/<name>.schema.json`` (strict mode; no $schema/$id)."""
    schema = {k: v for k, v in load_schema(name).items() if k not in ("$schema", "$id", "title", "description")}
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
