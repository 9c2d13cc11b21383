"""`vgmed-build generate --drafter llm` against a real scripted OpenAI-compatible server process.

Request counts come from the server's own /stats, never from the client under test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from drafting_fixtures import EIGHT, MODEL, count, drafts_by_label, llm_args, make_catalog, opts, run_cli

from vgmed_build.catalog import open_catalog
from vgmed_build.drafting.export import export_drafts
from vgmed_build.drafting.generate import GenerateOptions, run_generate
from vgmed_build.resources import schema_errors


def test_llm_drafts_then_rerun_makes_zero_requests(tmp_path, server_factory):
    server = server_factory()
    cat = make_catalog(tmp_path / "b")
    stats = run_generate(cat, opts(server, paraphrase=True, price_in=1.0, price_out=2.0))
    s = server.stats()
    assert s["requests"] == 10 == stats.requests  # 5 regions x (paraphrase + attribute)
    assert s["json_schema_requests"] == 10 and s["max_in_flight"] <= 4
    drafts = list(export_drafts(cat))
    assert len(drafts) == 10 and all(d["status"] == "ok" for d in drafts), [d["reason"] for d in drafts]
    for d in drafts:
        assert not schema_errors("draft", d)
        p = d["provenance"]
        assert p["drafter"] == "llm" and p["model"] == MODEL and p["cache_hit"] is False
        assert p["prompt_tokens"] > 0 and p["completion_tokens"] > 0
        assert p["cost_usd"] == pytest.approx((p["prompt_tokens"] * 1.0 + p["completion_tokens"] * 2.0) / 1e6)
        assert p["params"]["temperature"] == 0.7 and "seed" in p["params"]
        if d["q_type"] == "localization":
            assert d["answer"] == "yes" and p["template"].startswith("llm_paraphrase+localization[")
            assert d["display_name"] in d["question"]
            assert p["params"]["original"] != d["question"]
    assert stats.cost_usd == pytest.approx(sum(d["provenance"]["cost_usd"] for d in drafts))
    assert count(cat, "llm_cache") == 10
    before = cat.conn.execute("SELECT * FROM drafts ORDER BY id").fetchall()

    again = run_generate(cat, opts(server, paraphrase=True))
    assert server.stats()["requests"] == 10 and again.requests == 0
    assert cat.conn.execute("SELECT * FROM drafts ORDER BY id").fetchall() == before

    forced = run_generate(cat, opts(server, paraphrase=True, force=True))
    assert server.stats()["requests"] == 10 and forced.cache_hits == 10
    assert count(cat, "drafts") == 10 and count(cat, "llm_cache") == 10


def test_bad_replies_become_error_records_and_are_retried_next_run(tmp_path, server_factory):
    script = {
        "rules": [
            {
                "match": 'Target name: "spleen"',
                "replies": [{"kind": "text", "content": "Sure! The spleen looks fine."}],
            },
            {
                "match": 'Target name: "liver"',
                "replies": [{"kind": "json", "content": {"question": "What about the {obj}?"}}],
            },
            {"match": 'Target name: "tumour"', "replies": [{"kind": "refusal", "content": "I cannot assist."}]},
            {
                "match": 'Target name: "left kidney"',
                "replies": [{"kind": "status", "status": 429, "retry_after": 1}],
            },
            {
                "match": 'Target name: "grey matter"',
                "replies": [{"kind": "status", "status": 500}, {"kind": "status", "status": 503}],
            },
        ]
    }
    server = server_factory(script)
    cat = make_catalog(tmp_path / "b")
    t0 = time.monotonic()
    stats = run_generate(cat, opts(server))
    assert time.monotonic() - t0 >= 1.0  # Retry-After: 1 was honoured
    assert server.stats()["requests"] == 8 == stats.requests and stats.retries == 3
    att = drafts_by_label(cat)
    assert att["spleen"]["status"] == "error" and "no JSON object" in att["spleen"]["reason"]
    assert att["liver"]["status"] == "error" and "llm_attribute.schema.json" in att["liver"]["reason"]
    assert "must contain" in att["liver"]["reason"] and "answer" in att["liver"]["reason"]
    assert att["tumor"]["status"] == "error" and "model refused: I cannot assist." in att["tumor"]["reason"]
    assert att["kidney_left"]["status"] == "ok" and att["gm"]["status"] == "ok"
    for d in att.values():
        assert not schema_errors("draft", d)
    errors = cat.conn.execute("SELECT item, message FROM errors WHERE stage='generate'").fetchall()
    assert len(errors) == 3 and all(att["spleen"]["id"] in i or "refused" in m or "schema" in m for i, m in errors)
    assert count(cat, "llm_cache") == 2  # only valid replies are cached

    # The rerun asks again only for the three errors (the server now answers validly).
    stats = run_generate(cat, opts(server))
    assert server.stats()["requests"] == 11 and stats.requests == 3
    assert all(d["status"] == "ok" for d in drafts_by_label(cat).values())
    assert count(cat, "errors") == 0 and count(cat, "drafts") == 10


def test_timeouts_and_5xx_exhaust_retries(tmp_path, server_factory):
    slow = server_factory({"default": {"kind": "auto", "delay_ms": 3000}})
    cat = make_catalog(tmp_path / "b", targets=EIGHT[:1])
    stats = run_generate(cat, opts(slow, timeout_s=0.5, max_retries=1, localization_per_region=0))
    assert slow.stats()["requests"] == 2 and stats.errors == 1
    d = next(export_drafts(cat))
    assert d["status"] == "error" and "after 2 attempts" in d["reason"] and "Timeout" in d["reason"]

    broken = server_factory({"default": {"kind": "status", "status": 502}})
    cat2 = make_catalog(tmp_path / "c", targets=EIGHT[:1])
    t0 = time.monotonic()
    run_generate(cat2, opts(broken, max_retries=2, backoff_s=0.2, localization_per_region=0))
    # Exponential backoff with jitter in [0.5, 1.5): 0.2 s then 0.4 s nominal, at least 0.3 s in all.
    assert time.monotonic() - t0 >= 0.3
    assert broken.stats()["requests"] == 3
    assert "502" in next(export_drafts(cat2))["reason"]


def test_json_schema_fallback_and_text_mode(tmp_path, server_factory):
    server = server_factory({"reject_formats": ["json_schema"]})
    cat = make_catalog(tmp_path / "b")
    run_generate(cat, opts(server, concurrency=1, localization_per_region=0))
    s = server.stats()
    assert s["json_schema_requests"] == 1 and s["requests"] == 6  # one 400, then plain text for all 5
    assert all(d["status"] == "ok" for d in export_drafts(cat))

    fenced = {
        "default": {
            "kind": "text",
            "content": 'Here you go:\n```json\n{"question": "What is the margin of '
            'the {obj} like?", "answer": "smooth", "attribute": "margin"}\n```',
        }
    }
    server2 = server_factory(fenced)
    cat2 = make_catalog(tmp_path / "c")
    run_generate(cat2, opts(server2, response_format="text", localization_per_region=0))
    assert server2.stats()["json_schema_requests"] == 0
    assert all(d["status"] == "ok" and d["answer"] == "smooth" for d in export_drafts(cat2))


def test_request_budget_stops_cleanly_and_resume_finishes(tmp_path, server_factory):
    server = server_factory()
    cat = make_catalog(tmp_path / "b", targets=EIGHT)
    stats = run_generate(cat, opts(server, concurrency=1, max_requests=3, localization_per_region=0))
    assert stats.budget_reached and server.stats()["requests"] == 3
    assert count(cat, "drafts") == 3 and all(d["status"] == "ok" for d in export_drafts(cat))
    stats = run_generate(cat, opts(server, localization_per_region=0))
    assert not stats.budget_reached and server.stats()["requests"] == 8 and count(cat, "drafts") == 8


def test_cost_budget(tmp_path, server_factory):
    server = server_factory()
    cat = make_catalog(tmp_path / "b", targets=EIGHT)
    # ~250 prompt tokens at $2000 per 1M tokens: ~$0.5 per request; the budget of $0.9 allows two.
    stats = run_generate(cat, opts(server, concurrency=1, price_in=2000.0, max_cost_usd=0.9, localization_per_region=0))
    assert stats.budget_reached and "budget reached" in stats.budget_reached
    assert server.stats()["requests"] == 2 and count(cat, "drafts") == 2


def test_concurrency_is_bounded(tmp_path, server_factory):
    server = server_factory({"latency_ms": 200})
    cat = make_catalog(tmp_path / "b", targets=EIGHT)
    t0 = time.monotonic()
    run_generate(cat, opts(server, concurrency=3, localization_per_region=0))
    elapsed = time.monotonic() - t0
    s = server.stats()
    assert s["requests"] == 8 and s["max_in_flight"] == 3
    assert elapsed < 8 * 0.2  # faster than one at a time


def test_duplicates_and_regenerate_rejected(tmp_path, server_factory):
    same = {
        "kind": "json",
        "content": {
            "question": "What is the margin of the {obj} like?",
            "answer": "smooth",
            "attribute": "margin",
        },
    }
    give_away = {
        "kind": "json",
        "content": {"question": "Is the {obj} small in this image?", "answer": "small", "attribute": "size"},
    }
    server = server_factory(
        {
            "rules": [
                {"match": 'Target name: "spleen"', "replies": [give_away]},
                {"match": 'Target name: "liver"', "replies": [same, same]},
            ]
        }
    )
    cat = make_catalog(tmp_path / "b", targets=EIGHT[:2])
    run_generate(cat, opts(server, concurrency=1, attributes_per_region=2, localization_per_region=0))
    by = {(d["label"], d["slot"]): d for d in export_drafts(cat)}
    assert by[("organ0", 0)]["status"] == "ok"
    assert by[("organ0", 1)]["status"] == "rejected" and by[("organ0", 1)]["reason"].startswith("duplicate:")
    assert by[("organ1", 0)]["reason"].startswith("answer_hidden:")
    assert server.stats()["requests"] == 4

    run_generate(cat, opts(server, attributes_per_region=2, localization_per_region=0))
    assert server.stats()["requests"] == 4  # rejected drafts are kept unless asked

    run_generate(cat, opts(server, attributes_per_region=2, localization_per_region=0, regenerate_rejected=True))
    s = server.stats()
    assert s["requests"] == 6
    assert sum("rejected by the automatic checks (\"answer_hidden" in p for p in s["recent_prompts"]) == 1
    assert sum("rejected by the automatic checks (\"duplicate" in p for p in s["recent_prompts"]) == 1
    by = {(d["label"], d["slot"]): d for d in export_drafts(cat)}
    for key in (("organ0", 1), ("organ1", 0)):
        assert by[key]["status"] == "ok" and by[key]["provenance"]["params"]["attempt"] == 1
    assert by[("organ1", 0)]["provenance"]["params"]["seed"] == 1000
    assert count(cat, "drafts") == 4


def test_with_image_sends_multimodal_requests(tmp_path, server_factory):
    server = server_factory()
    cat = make_catalog(tmp_path / "b")
    run_generate(cat, opts(server, with_image=True, localization_per_region=0))
    s = server.stats()
    assert s["requests"] == 5 and s["image_requests"] == 5
    assert all(d["provenance"]["params"]["with_image"] for d in export_drafts(cat))


def test_api_key_never_reaches_catalog_or_logs(tmp_path, server_factory):
    marker = "sk-VGMED-MARKER-7f3a9c"
    server = server_factory(
        {
            "rules": [
                {
                    "match": 'Target name: "spleen"',
                    "replies": [{"kind": "status", "status": 500, "echo_auth": True}] * 3,
                },
                {
                    "match": 'Target name: "liver"',
                    "replies": [{"kind": "status", "status": 422, "echo_auth": True}],
                },
            ]
        }
    )
    build = tmp_path / "b"
    make_catalog(build).close()
    env = {**os.environ, "OPENAI_API_KEY": marker}
    args = [
        "-v",
        *llm_args(build, server),
        "--paraphrase",
        "--max-retries",
        "1",
        "--retry-backoff",
        "0.01",
    ]
    res = run_cli(*args, env=env)
    assert res.returncode == 1, res.stderr  # drafts ended in error: exit 1, all stored
    assert marker in server.stats()["bearer_tokens"]  # the key was really sent to the server
    export = run_cli("drafts", "--build", str(build), "--status", "all", env=env)
    logs = res.stdout + res.stderr + export.stdout + export.stderr
    assert "[redacted]" in export.stdout  # the server's echo was stored, without the key
    assert marker not in logs
    for f in build.iterdir():
        if f.is_file():
            assert marker.encode() not in f.read_bytes(), f.name
    with open_catalog(build) as cat:
        for (msg,) in cat.conn.execute("SELECT message FROM errors"):
            assert marker not in msg


def test_budget_exit_code_and_crash_resume(tmp_path, server_factory):
    server = server_factory({"latency_ms": 100})
    targets = [(f"t{i}", f"structure {i}", [], "unknown", "organ", [i, i, i + 20, i + 20]) for i in range(40)]
    build = tmp_path / "b"
    make_catalog(build, targets=targets).close()
    base = [
        *llm_args(build, server),
        "--localization-per-region",
        "0",
        "--concurrency",
        "2",
    ]
    res = run_cli(*base, "--max-requests", "4", env=dict(os.environ))
    assert res.returncode == 3 and "budget reached" in res.stderr
    assert server.stats()["requests"] == 4

    proc = subprocess.Popen(
        [sys.executable, "-m", "vgmed_build.cli", *base], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while server.stats()["requests"] < 14 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open_catalog(build) as cat:
        cached = count(cat, "llm_cache")
        stored = count(cat, "drafts")
    assert 4 <= stored <= cached < 40
    sent_before = server.stats()["requests"]
    res = run_cli(*base, env=dict(os.environ))
    assert res.returncode == 0, res.stderr
    # Only replies that never reached the cache are asked for again.
    assert server.stats()["requests"] - sent_before == 40 - cached
    with open_catalog(build) as cat:
        assert count(cat, "drafts") == 40 and count(cat, "llm_cache") == 40


def test_drafts_export_is_valid_jsonl(tmp_path, server_factory):
    compound = {"question": "Is the {obj} enlarged and irregular?", "answer": "no", "attribute": "size"}
    server = server_factory(
        {
            "rules": [
                {"match": 'Target name: "spleen"', "replies": [{"kind": "refusal"}]},
                # Only the attribute prompt states the structure category.
                {"match": "Structure category", "replies": [{"kind": "json", "content": compound}]},
            ]
        }
    )
    build = tmp_path / "b"
    cat = make_catalog(build)
    run_generate(cat, opts(server, paraphrase=True, position_questions=True))
    cat.close()
    out = tmp_path / "d.jsonl"
    res = run_cli("drafts", "--build", str(build), "--out", str(out), env=dict(os.environ))
    assert res.returncode == 0, res.stderr
    lines = Path(out).read_text().splitlines()
    statuses = {json.loads(line)["status"] for line in lines}
    assert statuses == {"ok", "rejected", "error"}
    for line in lines:
        assert not schema_errors("draft", json.loads(line))


def test_generate_on_a_real_ingest_of_the_bundled_sample(tmp_path, server_factory):
    from ingest_fixtures import SAMPLE_SOURCES

    from vgmed_build.config import load_sources_file
    from vgmed_build.ingest.run import run_ingest

    build = tmp_path / "build"
    report = run_ingest(build, load_sources_file(SAMPLE_SOURCES), progress=False)
    assert report.errors == []
    cat = open_catalog(build, create=False)
    regions = {r["id"]: r for r in cat.regions()}
    run_generate(cat, GenerateOptions(position_questions=True, progress=False))
    drafts = list(export_drafts(cat))
    for d in drafts:
        assert not schema_errors("draft", d)
        region = regions[d["region_id"]]
        # a question about a structure absent from the image: answer "no", no box, never the region's label
        expected = ([], "no") if d.get("absent") else (region["boxes"], d["answer"])
        assert (d["boxes"], d["answer"]) == expected and d["image"] == region["image"]
        assert not d.get("absent") or d["label"] != region["label"]
        assert (build / d["image"]).is_file()
    assert any(d.get("absent") for d in drafts)
    loc = [d for d in drafts if d["q_type"] == "localization" and not d.get("absent")]
    att = [d for d in drafts if d["q_type"] == "attribute"]
    # A region on an image holding every structure of its source (nothing absent: no "no" to balance it)
    # is not asked "yes" either (docs/generate.md, balance): the axial and coronal MNI and the CT slices.
    structures: dict[str, set[str]] = {}
    for r in regions.values():
        structures.setdefault(r["source"]["name"], set()).add(r["label"])
    full = [r for r in regions.values() if structures[r["source"]["name"]] <= set(r["image_labels"])]
    assert len(att) == len(regions) and len(loc) == len(regions) - len(full) and len(full) == 10
    # Display names from the sources file, side words in them agree with the computed sides.
    assert all(d["status"] == "ok" and d["display_name"] in d["question"] for d in loc)
    assert any("grey matter on the patient's left" in d["question"] for d in loc)
    assert not any("cerebral" in d["question"] or " a grey" in d["question"] for d in drafts)
    pos = {d["display_name"]: d for d in drafts if d["q_type"] == "position"}
    assert pos["descending aorta"]["status"] == "ok"
    assert pos["descending aorta"]["answer"] == regions[pos["descending aorta"]["region_id"]]["side"]
    # Hemispheres are named with their side: a position question about them would be trivial.
    assert not [d for d in drafts if d["q_type"] == "position" and "hemisphere" in d["display_name"]]
    n_drafts = count(cat, "drafts")

    # The LLM drafter on the first 8 regions: it replaces their template attribute drafts, nothing else.
    server = server_factory()
    run_generate(cat, opts(server, limit=8))
    assert server.stats()["requests"] == 8 and count(cat, "drafts") == n_drafts
    llm = [d for d in export_drafts(cat, q_type="attribute") if d["provenance"]["drafter"] == "llm"]
    assert len(llm) == 8 and all(d["status"] == "ok" for d in llm)
    run_generate(cat, opts(server, limit=8))
    assert server.stats()["requests"] == 8
    cat.close()


def test_one_unreadable_region_never_aborts_the_run(tmp_path, server_factory):
    server = server_factory()
    targets = EIGHT[:3]
    cat = make_catalog(tmp_path / "b", targets=targets, n_images=2)
    regions = list(cat.regions())
    broken = regions[0]
    (cat.build_dir / broken["image"]).unlink()  # its image is gone: --with-image cannot attach it
    stats = run_generate(cat, opts(server, with_image=True, localization_per_region=0))
    siblings = [r for r in regions if r["image"] == broken["image"]]
    assert stats.regions_failed == len(siblings) == 3
    assert stats.ok == len(regions) - 3 and server.stats()["requests"] == len(regions) - 3
    errors = cat.conn.execute("SELECT item, message FROM errors WHERE stage='generate'").fetchall()
    assert {i for i, _ in errors} == {f"region {r['id']}" for r in siblings}
    assert all("FileNotFoundError" in m and broken["image"] in m for _, m in errors)
    # Image restored: the next run drafts exactly the failed regions and clears their errors.
    from PIL import Image

    Image.new("L", (128, 128), 80).save(cat.build_dir / broken["image"])
    stats = run_generate(cat, opts(server, with_image=True, localization_per_region=0))
    assert stats.ok == 3 and stats.regions_failed == 0 and count(cat, "errors") == 0
    assert server.stats()["requests"] == len(regions)
