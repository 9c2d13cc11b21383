"""The whole chain on the bundled sample against a real Label Studio server:
ingest -> generate -> review push -> two reviewers -> review pull -> release -> validate -> export.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ingest_fixtures import SAMPLE_SOURCES
from labelstudio_fixture import add_reviewer

from vgmed_build.catalog import open_catalog
from vgmed_build.cli import main
from vgmed_build.config import load_sources_file
from vgmed_build.drafting.generate import GenerateOptions, run_generate
from vgmed_build.ingest.run import run_ingest
from vgmed_build.release_format import ATTRIBUTE_FILE
from vgmed_build.review.convert import draft_prediction
from vgmed_build.review.pull import pull
from vgmed_build.review.push import push
from vgmed_build.review.server import connect

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

REGIONS = 6  # drafted regions: enough for every question type, few enough for a quick review round


def review(client, task_id: int, draft: dict, verdict: str, question: str | None = None) -> None:
    """Submit a reviewer's annotation: the pre-filled draft (maybe with an edited question) + verdict."""
    result = draft_prediction(
        question or draft["question"], draft["answer"], draft["boxes"], draft["width"], draft["height"]
    )
    result.append({"from_name": "verdict", "to_name": "image", "type": "choices", "value": {"choices": [verdict]}})
    client.annotations.create(id=task_id, result=result)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_full_chain_on_the_bundled_sample(labelstudio, tmp_path):
    build = tmp_path / "build"
    report = run_ingest(build, load_sources_file(SAMPLE_SOURCES), progress=False)
    assert report.errors == [] and report.done > 0
    with open_catalog(build, create=False) as catalog:
        stats = run_generate(catalog, GenerateOptions(position_questions=True, limit=REGIONS, progress=False))
        assert stats.ok > 0
        drafts = {
            d: json.loads(r)
            for d, r in catalog.conn.execute("SELECT id, record_json FROM drafts WHERE status='ok' ORDER BY id")
        }
        pushed = push(catalog, labelstudio, reviewers_per_item=2, progress=False)
        assert pushed.created == len(drafts)
        tasks = dict(catalog.conn.execute("SELECT draft_id, task_id FROM review_tasks WHERE project='review'"))

        first, second = connect(labelstudio), add_reviewer(labelstudio, "chain.reviewer@vgmed.local").client()
        edited, rejected, split, *accepted = sorted(drafts)
        new_question = f"Can you see the {drafts[edited]['display_name']} here?"
        review(first, tasks[edited], drafts[edited], "edit", question=new_question)
        review(second, tasks[edited], drafts[edited], "accept")
        review(first, tasks[rejected], drafts[rejected], "reject")
        review(second, tasks[rejected], drafts[rejected], "reject")
        review(first, tasks[split], drafts[split], "accept")
        review(second, tasks[split], drafts[split], "reject")
        for draft_id in accepted:
            review(first, tasks[draft_id], drafts[draft_id], "accept")
            review(second, tasks[draft_id], drafts[draft_id], "accept")
        pulled = pull(catalog, labelstudio, progress=False)
        assert pulled.errors == [] and pulled.new_events == 2 * len(drafts)

    out = tmp_path / "release"
    assert main(["release", "--build", str(build), "--out", str(out), "--created", "2026-01-01T00:00:00Z"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    # Every question file of the release: the medical ones and, for the sample's photos, the COCO ones.
    records = {r["id"]: r for name in manifest["configs"].values() for r in read_jsonl(out / name)}
    assert set(records) == {edited, *accepted}  # rejected and disputed drafts stay out
    assert records[edited]["question"] == new_question and records[edited]["review"]["edited"] is True
    assert all(r["review"]["n_reviewers"] == 2 for r in records.values())
    for draft_id, record in records.items():
        assert record["image"].startswith("images/") and (out / record["image"]).is_file()
        assert record["bbox"] == drafts[draft_id]["boxes"]
    assert manifest["counts"]["records"] == len(records) and manifest["preview"] is False
    assert main(["validate", str(out)]) == 0
    assert main(["export", str(out), "--format", "vqa-json", "--out", str(tmp_path / "vqa.json")]) == 0
    assert len(json.loads((tmp_path / "vqa.json").read_text())) == len(read_jsonl(out / ATTRIBUTE_FILE))
