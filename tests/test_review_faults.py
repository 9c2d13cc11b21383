"""Bad annotations and a failing Label Studio (issue 30).

Annotations a reviewer or an API client saved that cannot be a review (no verdict, an unknown one, a box
without a coordinate or with text for a number, task data rewritten on the server) are reported with
their task, reviewer and problem, stored in the catalog and listed by `review status`, while the valid
ones are stored. A server that fails (a 500 creating the project, a connection closed during import or
export, a truncated or garbage export) stops push / pull with one error naming the server and the step,
exit 2, and the next run resumes; a project deleted on the server since the push stops a pull with an
error saying so and what to do, changing nothing (issue 24). The failures come from a small local HTTP
server through the real SDK client (tests/labelstudio_mimic.py).
"""

from __future__ import annotations

import json
import math
import time
from datetime import timedelta

import pytest
from labelstudio_fixture import dump, make_build
from labelstudio_mimic import Mimic

from vgmed_build.cli import main
from vgmed_build.review import pull as pull_module
from vgmed_build.review.api import LabelStudioError
from vgmed_build.review.convert import InvalidAnnotation, draft_prediction, read_annotation
from vgmed_build.review.pull import Collector, PullReport, pull, reviewer_id
from vgmed_build.review.push import push
from vgmed_build.review.server import ServerInfo
from vgmed_build.review.state import load_drafts
from vgmed_build.review.tasks import task_payload

IDENTITY = "label-studio-org:1:2026-01-01T00:00:00Z"  # the mimic's organisation
VERDICT_ACCEPT = {"from_name": "verdict", "to_name": "image", "type": "choices", "value": {"choices": ["accept"]}}


def rect(**value) -> dict:
    return {"from_name": "bbox", "to_name": "image", "type": "rectanglelabels", "value": value}


BOX = {"x": 10, "y": 10, "width": 20, "height": 20, "rotation": 0}


@pytest.mark.parametrize(
    ("results", "problem"),
    [
        ([], "no verdict"),
        ([rect(**BOX)], "no verdict"),
        ([{**VERDICT_ACCEPT, "value": {"choices": ["maybe"]}}], "unknown verdict 'maybe' (expected one of accept,"),
        ([{**VERDICT_ACCEPT, "value": {"choices": "accept"}}], "verdict: choices 'accept' is not a list of text"),
        ([{**VERDICT_ACCEPT, "value": {"choices": ["accept", "reject"]}}], "verdict: 2 choices"),
        ([VERDICT_ACCEPT, rect(x=10, y=10, width=20)], "box 1: coordinate 'height' is missing"),
        ([VERDICT_ACCEPT, rect(**BOX), rect(**{**BOX, "x": "10"})], "box 2: x is '10', not a number"),
        ([VERDICT_ACCEPT, rect(**{**BOX, "width": math.nan})], "box 1: width is nan, not a number"),
        ([VERDICT_ACCEPT, rect(**{**BOX, "y": math.inf})], "box 1: y is inf, not a number"),
        ([VERDICT_ACCEPT, rect(**{**BOX, "y": True})], "box 1: y is True, not a number"),
        ([VERDICT_ACCEPT, rect(**{**BOX, "rotation": "90"})], "box 1: rotation is '90', not a number"),
        ([VERDICT_ACCEPT, {"from_name": "question", "value": {"text": [3]}}], "question: text [3] is not a list"),
        ([VERDICT_ACCEPT, {"from_name": "question"}], "result 2 has no value object"),
        ([VERDICT_ACCEPT, "accept"], "result 2 has no value object"),
        ({"verdict": "accept"}, "result is dict, not a list"),
    ],
)
def test_an_unreadable_annotation_names_its_problem(results, problem):
    with pytest.raises(InvalidAnnotation) as info:
        read_annotation(results, 200, 100)
    assert problem in str(info.value)


def test_every_problem_of_an_annotation_is_named_and_good_ones_still_read():
    bad = [{**VERDICT_ACCEPT, "value": {"choices": ["ok"]}}, rect(x=1, y=1, width="5", height=5)]
    with pytest.raises(InvalidAnnotation, match="unknown verdict 'ok'.*; box 1: width is '5', not a number"):
        read_annotation(bad, 200, 100)
    results = draft_prediction("Where?", "here", [[20, 10, 60, 30]], 200, 100) + [VERDICT_ACCEPT]
    good = read_annotation(results, 200, 100)
    assert (good.verdict, good.question, good.answer, good.boxes) == ("accept", "Where?", "here", [[20, 10, 60, 30]])


def _annotation(ann_id: int, user: object, results: list, when: str = "2026-12-07T10:00:00.000000Z") -> dict:
    return {"id": ann_id, "completed_by": user, "result": results, "created_at": when, "updated_at": when,
            "lead_time": 3.5, "was_cancelled": False}


def test_the_collector_keeps_the_valid_annotations_and_reports_each_bad_one(tmp_path):
    catalog = make_build(tmp_path / "b", n_images=1)
    rows = load_drafts(catalog)
    a, b, c = rows[0], rows[1], rows[2]
    data = {r.id: task_payload(r, f"/data/{r.id}.png")["data"] for r in (a, b, c)}
    hashes = {r.id: data[r.id]["vgmed_hash"] for r in (a, b, c)}
    accept = draft_prediction(a.draft["question"], a.draft["answer"], a.draft["boxes"], a.width, a.height)
    tampered_b = {**data[b.id], "draft_text": "as drafted: <img src=x onerror=alert(1)> | answer: yes"}
    tampered_c = {**data[c.id], "draft_id": a.id}  # points the task at another draft
    tasks = [
        {"id": 11, "data": data[a.id], "annotations": [
            _annotation(101, 7, accept + [VERDICT_ACCEPT]),  # valid
            _annotation(102, {"id": 8}, [{**VERDICT_ACCEPT, "value": {"choices": ["maybe"]}}]),
            _annotation(103, 9, [rect(x=1, y=1, width="wide", height=4), VERDICT_ACCEPT]),
            _annotation(104, None, [VERDICT_ACCEPT]),
            {**_annotation(105, 7, []), "was_cancelled": True},  # skipped: no verdict to keep, not a problem
        ]},
        {"id": 12, "data": tampered_b, "annotations": [_annotation(106, 7, [VERDICT_ACCEPT])]},
        {"id": 13, "data": tampered_c, "annotations": [_annotation(107, 8, [VERDICT_ACCEPT])]},
        {"id": 14, "data": {"draft_id": "0" * 16}, "annotations": [_annotation(108, 9, [VERDICT_ACCEPT])]},
    ]
    recorded = {11: (a.id, hashes[a.id]), 12: (b.id, hashes[b.id]), 13: (c.id, hashes[c.id])}
    report = PullReport()
    collector = Collector({r.id: r for r in rows}, recorded, set(), "review", 5, IDENTITY, report)
    for task in tasks:
        collector.add(task)
    assert [(e["task_id"], e["annotation_id"], e["verdict"]) for e in collector.events] == [(11, 101, "accept")]
    assert collector.events[0]["reviewer"] == reviewer_id(IDENTITY, 7) and report.skipped == 1
    got = {p["annotation_id"]: p for p in collector.problems}
    assert sorted(got) == [102, 103, 104, 106, 107, 108]
    expect = {
        102: (11, reviewer_id(IDENTITY, 8), a.id, "unknown verdict 'maybe'"),
        103: (11, reviewer_id(IDENTITY, 9), a.id, "box 1: width is 'wide', not a number"),
        104: (11, "", a.id, "completed_by None names no user"),
        106: (12, reviewer_id(IDENTITY, 7), b.id, "task data rewritten on the server: draft_text differ"),
        107: (13, reviewer_id(IDENTITY, 8), c.id, f"task data rewritten on the server: draft_id {a.id!r}"),
        108: (14, reviewer_id(IDENTITY, 9), "0" * 16, "is not an ok draft of this build"),
    }
    for ann_id, (task_id, reviewer, draft_id, problem) in expect.items():
        p = got[ann_id]
        assert (p["task_id"], p["reviewer"], p["draft_id"]) == (task_id, reviewer, draft_id), p
        assert problem in p["problem"], p
        assert p["revision"] == "2026-12-07T10:00:00.000000Z" and p["project"] == "review"


# ---------------------------------------------------------------- a failing server


@pytest.fixture
def mimic():
    server = Mimic()
    yield server
    server.stop()


def _cli(capsys, mimic, monkeypatch, *args: str) -> tuple[int, str, str]:
    """Run ``vgmed-build review ...`` against the mimic, which "serves" the build's images from disk."""
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "mimic-token-0123456789")
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    build = args[args.index("--build") + 1]
    code = main([*args[:2], "--no-progress", *args[2:], "--url", mimic.url, "--document-root", build])
    out, err = capsys.readouterr()
    return code, out, err


def test_push_survives_a_500_and_a_connection_closed_during_import(tmp_path, mimic, capsys, monkeypatch):
    catalog = make_build(tmp_path / "b", n_images=2)
    build = str(catalog.build_dir)
    n = len(load_drafts(catalog))
    catalog.build_id()  # made on first need (the project's marker), a fixture of the build
    before = dump(catalog)

    mimic.fail("create_project", "500")
    code, _, err = _cli(capsys, mimic, monkeypatch, "review", "push", "--build", build)
    assert code == 2 and "Traceback" not in err
    assert f"error: Label Studio at {mimic.url}: creating the review project failed: HTTP 500" in err
    assert "rerun the same command to resume" in err
    assert dump(catalog) == before and mimic.state.projects == {}

    mimic.heal()
    mimic.fail("import", "close")  # the server stores the tasks, the answer never arrives (every retry too)
    code, _, err = _cli(capsys, mimic, monkeypatch, "review", "push", "--build", build, "--batch-size", "4")
    assert code == 2 and "Traceback" not in err
    assert "importing tasks into project" in err and "(request 1, 4 tasks) failed" in err
    assert "the server closed the connection before answering in full" in err
    assert len(mimic.state.tasks) >= 4  # on the server, not in the catalog
    assert catalog.review_tasks("review") == {}

    mimic.heal()
    code, out, err = _cli(capsys, mimic, monkeypatch, "review", "push", "--build", build, "--batch-size", "4")
    assert code == 0, err
    assert f"{n - 4} new" in out and "4 recovered" in out
    on_server = sorted(t["data"]["draft_id"] for t in mimic.state.tasks.values())
    assert on_server == sorted(r.id for r in load_drafts(catalog))  # one task per draft, twins deleted
    recorded = catalog.review_tasks("review")
    assert {d: t for d, (t, _) in recorded.items()} == {
        t["data"]["draft_id"]: t["id"] for t in mimic.state.tasks.values()
    }


def test_pull_survives_a_broken_export_and_reports_bad_annotations(tmp_path, mimic, capsys, monkeypatch):
    catalog = make_build(tmp_path / "b", n_images=1)
    build = str(catalog.build_dir)
    assert _cli(capsys, mimic, monkeypatch, "review", "push", "--build", build)[0] == 0
    tasks = sorted(mimic.state.tasks.values(), key=lambda t: t["id"])
    rows = {r.id: r for r in load_drafts(catalog)}
    good, bad, rewritten = tasks[0], tasks[1], tasks[2]
    row = rows[good["data"]["draft_id"]]
    edit = draft_prediction("Where is it?", "yes", [[5, 5, 40, 30]], row.width, row.height)
    good["annotations"] = [_annotation(501, 7, edit + [{**VERDICT_ACCEPT, "value": {"choices": ["edit"]}}])]
    bad["annotations"] = [
        _annotation(502, 8, [VERDICT_ACCEPT]),  # valid beside the bad one
        _annotation(503, 9, [{**VERDICT_ACCEPT, "value": {"choices": ["definitely"]}}]),
        _annotation(504, 9, [VERDICT_ACCEPT, rect(x=5, y=5, width=10)]),
    ]
    rewritten["data"]["facts_what"] = "liver · <b>ignore the image and accept</b>"
    rewritten["annotations"] = [_annotation(505, 7, [VERDICT_ACCEPT])]
    before = dump(catalog)

    for kind, words in (
        ("cut", "the server closed the connection before answering in full"),
        ("close", "the server closed the connection before answering in full"),
        ("truncated", "the answer is not valid JSON (cut short?)"),
        ("garbage", "the export is dict, not a list of tasks"),
    ):
        mimic.fail("export", kind)
        code, _, err = _cli(capsys, mimic, monkeypatch, "review", "pull", "--build", build)
        assert code == 2 and "Traceback" not in err, (kind, err)
        assert f"error: Label Studio at {mimic.url}: exporting the review project" in err and words in err, kind
        assert dump(catalog) == before, kind  # nothing stored, no mark moved

    mimic.heal()
    mimic.fail("project", "garbage")  # the project's task count and the server's clock come first
    code, _, err = _cli(capsys, mimic, monkeypatch, "review", "pull", "--build", build)
    assert code == 2 and "Traceback" not in err and dump(catalog) == before
    assert "the answer to GET /api/projects/" in err and "has no int 'task_number': {\"detail\"" in err

    mimic.heal()
    code, out, err = _cli(capsys, mimic, monkeypatch, "review", "pull", "--build", build)
    assert code == 1, err  # the run went on; some annotations could not be stored
    assert "pulled 2 new review event(s)" in out and "3 invalid annotation(s) not stored (3 new" in out
    stored = {rec["annotation_id"]: rec for _, _, rec in catalog.review_event_records()}
    assert sorted(stored) == [501, 502] and stored[501]["question"] == "Where is it?"

    assert main(["review", "status", "--build", build, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["invalid_annotation_count"] == 3
    listed = {p["annotation_id"]: p for p in status["invalid_annotations"]}
    assert listed[503]["task_id"] == bad["id"] and listed[503]["reviewer"] == reviewer_id(IDENTITY, 9)
    assert "unknown verdict 'definitely'" in listed[503]["problem"]
    assert "box 1: coordinate 'height' is missing" in listed[504]["problem"]
    assert listed[505]["task_id"] == rewritten["id"] and "facts_what differ" in listed[505]["problem"]
    main(["review", "status", "--build", build])
    text = capsys.readouterr().out
    assert "invalid annotations: 3 (not stored" in text
    assert f"review task {bad['id']}: annotation 503 by {reviewer_id(IDENTITY, 9)}: unknown verdict" in text

    # The reviewer fixes 503 in Label Studio: the new revision is stored, the problem closes, its row stays.
    bad["annotations"][1] = _annotation(503, 9, [VERDICT_ACCEPT], when="2026-12-07T11:00:00.000000Z")
    code, out, _ = _cli(capsys, mimic, monkeypatch, "review", "pull", "--build", build, "--full")
    assert code == 1 and "pulled 1 new review event(s)" in out and "(0 new" in out
    main(["review", "status", "--build", build, "--json"])
    status = json.loads(capsys.readouterr().out)
    assert sorted(p["annotation_id"] for p in status["invalid_annotations"]) == [504, 505]
    assert len(catalog.review_problem_records()) == 3  # nothing stored is ever dropped


# ---------------------------------------------------------------- a project deleted between push and pull (issue 24)


def _pushed_and_pulled(tmp_path, mimic, capsys, monkeypatch):
    """A build pushed to the mimic, two drafts accepted there and pulled: 2 events in the catalog."""
    catalog = make_build(tmp_path / "b", n_images=1)
    build = str(catalog.build_dir)
    assert _cli(capsys, mimic, monkeypatch, "review", "push", "--build", build)[0] == 0
    tasks = sorted(mimic.state.tasks.values(), key=lambda t: t["id"])
    tasks[0]["annotations"] = [_annotation(601, 7, [VERDICT_ACCEPT])]
    tasks[1]["annotations"] = [_annotation(602, 8, [VERDICT_ACCEPT])]
    code, out, err = _cli(capsys, mimic, monkeypatch, "review", "pull", "--build", build)
    assert code == 0 and "pulled 2 new review event(s)" in out, err
    return catalog, build


def test_pull_from_a_deleted_project_is_one_clear_error_and_changes_nothing(tmp_path, mimic, capsys, monkeypatch):
    catalog, build = _pushed_and_pulled(tmp_path, mimic, capsys, monkeypatch)
    (project_id,) = mimic.state.projects
    before = dump(catalog)
    assert len(before["review_events"]) == 2

    mimic.state.projects.clear()  # deleted in Label Studio's UI after the push
    with pytest.raises(LabelStudioError) as raised:
        pull(catalog, ServerInfo(mimic.url, api_key="mimic-token-0123456789"), progress=False)
    message = str(raised.value)
    assert message == (
        f"this build's review project (id {project_id}) is gone from {mimic.url} (deleted?): the 2 review event(s) "
        "pulled from it are kept in the catalog; `vgmed-build review push` makes a new project for the drafts "
        "(pulling again cannot succeed)")
    assert dump(catalog) == before  # not a row or a mark written; the earlier pull's events intact

    # The command: exit 2, that one line, no traceback, no token.
    code, _, err = _cli(capsys, mimic, monkeypatch, "review", "pull", "--build", build)
    assert (code, err) == (2, f"error: {message}\n") and "mimic-token" not in err
    assert dump(catalog) == before


def test_a_project_deleted_during_the_pull_and_a_failing_export_of_one_that_exists(tmp_path, mimic, capsys,
                                                                                   monkeypatch):
    catalog, build = _pushed_and_pulled(tmp_path, mimic, capsys, monkeypatch)
    before = dump(catalog)
    # The project exists but its export fails: the server's own error, not "gone".
    mimic.fail("export", "500")
    code, _, err = _cli(capsys, mimic, monkeypatch, "review", "pull", "--build", build, "--full")
    assert code == 2 and "exporting the review project" in err and "HTTP 500" in err and "is gone" not in err
    assert dump(catalog) == before
    # It answers the project's task count, then is deleted before its export.
    mimic.fail("export", "gone")
    code, _, err = _cli(capsys, mimic, monkeypatch, "review", "pull", "--build", build, "--full")
    assert code == 2 and "review project" in err and "is gone from" in err and "2 review event(s)" in err
    assert "GET /api/projects" in " ".join(mimic.state.requests) and dump(catalog) == before


# ---------------------------------------------------------------- the real server


@pytest.mark.labelstudio
def test_real_label_studio_takes_bad_annotations_and_pull_reports_each(labelstudio, tmp_path):
    """Label Studio stores what an API client sends: pull keeps the valid review, reports the rest."""
    from vgmed_build.review.pull import pull
    from vgmed_build.review.push import push
    from vgmed_build.review.server import connect
    from vgmed_build.review.status import summary

    catalog = make_build(tmp_path / "b", n_images=1)
    push(catalog, labelstudio, progress=False)
    client = connect(labelstudio)
    tasks = {d: t for d, (t, _) in catalog.review_tasks("review").items()}
    rows = {r.id: r for r in load_drafts(catalog)}
    good, unknown, no_height, text_x, no_verdict, tampered = sorted(tasks)
    row = rows[good]
    target = {"rectanglelabels": ["target"]}
    results = {
        good: draft_prediction(row.draft["question"], row.draft["answer"], row.draft["boxes"], row.width, row.height)
        + [VERDICT_ACCEPT],
        unknown: [{**VERDICT_ACCEPT, "value": {"choices": ["maybe"]}}],
        no_height: [VERDICT_ACCEPT, rect(x=5, y=5, width=10, **target)],
        text_x: [VERDICT_ACCEPT, rect(**{**BOX, "x": "ten"}, **target)],
        no_verdict: [rect(**BOX, **target)],
        tampered: [VERDICT_ACCEPT],
    }
    data = client.tasks.get(str(tasks[tampered])).data
    client.tasks.update(str(tasks[tampered]), data={**data, "draft_text": "as drafted: <b>accept it</b> | answer: yes"})
    for draft_id, result in results.items():
        client.annotations.create(id=tasks[draft_id], result=result)

    report = pull(catalog, labelstudio, progress=False)
    me = reviewer_id(labelstudio.identity, client.users.whoami().id)
    assert report.new_events == 1 and report.new_problems == 5, report.errors
    assert [rec["draft_id"] for _, _, rec in catalog.review_event_records()] == [good]
    problems = {p["task_id"]: p for p in summary(catalog)["invalid_annotations"]}
    assert {p["reviewer"] for p in problems.values()} == {me}
    assert "unknown verdict 'maybe'" in problems[tasks[unknown]]["problem"]
    assert "box 1: coordinate 'height' is missing" in problems[tasks[no_height]]["problem"]
    assert "box 1: x is 'ten', not a number" in problems[tasks[text_x]]["problem"]
    assert problems[tasks[no_verdict]]["problem"] == "no verdict"
    assert "draft_text differ from what this build pushed" in problems[tasks[tampered]]["problem"]
    assert pull(catalog, labelstudio, progress=False, full=True).new_problems == 0  # stored once


def test_an_invite_the_server_cannot_give_is_one_line(tmp_path, mimic, capsys, monkeypatch):
    catalog = make_build(tmp_path / "b", n_images=1)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "mimic-token-0123456789")
    code = main(["labelstudio", "invite", "--build", str(catalog.build_dir), "--url", mimic.url])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"error: Label Studio at {mimic.url}: asking for an invite link failed: Label Studio "
                          "answered HTTP 404 to GET /api/invite")


def test_push_streams_batches_and_refreshes_only_changed_unreviewed_tasks(tmp_path, mimic, capsys, monkeypatch):
    """Push reads drafts a batch at a time (issue 27): the imports still go ``--batch-size`` per request in
    draft id order, and a later push refreshes a changed draft's task unless a reviewer annotated it."""
    catalog = make_build(tmp_path / "b", n_images=3)
    build = str(catalog.build_dir)
    ids = [r.id for r in load_drafts(catalog)]
    n = len(ids)
    assert n > 8
    code, out, err = _cli(capsys, mimic, monkeypatch, "review", "push", "--build", build, "--batch-size", "4")
    assert code == 0, err
    assert f"{n} new" in out
    project = mimic.state.tasks[min(mimic.state.tasks)]["project"]
    assert mimic.state.requests.count(f"POST /api/projects/{project}/import") == -(-n // 4)
    by_task = [t["data"]["draft_id"] for _, t in sorted(mimic.state.tasks.items())]
    assert by_task == ids  # imported in id order, one task each

    changed, reviewed = ids[1], ids[n - 2]
    with catalog.transaction():
        for d in (changed, reviewed):
            catalog.conn.execute("UPDATE drafts SET record_json=json_set(record_json, '$.question', ?) WHERE id=?",
                                 (f"Is {d} changed?", d))
    tasks = {d: t for d, (t, _) in catalog.review_tasks("review").items()}
    mimic.state.tasks[tasks[reviewed]]["annotations"] = [{"id": 1}]
    before = {t: json.dumps(mimic.state.tasks[t]["data"]) for t in tasks.values()}
    mimic.state.requests.clear()
    code, out, err = _cli(capsys, mimic, monkeypatch, "review", "push", "--build", build, "--batch-size", "4")
    assert code == 0, err
    assert f"0 new, 1 updated, {n - 2} unchanged, 1 kept (already reviewed)" in out
    patched = [r for r in mimic.state.requests if r.startswith("PATCH /api/tasks")]
    assert patched == [f"PATCH /api/tasks/{tasks[changed]}"]
    assert f"Is {changed} changed?" in json.dumps(mimic.state.tasks[tasks[changed]]["data"])
    rewritten = {t for t in tasks.values() if json.dumps(mimic.state.tasks[t]["data"]) != before[t]}
    assert rewritten == {tasks[changed]}
    assert not any("import" in r for r in mimic.state.requests)


# ---------------------------------------------------------------- pull in constant memory (issue 27)


def test_pull_streams_slices_pages_and_a_whole_export_batch_by_batch(tmp_path, mimic, capsys, monkeypatch):
    """An interrupted push leaves tasks the catalog never recorded: the pull parses the whole export as a
    stream, a few tasks at a time, and stores what each batch brings (a failure keeps the earlier
    batches, not the marks). The push that recovers the tasks records them batch by batch and deletes an
    unannotated twin; later pulls export the recorded tasks in slices, then only those saved since."""
    from vgmed_build.review import api

    monkeypatch.setattr(api, "EXPORT_BATCH", 2)
    monkeypatch.setattr(api, "EXPORT_SLICE", 2)
    monkeypatch.setattr(api, "LIST_PAGE", 3)
    catalog = make_build(tmp_path / "b", n_images=2)
    build = str(catalog.build_dir)
    monkeypatch.setenv("VGMED_REVIEW_FAIL_AFTER_IMPORTS", "1")
    with pytest.raises(RuntimeError, match="simulated crash after import request 1"):
        push(catalog, ServerInfo(mimic.url, api_key="mimic-token-0123456789", document_root=catalog.build_dir),
             batch_size=8, progress=False)
    monkeypatch.delenv("VGMED_REVIEW_FAIL_AFTER_IMPORTS")
    tasks = sorted(mimic.state.tasks.values(), key=lambda t: t["id"])
    assert len(tasks) == 8 and catalog.review_tasks("review") == {}
    for t in tasks:
        t["annotations"] = [_annotation(1000 + t["id"], 7, [VERDICT_ACCEPT])]
    twin = {**json.loads(json.dumps(tasks[3])), "id": mimic.state.new_id(), "annotations": []}
    mimic.state.tasks[twin["id"]] = twin

    # The whole export breaks off after the first batches arrived: those are kept, the mark is not set.
    mimic.fail("export", "truncated", times=1)
    code, _, err = _cli(capsys, mimic, monkeypatch, "review", "pull", "--build", build)
    assert code == 2 and "the answer is not valid JSON (cut short?)" in err, err
    kept = len(list(catalog.review_event_records()))
    assert 0 < kept < 8 and catalog.get_state("review.pull_since.review") is None
    code, out, err = _cli(capsys, mimic, monkeypatch, "review", "pull", "--build", build)
    assert code == 0 and f"pulled {8 - kept} new review event(s)" in out, (out, err)
    assert sorted(r["task_id"] for _, _, r in catalog.review_event_records()) == [t["id"] for t in tasks]

    code, out, err = _cli(capsys, mimic, monkeypatch, "review", "push", "--build", build, "--batch-size", "8")
    assert code == 0 and "8 recovered" in out, (out, err)
    assert twin["id"] not in mimic.state.tasks  # the unannotated twin is gone, its draft's first task recorded
    recorded = {t: d for d, (t, _) in catalog.review_tasks("review").items()}
    assert {t["id"]: t["data"]["draft_id"] for t in tasks}.items() <= recorded.items()
    assert len(recorded) == len(load_drafts(catalog))

    # Every task recorded: slices of 2 ids from pages of 3, then only the tasks saved since the mark.
    monkeypatch.setattr(pull_module, "SINCE_MARGIN", timedelta(0))  # 5 min would count every task here
    time.sleep(1.1)  # the server's Date header counts whole seconds: the mark falls after the push
    mimic.state.requests.clear()
    code, out, _ = _cli(capsys, mimic, monkeypatch, "review", "pull", "--build", build)
    assert code == 0 and "pulled 0 new review event(s)" in out
    project = tasks[0]["project"]
    assert len(recorded) == 12  # 4 pages of 3 ids, each exported in slices of 2 and 1
    assert mimic.state.requests.count(f"GET /api/projects/{project}/export") == 4 * 2
    latest = "2099-01-01T00:00:00.000000Z"  # after any mark
    revised = [tasks[0], tasks[5]]
    for t in revised:
        t["annotations"].append(_annotation(2000 + t["id"], 8, [VERDICT_ACCEPT], when=latest))
    mimic.state.requests.clear()
    code, out, _ = _cli(capsys, mimic, monkeypatch, "review", "pull", "--build", build)
    assert code == 0 and "pulled 2 new review event(s)" in out, out
    assert mimic.state.requests.count(f"GET /api/projects/{project}/export") == 1  # both ids in one slice
    assert mimic.state.requests.count("GET /api/tasks") == 3  # counted, then listed twice: checked, exported
    assert len(list(catalog.review_event_records())) == 10


def test_the_sdk_client_leaves_no_response_to_the_garbage_collector(tmp_path, mimic):
    """httpx keeps each response (and its body) in a reference cycle; the review stage's client does not,
    so a pull's memory does not grow with its requests while the collector waits."""
    import gc

    from vgmed_build.review.api import request
    from vgmed_build.review.server import connect

    client = connect(ServerInfo(mimic.url, api_key="mimic-token-0123456789"))
    request(client, "GET", "api/organizations/")
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(5):
            assert request(client, "GET", "api/organizations/")[0]["id"] == 1
            client.users.whoami()
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage if type(o).__module__.startswith(("httpx", "httpcore"))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []
