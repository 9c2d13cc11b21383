"""`generate --batch` against the scripted server's files + batches endpoints: submit -> poll -> results,
a drafter SIGKILLed between the upload and the results, retries as follow-up batches, and the drafts
compared with the live drafter's (request counts from the server's side)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from drafting_fixtures import llm_args, make_catalog, opts, run_cli

from vgmed_build.catalog import open_catalog
from vgmed_build.drafting.generate import run_generate

pytestmark = pytest.mark.slow


def _drafts(build) -> list[tuple]:
    with open_catalog(build) as cat:
        return cat.conn.execute(
            "SELECT id, status, q_type, json_extract(record_json, '$.question'), "
            "json_extract(record_json, '$.answer'), reason FROM drafts ORDER BY id").fetchall()


def _batches(build) -> list[tuple]:
    with open_catalog(build) as cat:
        return cat.conn.execute("SELECT input_file_id, batch_id, status, n_requests FROM llm_batches "
                                "ORDER BY created_at, rowid").fetchall()


def test_batch_drafts_equal_live_and_survive_a_kill(tmp_path, server_factory):
    live = server_factory()
    make_catalog(tmp_path / "live").close()
    res = run_cli(*llm_args(tmp_path / "live", live), "--paraphrase")
    assert res.returncode == 0, res.stderr
    expected = _drafts(tmp_path / "live")
    assert len(expected) == 10 and live.stats()["requests"] == 10  # 5 regions x (paraphrase + attribute)

    # The batch is created server-side at once, but the create call answers only after 60 s: the
    # drafter is killed after the upload, before it ever learns the batch id.
    server = server_factory({"batch_create_delay_ms": 60000, "batch_polls": 1})
    build = tmp_path / "b"
    make_catalog(build).close()
    args = [*llm_args(build, server), "--paraphrase", "--batch"]
    proc = subprocess.Popen([sys.executable, "-m", "vgmed_build.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while server.stats()["batches_created"] < 1:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    [(file_id, batch_id, status, n)] = _batches(build)
    assert file_id and batch_id is None and status == "preparing" and n == 10 and not _drafts(build)

    # Rerun: the upload and the batch are found on the server and adopted, nothing is sent again.
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    assert "adopting batch_0001" in res.stderr and "10 drafts waiting" in res.stdout  # the summary: stdout
    s = server.stats()
    assert (s["files_uploaded"], s["batches_created"], s["requests"], s["batch_lines"]) == (1, 1, 0, 0)
    assert _batches(build) == [(file_id, "batch_0001", "submitted", 10)] and not _drafts(build)

    # Poll: still running, nothing stored.
    res = run_cli(*args)
    assert res.returncode == 0 and "in_progress" in res.stderr and not _drafts(build)

    # Poll: done; the replies are downloaded, validated, linted and stored like live replies.
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    assert _drafts(build) == expected
    s = server.stats()
    assert (s["batches_created"], s["batch_lines"], s["requests"], s["file_downloads"]) == (1, 10, 0, 1)
    assert _batches(build)[0][2] == "completed"

    # Nothing left: no request, no poll, no download.
    res = run_cli(*args)
    assert res.returncode == 0 and _drafts(build) == expected
    assert server.stats() == s


def test_failed_lines_go_to_follow_up_batches(tmp_path, server_factory):
    server = server_factory({
        "batch_polls": 0,
        "rules": [{"match": 'Target name: "spleen"', "replies": [{"kind": "status", "status": 503}]},
                  {"match": 'Target name: "liver"', "replies": [{"kind": "text", "content": "no JSON here"}]}],
    })
    cat = make_catalog(tmp_path / "b")
    run = lambda: run_generate(cat, opts(server, paraphrase=True, batch=True))  # noqa: E731

    first = run()
    assert first.batch_waiting == 10 and len(first.batch_submitted) == 1 and not _drafts(tmp_path / "b")
    second = run()  # batch 1 done: 8 fine, liver's bad reply an error draft (as live), spleen's 503 re-asked
    rows = _drafts(tmp_path / "b")
    errors = [r for r in rows if r[1] == "error"]
    assert len(rows) == 9 and len(errors) == 1 and "no JSON" in errors[0][5]
    assert second.batch_waiting == 1 and second.errors == 1 and len(second.batch_submitted) == 1
    third = run()  # spleen answered; the error draft is asked again (a new request, as live retries)
    assert third.batch_waiting == 1 and len(_drafts(tmp_path / "b")) == 10
    run()
    assert all(r[1] == "ok" for r in _drafts(tmp_path / "b"))
    s = server.stats()
    assert (s["batches_created"], s["batch_lines"], s["requests"]) == (3, 12, 0)
    assert [b[3] for b in _batches(tmp_path / "b")] == [10, 1, 1]
