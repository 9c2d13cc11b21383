"""Push, review and pull against a real Label Studio server (started once per session)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import timedelta

import httpx
import pytest
from labelstudio_fixture import add_reviewer, drafts_of, dump, make_build, secrets_absent

from vgmed_build.review import api
from vgmed_build.review import pull as pull_module
from vgmed_build.review.convert import boxes_to_results, draft_prediction
from vgmed_build.review.decision import decide
from vgmed_build.review.pull import pull, reviewer_id
from vgmed_build.review.push import FAIL_AFTER_ENV, push
from vgmed_build.review.server import LabelStudioError, ServerInfo, connect, credentials
from vgmed_build.review.state import project_state
from vgmed_build.review.status import summary

pytestmark = pytest.mark.labelstudio


@pytest.fixture(scope="module")
def second_reviewer(labelstudio):
    return add_reviewer(labelstudio, "second.reviewer@vgmed.local")


def server_tasks(server: ServerInfo, project_id: int) -> list[dict]:
    return api.export_tasks(connect(server), project_id, all_tasks=True)


def annotate(client, task_id: int, verdict: str, draft: dict, question=None, answer=None, boxes=None, comment=None):
    """Submit what a reviewer would: the pre-filled result, maybe edited, plus the verdict."""
    result = draft_prediction(
        question or draft["question"],
        answer or draft["answer"],
        draft["boxes"],
        draft["width"],
        draft["height"],
    )
    if boxes is not None:
        result = [r for r in result if r["from_name"] != "bbox"] + boxes
    result.append({"from_name": "verdict", "to_name": "image", "type": "choices", "value": {"choices": [verdict]}})
    if comment:
        result.append({"from_name": "comment", "to_name": "image", "type": "textarea", "value": {"text": [comment]}})
    return client.annotations.create(id=task_id, result=result)


def task_ids(catalog, project="review") -> dict[str, int]:
    return dict(catalog.conn.execute("SELECT draft_id, task_id FROM review_tasks WHERE project=?", (project,)))


def test_push_review_pull_two_reviewers(labelstudio, second_reviewer, tmp_path):
    catalog = make_build(tmp_path / "build")
    drafts = drafts_of(catalog)
    report = push(catalog, labelstudio, reviewers_per_item=2, progress=False)
    assert (report.created, report.images) == (len(drafts), "local")

    # The server holds one task per draft, with the draft pre-filled and the image served from disk.
    tasks = server_tasks(labelstudio, report.project_id)
    assert sorted(t["data"]["draft_id"] for t in tasks) == sorted(drafts)
    ids = task_ids(catalog)
    assert {t["data"]["draft_id"]: t["id"] for t in tasks} == ids
    client = connect(labelstudio)
    project = client.projects.get(report.project_id)
    assert (project.maximum_annotations, project.overlap_cohort_percentage) == (2, 100)
    some = tasks[0]
    d0 = drafts[some["data"]["draft_id"]]
    pred = client.predictions.list(task=some["id"])[0].result
    assert {r["from_name"] for r in pred} == {"bbox", "question", "answer"}
    assert next(r for r in pred if r["from_name"] == "question")["value"]["text"] == [d0["question"]]
    assert some["data"]["modality"] == "CT" and d0["label"] in some["data"]["context"]
    png = httpx.get(
        labelstudio.url + some["data"]["image"],
        headers={"Authorization": f"Token {labelstudio.api_key}"},
        trust_env=False,
    )
    assert png.status_code == 200 and png.content == (catalog.build_dir / d0["image"]).read_bytes()

    # Two reviewers: accept, edit the text and the box, reject, disagree.
    a, b = client, second_reviewer.client()
    order = sorted(drafts)
    acc, edit, rej, split = (drafts[k] for k in order[:4])
    new_box = boxes_to_results([[3, 4, 60, 50]], edit["width"], edit["height"])
    new_box[0]["value"]["width"] += 500.0  # dragged past the right edge: clamped on pull
    annotate(a, ids[acc["id"]], "accept", acc)
    annotate(b, ids[acc["id"]], "accept", acc)
    annotate(
        a,
        ids[edit["id"]],
        "edit",
        edit,
        question="Where is the liver on this axial CT slice?",
        boxes=new_box,
        comment="box missed the lower edge",
    )
    annotate(b, ids[edit["id"]], "accept", edit)
    annotate(a, ids[rej["id"]], "reject", rej, comment="not visible on this slice")
    annotate(b, ids[rej["id"]], "reject", rej)
    annotate(a, ids[split["id"]], "accept", split)
    annotate(b, ids[split["id"]], "reject", split, comment="wrong side")

    before = dump(catalog)
    pulled = pull(catalog, labelstudio, progress=False)
    assert (pulled.new_events, pulled.known_events, pulled.errors) == (8, 0, [])
    rows = catalog.conn.execute("SELECT draft_id, reviewer, verdict, record_json FROM review_events").fetchall()
    assert len(rows) == 8
    ra = reviewer_id(labelstudio.identity, a.users.whoami().id)
    rb = reviewer_id(labelstudio.identity, second_reviewer.user_id)
    assert ra != rb and {r[1] for r in rows} == {ra, rb}
    edited = next(json.loads(r[3]) for r in rows if r[0] == edit["id"] and r[1] == ra)
    assert edited["verdict"] == "edit" and edited["edited"]
    assert edited["question"] == "Where is the liver on this axial CT slice?"
    assert edited["boxes"] == [[3, 4, edit["width"], 50]]  # clamped to the image width
    assert edited["comment"] == "box missed the lower edge"
    assert edited["answer"] == edit["answer"] and edited["created_at"] and edited["updated_at"]

    decisions = decide(catalog, "majority")
    assert decisions[acc["id"]].status == "accepted" and not decisions[acc["id"]].edited
    assert decisions[edit["id"]].status == "accepted" and decisions[edit["id"]].edited
    assert decisions[edit["id"]].boxes == [[3, 4, edit["width"], 50]]
    assert decisions[rej["id"]].status == "rejected"
    assert decisions[split["id"]].status == "disputed" and decisions[split["id"]].agreement == 0.5
    assert decide(catalog, "adjudicator", rb)[split["id"]].status == "rejected"
    assert set(decisions) == {acc["id"], edit["id"], rej["id"], split["id"]}  # unreviewed drafts absent

    s = summary(catalog, "majority")
    # Every draft nobody has reviewed yet is pending too.
    assert s["decisions"] == {"accepted": 2, "rejected": 1, "unusable": 0, "disputed": 1, "pending": len(drafts) - 4}
    assert s["unreviewed_drafts"] == len(drafts) - 4
    assert s["agreement_accept_reject"]["percent_agreement"] == pytest.approx(3 / 4)
    assert s["agreement_verdict"]["percent_agreement"] == pytest.approx(2 / 4)  # edit vs accept differs
    assert [d["draft_id"] for d in s["disputed"]] == [split["id"]]
    # Cohen on accept/reject: a = A A R A, b = A A R R -> po 3/4, pe = 3/4*2/4 + 1/4*2/4 = 1/2 -> 0.5
    assert s["agreement_accept_reject"]["cohen"][0]["kappa"] == pytest.approx(0.5)

    # Nothing names a person or holds a secret in the catalog.
    catalog.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert secrets_absent(catalog.build_dir / "catalog.sqlite", labelstudio.api_key, second_reviewer.server.api_key)

    # Pulling again adds nothing; a revised annotation adds an event and keeps the old one.
    assert pull(catalog, labelstudio, progress=False).new_events == 0
    ann = next(x for x in server_tasks(labelstudio, report.project_id) if x["id"] == ids[split["id"]])["annotations"]
    mine = next(x for x in ann if x["completed_by"] == second_reviewer.user_id)
    second_reviewer.client().annotations.update(
        mine["id"],
        result=[r if r["from_name"] != "verdict" else {**r, "value": {"choices": ["accept"]}} for r in mine["result"]],
    )
    again = pull(catalog, labelstudio, progress=False)
    # The export shows each annotation's latest revision: the revised one is new, 7 others known.
    assert (again.new_events, again.known_events) == (1, 7)
    assert (
        catalog.conn.execute("SELECT COUNT(*) FROM review_events WHERE annotation_id=?", (mine["id"],)).fetchone()[0]
        == 2
    )
    assert decide(catalog, "unanimous")[split["id"]].status == "accepted"
    assert before["drafts"] == dump(catalog)["drafts"]


def _strict_json(text: str):
    """json.loads that refuses NaN / Infinity (Python's own accepts them; JSON does not)."""

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_bare_accept_keeps_the_draft_and_unusable_edits_are_counted(labelstudio, tmp_path):
    catalog = make_build(tmp_path / "build", n_images=1)
    push(catalog, labelstudio, progress=False)
    ids, drafts = task_ids(catalog), drafts_of(catalog)
    bare, broken = sorted(ids)[:2]
    client = connect(labelstudio)
    verdict = {"from_name": "verdict", "to_name": "image", "type": "choices", "value": {"choices": ["accept"]}}
    client.annotations.create(id=ids[bare], result=[verdict])  # the verdict alone, no box, no text
    annotate(client, ids[broken], "edit", drafts[broken], question="Where is it?", boxes=[])  # box deleted
    build = str(catalog.build_dir)
    pulled = _cli(["review", "pull", "--build", build], labelstudio)
    assert pulled.returncode == 0, pulled.stderr
    assert "HTTP Request" not in pulled.stderr  # httpx request logs only with --verbose
    verbose = _cli(["--verbose", "review", "pull", "--build", build, "--full"], labelstudio)
    assert verbose.returncode == 0 and "HTTP Request" in verbose.stderr

    status = _cli(["review", "status", "--build", build, "--json"], labelstudio)
    s = _strict_json(status.stdout)  # one reviewer: kappa undefined -> null, not NaN
    assert s["agreement_verdict"]["fleiss"] is None
    assert s["decisions"] == {"accepted": 1, "rejected": 0, "unusable": 1, "disputed": 0, "pending": len(ids) - 2}
    assert [d["draft_id"] for d in s["unusable"]] == [broken]
    text = _cli(["review", "status", "--build", build], labelstudio).stdout
    assert "unusable: 1 (accepted, but the reviewed content has no box or no text)" in text and broken in text

    # What a release takes: the bare accept carries the drafted question, answer and box.
    d, decision = drafts[bare], decide(catalog, "majority")[bare]
    assert decision.status == "accepted" and not decision.edited
    assert (decision.question, decision.answer, decision.boxes) == (d["question"], d["answer"], d["boxes"])


def test_push_twice_updates_only_unreviewed_drafts(labelstudio, tmp_path):
    catalog = make_build(tmp_path / "build", n_images=1)
    first = push(catalog, labelstudio, progress=False)
    again = push(catalog, labelstudio, progress=False)
    assert (again.created, again.updated, again.unchanged) == (0, 0, first.created)
    ids = task_ids(catalog)
    reviewed, waiting = sorted(ids)[:2]
    d = drafts_of(catalog)
    annotate(connect(labelstudio), ids[reviewed], "accept", d[reviewed])
    c = catalog.conn  # raw SQL of the fixture, inside the catalog's transaction
    with catalog.transaction():
        for k in (reviewed, waiting):
            rec = {**d[k], "question": d[k]["question"] + " (reworded)"}
            c.execute("UPDATE drafts SET record_json=? WHERE id=?", (json.dumps(rec), k))
    third = push(catalog, labelstudio, progress=False)
    assert (third.created, third.updated, third.kept_reviewed) == (0, 1, 1)
    tasks = server_tasks(labelstudio, first.project_id)
    assert len(tasks) == len(d) == len({t["data"]["draft_id"] for t in tasks})  # never a duplicate
    client = connect(labelstudio)
    q = next(r for r in client.predictions.list(task=ids[waiting])[0].result if r["from_name"] == "question")
    assert q["value"]["text"] == [d[waiting]["question"] + " (reworded)"]
    q = next(r for r in client.predictions.list(task=ids[reviewed])[0].result if r["from_name"] == "question")
    assert q["value"]["text"] == [d[reviewed]["question"]]  # a reviewed task is left as the reviewer saw it

    # A stray twin of a known task (e.g. two pushes racing) is removed by the next push.
    twin = {"data": {**tasks[0]["data"]}}
    client.projects.import_tasks(id=first.project_id, request=[twin])
    assert len(server_tasks(labelstudio, first.project_id)) == len(d) + 1
    fourth = push(catalog, labelstudio, progress=False)
    assert (fourth.created, fourth.adopted) == (0, 0)
    assert sorted(t["id"] for t in server_tasks(labelstudio, first.project_id)) == sorted(ids.values())


def _cli(args: list[str], server: ServerInfo, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "LABEL_STUDIO_URL": server.url,
        "LABEL_STUDIO_API_KEY": server.api_key,
        **(extra_env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "vgmed_build.cli", *args], env=env, capture_output=True, text=True, timeout=600
    )


def test_push_resumes_after_a_crash_without_duplicates(labelstudio, tmp_path):
    catalog = make_build(tmp_path / "build", n_images=2)  # 12 drafts
    build = str(catalog.build_dir)
    args = [
        "review",
        "push",
        "--build",
        build,
        "--batch-size",
        "5",
        "--no-progress",
        "--document-root",
        str(labelstudio.document_root),
    ]
    # Crash right after the 2nd import request: the server got 10 tasks, the catalog recorded 5.
    crashed = _cli(args, labelstudio, {FAIL_AFTER_ENV: "2"})
    assert crashed.returncode != 0 and "simulated crash" in crashed.stderr
    assert len(task_ids(catalog)) == 5
    project_id = project_state(catalog, "review")["id"]
    on_server = server_tasks(labelstudio, project_id)
    assert len(on_server) == 10
    # A reviewer already answered a task the catalog never recorded: a pull before the resume sees it.
    orphan = next(t for t in on_server if t["id"] not in task_ids(catalog).values())
    annotate(connect(labelstudio), orphan["id"], "accept", drafts_of(catalog)[orphan["data"]["draft_id"]])
    early = pull(catalog, labelstudio, progress=False)
    assert (early.new_events, early.errors) == (1, [])
    resumed = _cli(args, labelstudio)
    assert resumed.returncode == 0, resumed.stderr
    assert "2 new" in resumed.stdout and "5 recovered" in resumed.stdout and "images: local" in resumed.stdout
    tasks = server_tasks(labelstudio, project_id)
    assert len(tasks) == 12 and len({t["data"]["draft_id"] for t in tasks}) == 12
    assert task_ids(catalog) == {t["data"]["draft_id"]: t["id"] for t in tasks}
    assert labelstudio.api_key not in crashed.stderr + resumed.stdout + resumed.stderr
    assert pull(catalog, labelstudio, progress=False).known_events == 1  # now by slices of recorded tasks


def test_push_killed_between_creating_and_recording_the_project_adopts_it(labelstudio, tmp_path, monkeypatch):
    """Issue 12.8: the project exists on the server but not in the catalog: the next push adopts it."""
    from vgmed_build.catalog import Transaction

    catalog = make_build(tmp_path / "build", n_images=1)
    title = f"kill test {tmp_path.name}"[:50]
    record = Transaction.set_state

    def killed(self, key, value):
        if key == "review.project.review":
            raise KeyboardInterrupt("killed after the project was created")
        return record(self, key, value)

    monkeypatch.setattr(Transaction, "set_state", killed)
    with pytest.raises(KeyboardInterrupt):
        push(catalog, labelstudio, title=title, progress=False)
    monkeypatch.undo()
    assert project_state(catalog, "review") is None
    client = connect(labelstudio)
    (orphan,) = [p for p in client.projects.list(title=title) if p.title == title]
    # an unrelated project with the same title (another build's) is never adopted
    other = client.projects.create(title=title, description="vgmed build 0000: review project")
    report = push(catalog, labelstudio, title=title, progress=False)
    assert report.project_id == orphan.id and report.created == len(drafts_of(catalog))
    assert sorted(p.id for p in client.projects.list(title=title) if p.title == title) == sorted([orphan.id, other.id])
    assert project_state(catalog, "review")["id"] == orphan.id
    assert str(tmp_path) not in (client.projects.get(orphan.id).description or "")


def test_push_deletes_the_tasks_of_withdrawn_source_items(labelstudio, tmp_path):
    """Issue 12.4: an item withdrawn by ingest leaves Label Studio on the next push."""
    catalog = make_build(tmp_path / "build", n_images=2)
    first = push(catalog, labelstudio, progress=False)
    gone = catalog.withdraw_item("ct", "series0")
    assert gone.tasks == first.created // 2
    again = push(catalog, labelstudio, progress=False)
    assert again.withdrawn == gone.tasks and again.created == 0
    tasks = server_tasks(labelstudio, first.project_id)
    assert len(tasks) == first.created - gone.tasks
    assert {t["data"]["draft_id"] for t in tasks} == set(task_ids(catalog))
    assert catalog.withdrawn_tasks() == [] and push(catalog, labelstudio, progress=False).withdrawn == 0


def test_pull_by_parallel_slices_gets_every_annotation_once(labelstudio, tmp_path, monkeypatch):
    catalog = make_build(tmp_path / "build", n_images=2)
    drafts = drafts_of(catalog)
    report = push(catalog, labelstudio, progress=False)
    client = connect(labelstudio)
    ids = task_ids(catalog)
    reviewed = sorted(drafts)[1:]  # one task stays unreviewed: the export leaves it out
    created = {annotate(client, ids[d], "accept", drafts[d]).id for d in reviewed}
    with pytest.raises(LabelStudioError, match="HTTP 404"):  # a failing slice fails the whole export
        list(api.export_annotated(client, 10**9, [sorted(ids.values())], concurrency=3))
    monkeypatch.setattr(api, "EXPORT_SLICE", 2)  # many slices, several in flight, arriving in any order
    sliced = pull(catalog, labelstudio, progress=False, concurrency=3)
    assert (sliced.new_events, sliced.errors) == (len(reviewed), [])
    rows = catalog.conn.execute("SELECT draft_id, annotation_id FROM review_events").fetchall()
    assert sorted(d for d, _ in rows) == reviewed and {a for _, a in rows} == created
    whole = [a["id"] for t in api.export_tasks(client, report.project_id) for a in t["annotations"]]
    assert sorted(whole) == sorted(created)

    # Later pulls export only the tasks saved since the previous one (on the server's clock).
    monkeypatch.setattr(pull_module, "SINCE_MARGIN", timedelta(0))  # default 5 min would re-export all here
    time.sleep(1.1)  # the server's Date header counts whole seconds: the mark falls after the annotations
    assert pull(catalog, labelstudio, progress=False).known_events == len(reviewed)  # sets the mark
    time.sleep(1.1)
    late = sorted(drafts)[0]
    annotate(client, ids[late], "reject", drafts[late])
    incremental = pull(catalog, labelstudio, progress=False)
    assert (incremental.new_events, incremental.known_events) == (1, 0)  # the other tasks were not exported
    assert pull(catalog, labelstudio, progress=False, full=True).known_events == len(drafts)


def test_server_down_and_wrong_token_leave_the_catalog_unchanged(labelstudio, tmp_path):
    catalog = make_build(tmp_path / "build", n_images=1)
    before = dump(catalog)
    with socket_closed_port() as port:
        down = ServerInfo(url=f"http://127.0.0.1:{port}", api_key=labelstudio.api_key, identity="down")
        with pytest.raises(LabelStudioError, match="does not answer"):
            push(catalog, down, progress=False)
        res = _cli(["review", "pull", "--build", str(catalog.build_dir)], down)
        assert res.returncode == 2 and "error: " in res.stderr and "does not answer" in res.stderr
    wrong = ServerInfo(url=labelstudio.url, api_key="0" * 40, identity=labelstudio.identity)
    with pytest.raises(LabelStudioError, match="refused the API token"):
        push(catalog, wrong, progress=False)
    res = _cli(["review", "push", "--build", str(catalog.build_dir)], wrong)
    assert res.returncode == 2 and "refused the API token" in res.stderr and "0" * 40 not in res.stderr
    assert dump(catalog) == before


class socket_closed_port:
    """A loopback port nothing listens on."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def __exit__(self, *exc) -> None:
        return None


def test_upload_mode_serves_uploaded_images(labelstudio, tmp_path):
    catalog = make_build(tmp_path / "build", n_images=2, q_types=("localization",))
    report = push(catalog, labelstudio, images="upload", batch_size=4, progress=False)
    assert report.images == "upload" and report.created == 6
    tasks = server_tasks(labelstudio, report.project_id)
    drafts = drafts_of(catalog)
    urls = {t["data"]["image"] for t in tasks}
    assert len(urls) == 2 and all(u.startswith("/data/upload/") for u in urls)  # each image uploaded once
    for t in tasks:
        png = httpx.get(
            labelstudio.url + t["data"]["image"],
            trust_env=False,
            headers={"Authorization": f"Token {labelstudio.api_key}"},
        )
        assert png.content == (catalog.build_dir / drafts[t["data"]["draft_id"]]["image"]).read_bytes()
    again = push(catalog, labelstudio, images="upload", progress=False)
    assert (again.created, again.unchanged) == (0, 6)


def test_adjudication_project_settles_disputes(labelstudio, second_reviewer, tmp_path):
    catalog = make_build(tmp_path / "build", n_images=1, q_types=("localization",))
    push(catalog, labelstudio, reviewers_per_item=2, progress=False)
    ids, d = task_ids(catalog), drafts_of(catalog)
    split, agreed = sorted(ids)[:2]
    annotate(connect(labelstudio), ids[split], "accept", d[split])
    annotate(second_reviewer.client(), ids[split], "reject", d[split], comment="that is the spleen")
    annotate(connect(labelstudio), ids[agreed], "accept", d[agreed])
    annotate(second_reviewer.client(), ids[agreed], "accept", d[agreed])
    pull(catalog, labelstudio, progress=False)
    res = _cli(
        [
            "review",
            "push",
            "--build",
            str(catalog.build_dir),
            "--adjudication",
            "--no-progress",
            "--document-root",
            str(labelstudio.document_root),
        ],
        labelstudio,
    )
    assert res.returncode == 0, res.stderr
    assert "adjudication project" in res.stdout and "1 new" in res.stdout
    adj = project_state(catalog, "adjudication")
    (task,) = server_tasks(labelstudio, adj["id"])
    assert task["data"]["draft_id"] == split and "that is the spleen" in task["data"]["context"]
    annotate(connect(labelstudio), task["id"], "reject", d[split])
    pull(catalog, labelstudio, progress=False)
    final = decide(catalog, "majority")
    assert final[split].status == "rejected" and final[split].adjudicated
    assert final[agreed].status == "accepted"
    status = _cli(["review", "status", "--build", str(catalog.build_dir), "--json"], labelstudio)
    assert json.loads(status.stdout)["decisions"]["disputed"] == 0
    text = _cli(["review", "status", "--build", str(catalog.build_dir)], labelstudio)
    pending = len(ids) - 2
    assert f"decisions (majority): accepted 1, rejected 1, unusable 0, disputed 0, pending {pending}" in text.stdout
    assert "Cohen's kappa r-" in text.stdout and "percent 0.500" in text.stdout


def test_labelstudio_cli_status_and_credentials(labelstudio, labelstudio_home):
    state = labelstudio_home / "labelstudio"
    assert labelstudio.identity.startswith("label-studio-org:")
    creds = state / "credentials.json"
    assert oct(creds.stat().st_mode & 0o777) == "0o600"
    res = _cli(["labelstudio", "status", "--build", str(state.parent)], labelstudio)
    assert res.returncode == 0 and labelstudio.url in res.stdout and "admin@vgmed.local" in res.stdout
    assert labelstudio.api_key not in res.stdout + res.stderr
    assert labelstudio.api_key not in (state / "server.log").read_text(errors="replace")
    invite = _cli(["labelstudio", "invite", "--build", str(state.parent)], labelstudio)
    assert invite.returncode == 0 and "/user/signup/?token=" in invite.stdout


def test_reviewers_web_app_loads_from_the_worker_processes(labelstudio, labelstudio_home, tmp_path):
    """The browser side clinicians use: log in, open a project's task list, every script and style loads."""
    catalog = make_build(tmp_path / "build", n_images=1)
    project_id = push(catalog, labelstudio, progress=False).project_id
    creds = credentials(labelstudio_home)
    with httpx.Client(base_url=labelstudio.url, follow_redirects=True, trust_env=False, timeout=60) as web:
        web.get("/user/login/")
        login = web.post(
            "/user/login/",
            data={
                "email": creds["username"],
                "password": creds["password"],
                "csrfmiddlewaretoken": web.cookies["csrftoken"],
            },
            headers={"Referer": labelstudio.url + "/user/login/"},
        )
        assert login.status_code == 200 and "/user/login" not in str(login.url)
        page = web.get(f"/projects/{project_id}/data")
        assert page.status_code == 200
        assets = re.findall(r"""(?:src|href)=["']?([^"' >]+\.(?:js|css)[^"' >]*)""", page.text)
        assert any("main.js" in a for a in assets), assets
        for asset in assets:
            got = web.get(asset)
            assert got.status_code == 200 and got.content, asset
