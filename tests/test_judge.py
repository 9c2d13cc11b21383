"""`vgmed-build judge` against the scripted OpenAI-compatible server (real HTTP, a separate process):
image-aware verdicts stored beside lint, a rerun that sends nothing, planted and malformed verdicts,
a server that is down, the budget, the batch service and a judge killed mid-run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from drafting_fixtures import MODEL, count, free_port, make_catalog

from vgmed_build import api
from vgmed_build.api import generate
from vgmed_build.catalog import CatalogError, open_catalog
from vgmed_build.cli import main
from vgmed_build.drafting.llm import LlmConfig
from vgmed_build.drafting.plan import GenerateOptions
from vgmed_build.judge.run import JudgeOptions
from vgmed_build.judge.verdicts import content_hash, current_verdicts

pytestmark = pytest.mark.slow


def _build(tmp_path, n_images: int = 1):
    build = tmp_path / "b"
    make_catalog(build, n_images=n_images).close()
    generate(build, options=GenerateOptions(progress=False, position_questions=True))
    return build


def _args(build, base_url: str, *more: str) -> list[str]:
    return ["--no-progress", "judge", "--build", str(build), "--model", MODEL, "--base-url", base_url,
            "--retry-backoff", "0.01", "--timeout", "10", *more]


def _verdicts(build) -> dict[str, dict]:
    with open_catalog(build) as cat:
        drafts = list(cat.drafts("ok"))
        return current_verdicts(drafts, cat.judge_verdict_records())


def _ok_drafts(build) -> list[dict]:
    with open_catalog(build) as cat:
        return list(cat.drafts("ok"))


def test_judge_round_trip_image_aware_and_rerun_sends_nothing(tmp_path, server_factory, capsys):
    build = _build(tmp_path)
    drafts = _ok_drafts(build)
    assert len(drafts) >= 8
    server = server_factory({"models": [MODEL], "rules": [
        {"match": 'Question: "What is the size of the spleen', "replies": [
            {"kind": "json", "content": {"verdict": "wrong_answer", "reason": "the spleen is small here"}}]}]})
    assert main(_args(build, server.base_url)) == 0
    out = capsys.readouterr().out
    verdicts = _verdicts(build)
    assert set(verdicts) == {d["id"] for d in drafts}
    stats = server.stats()
    assert stats["requests"] == len(drafts) and stats["image_requests"] == len(drafts)
    for d in drafts:
        v = verdicts[d["id"]]
        assert v["content_hash"] == content_hash(d) and v["model"] == MODEL
        if d["question"].startswith("What is the size of the spleen"):
            assert v["verdict"] == "wrong_answer"
        else:  # the server counted the red box pixels in the image it was sent
            assert v["verdict"] == "ok"
            red = int(v["reason"].split("(")[1].split()[0])
            assert (red > 0) == bool(d["boxes"]), (d["boxes"], v["reason"])
    assert f"{len(drafts)} judged now" in out
    # The verdicts sit beside the lint result: drafts are untouched.
    assert [d["status"] for d in _ok_drafts(build)] == ["ok"] * len(drafts)

    assert main(_args(build, server.base_url)) == 0
    assert server.stats()["requests"] == len(drafts)  # nothing judged twice, nothing sent
    assert "0 judged now" in capsys.readouterr().out
    with open_catalog(build) as cat:
        assert count(cat, "judge_verdicts") == len(drafts)


def test_api_judge_is_the_commands_code_path(tmp_path, server_factory, capsys):
    build = _build(tmp_path)
    n = len(_ok_drafts(build))
    server = server_factory()
    config = LlmConfig(model=MODEL, base_url=server.base_url, temperature=0.0, max_tokens=200)
    stats = api.judge(build, options=JudgeOptions(llm=config, limit=5, progress=False))
    assert stats.verdicts == {"ok": 5} and stats.requests == 5 and stats.drafts == n and not stats.errors
    assert len(_verdicts(build)) == 5
    # The command picks up where the function stopped: the same judge (model and prompt), the same catalog keys.
    assert main(_args(build, server.base_url)) == 0
    assert f"{n - 5} judged now" in capsys.readouterr().out and server.stats()["requests"] == n
    again = api.judge(build, options=JudgeOptions(llm=config, progress=False))
    assert again.already == n and again.requests == 0 and not again.verdicts
    # Bad input: the command's option names in the messages, nothing stored.
    with pytest.raises(ValueError, match="judge needs --model"):
        api.judge(build, options=JudgeOptions(llm=LlmConfig(model="", base_url=server.base_url)))
    with pytest.raises(ValueError, match="--concurrency must be a finite number >= 1"):
        api.judge(build, options=JudgeOptions(llm=LlmConfig(model=MODEL, concurrency=0)))
    with pytest.raises(CatalogError, match="no build catalog"):
        api.judge(tmp_path / "empty", options=JudgeOptions(llm=config))
    assert not (tmp_path / "empty").exists() and len(_verdicts(build)) == n


def test_unknown_verdict_and_server_down_are_clear_errors_and_lose_nothing(tmp_path, server_factory, caplog, capsys):
    build = _build(tmp_path)
    drafts = _ok_drafts(build)
    server = server_factory({"rules": [{"match": 'Target name: "liver"', "replies": [
        {"kind": "json", "content": {"verdict": "maybe", "reason": "unsure"}}] * 10}]})
    assert main(_args(build, server.base_url)) == 1
    assert "cannot judge: reply does not follow llm_judge.schema.json: data.verdict must be one of" in caplog.text
    liver = {d["id"] for d in drafts if d["display_name"] == "liver"}
    assert liver and set(_verdicts(build)) == {d["id"] for d in drafts} - liver
    with open_catalog(build) as cat:
        errors = cat.conn.execute("SELECT item, message FROM errors WHERE stage='judge'").fetchall()
    assert {item for item, _ in errors} == {f"draft {i}" for i in liver}

    # Server down: every request fails after its retries; the stored verdicts stay, the errors say why.
    before = _verdicts(build)
    dead = f"http://127.0.0.1:{free_port()}/v1"
    assert main(_args(build, dead, "--max-retries", "1")) == 2
    err = capsys.readouterr().err
    reached = f"error: the judge server {dead} cannot be reached (request failed after 2 attempts: cannot reach"
    assert f"{reached} the LLM server {dead}" in err
    assert _verdicts(build) == before
    with open_catalog(build) as cat:  # the earlier errors are still there: nothing was judged since
        assert count(cat, "errors") == len(liver)

    # Back up with sane replies: only the missing verdicts are asked for, the errors go.
    good = server_factory()
    assert main(_args(build, good.base_url)) == 0
    assert good.stats()["requests"] == len(liver) and set(_verdicts(build)) == {d["id"] for d in drafts}
    with open_catalog(build) as cat:
        assert count(cat, "errors") == 0


def test_budget_stops_and_resume_finishes(tmp_path, server_factory):
    build = _build(tmp_path)
    n = len(_ok_drafts(build))
    server = server_factory()
    assert main(_args(build, server.base_url, "--max-requests", "3", "--concurrency", "1")) == 3
    assert len(_verdicts(build)) == 3
    assert main(_args(build, server.base_url)) == 0
    assert len(_verdicts(build)) == n and server.stats()["requests"] == n


def test_batch_service(tmp_path, server_factory, capsys):
    build = _build(tmp_path)
    n = len(_ok_drafts(build))
    server = server_factory({"batch_polls": 1})
    assert main(_args(build, server.base_url, "--batch")) == 0
    assert "submitted batch_0001" in capsys.readouterr().out and not _verdicts(build)
    assert main(_args(build, server.base_url, "--batch")) == 0  # polls: in progress
    assert main(_args(build, server.base_url, "--batch")) == 0  # finished: downloaded and stored
    assert len(_verdicts(build)) == n
    stats = server.stats()
    assert stats["batch_lines"] == n and stats["requests"] == 0 and stats["batches_created"] == 1


def test_killed_judge_resumes_without_asking_twice(tmp_path, server_factory):
    build = _build(tmp_path, n_images=4)
    n = len(_ok_drafts(build))
    server = server_factory({"default": {"kind": "auto", "delay_ms": 150}})
    proc = subprocess.Popen([sys.executable, "-m", "vgmed_build.cli", *_args(build, server.base_url, "--concurrency",
                                                                           "2")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(_verdicts(build)) < 4:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = _verdicts(build)
    assert 4 <= len(kept) < n
    sent = server.stats()["requests"]
    assert main(_args(build, server.base_url)) == 0
    assert len(_verdicts(build)) == n
    resent = server.stats()["requests"] - sent
    assert resent <= n - len(kept)  # replies committed before the kill are never asked again
    assert {k: v["created_at"] for k, v in _verdicts(build).items() if k in kept} == \
        {k: v["created_at"] for k, v in kept.items()}
