"""Pure parts of the LLM client: reply parsing, Retry-After, cache keys, budget, redaction."""

from __future__ import annotations

import email.utils
import time
from types import SimpleNamespace

import pytest

from vgmed_build.drafting.llm import Budget, BudgetExhausted, cache_key, parse_json_reply, redact, retry_after_s


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
