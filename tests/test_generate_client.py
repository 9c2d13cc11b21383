"""Pure parts of the LLM client: reply parsing, usage, Retry-After, error classes, cache keys, budget, redaction."""

from __future__ import annotations

import email.utils
import json
import time
from types import SimpleNamespace

import pytest

from vgmed_build.drafting.llm import (
    Budget,
    BudgetExhausted,
    Usage,
    cache_key,
    format_rejected,
    parse_json_reply,
    redact,
    reply_usage,
    retry_after_s,
    retryable_error,
    served_model,
)


def exc_with(headers: dict) -> SimpleNamespace:
    return SimpleNamespace(response=SimpleNamespace(headers=headers))


def test_parse_json_reply_variants():
    assert parse_json_reply('{"question": "q?", "answer": "a"}') == {"question": "q?", "answer": "a"}
    fenced = 'Sure:\n```json\n{"question": "Is it?", "answer": "no"}\n```\nDone.'
    assert parse_json_reply(fenced) == {"question": "Is it?", "answer": "no"}
    assert parse_json_reply('Here: {"question": "x?"} hope it helps') == {"question": "x?"}
    with pytest.raises(ValueError, match="no JSON object"):
        parse_json_reply("I think the spleen is normal.")
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_json_reply('{"question": "x?",}')
    with pytest.raises(ValueError, match="not an object"):
        parse_json_reply('["question"]')


def test_retry_after_forms():
    assert retry_after_s(exc_with({"retry-after": "3"})) == 3.0
    assert retry_after_s(exc_with({"retry-after-ms": "250"})) == 0.25
    date = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8.0 <= retry_after_s(exc_with({"retry-after": date})) <= 10.5
    assert retry_after_s(exc_with({})) is None
    assert retry_after_s(SimpleNamespace()) is None


def test_cache_key_depends_on_what_determines_the_reply():
    msgs = [{"role": "user", "content": "Target name: liver"}]
    base = cache_key("m", msgs, {"temperature": 0.7, "seed": 0})
    assert base == cache_key("m", [dict(msgs[0])], {"seed": 0, "temperature": 0.7})  # order-insensitive
    assert base != cache_key("m2", msgs, {"temperature": 0.7, "seed": 0})
    assert base != cache_key("m", msgs, {"temperature": 0.7, "seed": 1})
    assert base != cache_key("m", [{"role": "user", "content": "Target name: spleen"}], {"temperature": 0.7, "seed": 0})


def test_budget_counts_requests_and_cost():
    b = Budget(max_requests=2, max_cost_usd=None)
    b.take_request()
    b.take_request()
    with pytest.raises(BudgetExhausted):
        b.take_request()
    assert b.requests == 2 and b.exhausted
    c = Budget(max_requests=None, max_cost_usd=0.01)
    c.take_request()
    c.cost_usd = 0.011
    with pytest.raises(BudgetExhausted, match=r"\$0.0110"):
        c.take_request()


def test_redact_removes_the_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-123")
    assert redact("401: bad key sk-secret-123 given") == "401: bad key [redacted] given"
    monkeypatch.delenv("OPENAI_API_KEY")
    assert redact("nothing to hide") == "nothing to hide"


def test_reasoning_is_stripped_and_an_unfinished_block_is_an_error():
    think = '<think>maybe {"question": "wrong?"}</think>\n{"question": "Is the liver shown?"}'
    assert parse_json_reply(think) == {"question": "Is the liver shown?"}
    # The chat template opened the block: only the closing tag is in the reply.
    assert parse_json_reply('so {"a": 1}</think>{"question": "q?"}') == {"question": "q?"}
    with pytest.raises(ValueError, match="reasoning not finished"):
        parse_json_reply('<think>the liver {"question": "x?"} and then')


def test_usage_counts_are_trusted_only_when_whole_and_not_negative():
    msgs = [{"role": "user", "content": "Target name: \"liv\u00e9r\""}]
    bound = len(json.dumps(msgs, ensure_ascii=False).encode("utf-8"))
    assert reply_usage({"usage": {"prompt_tokens": 12, "completion_tokens": 3}}, msgs, 300) == Usage(12, 3)
    assert reply_usage({"usage": {"prompt_tokens": 12.0, "completion_tokens": 0}}, msgs, 300) == Usage(12, 0)
    for usage in [{"prompt_tokens": -1, "completion_tokens": 3}, {"prompt_tokens": "12", "completion_tokens": 3},
                  [12, 3], "12", None, {"prompt_tokens": float("nan"), "completion_tokens": 3},
                  {"prompt_tokens": True, "completion_tokens": 3}, {"prompt_tokens": 12}]:
        assert reply_usage({"usage": usage}, msgs, 300) == Usage(bound, 300, estimated=True), usage
    assert reply_usage({}, msgs, 50) == Usage(bound, 50, estimated=True)


def status_error(status: int, message: str):
    import httpx
    import openai

    response = httpx.Response(status, request=httpx.Request("POST", "http://x/v1/chat/completions"))
    cls = {400: openai.BadRequestError, 500: openai.InternalServerError}.get(status, openai.APIStatusError)
    return cls(message, response=response, body={"message": message})


def test_which_errors_are_retried_and_which_400s_reject_the_format():
    assert retryable_error(status_error(500, "scripted error")) and retryable_error(status_error(429, "slow down"))
    assert not retryable_error(status_error(500, "image input is not supported"))
    assert not retryable_error(status_error(501, "Not Implemented"))
    assert not retryable_error(status_error(400, "bad"))
    assert format_rejected(status_error(400, "response_format json_schema is not supported"))
    assert format_rejected(status_error(400, "Grammar-based sampling failed: invalid JSON schema"))
    assert not format_rejected(status_error(400, "This model's maximum context length is 4096 tokens (schema: 300)"))
    assert not format_rejected(status_error(400, "temperature must be at most 2"))


def test_served_model_names():
    assert served_model("llava", ["llava:latest"]) and served_model("a/b", ["a/b"])
    assert not served_model("qwen2.5-vl", ["Qwen/Qwen2.5-VL-7B-Instruct"])
    assert not served_model("llava:7b", ["llava:latest"])
