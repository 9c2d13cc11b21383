"""Benchmark `review push` and `review pull` against a real local Label Studio.

Targets (issue 4): push 5,000 drafts in < 15 s and pull 5,000 reviewed tasks in < 15 s.
Baselines in the same run: one task per import request (on --baseline-n tasks, extrapolated) and
listing the reviewed tasks through the paged task API instead of one JSON export.

    .venv/bin/python benchmarks/bench_review.py                 # starts its own server in a temp dir
    LABEL_STUDIO_API_KEY=... .venv/bin/python benchmarks/bench_review.py --url http://127.0.0.1:8080 \
        --document-root /   # an existing server on this machine
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
from PIL import Image

from vgmed_build.catalog import Catalog, now_iso, open_catalog
from vgmed_build.identifiers import stable_id
from vgmed_build.review import api
from vgmed_build.review import pull as pull_module
from vgmed_build.review.convert import draft_prediction
from vgmed_build.review.pull import pull
from vgmed_build.review.push import push
from vgmed_build.review.server import ServerInfo, connect, resolve_server, start_server, stop_server
from vgmed_build.review.state import REVIEW, load_drafts
from vgmed_build.review.tasks import content_hash, label_config, task_payload

REGIONS_PER_IMAGE = 10
Q_TYPES = ("localization", "position")


def make_build(root: Path, n_drafts: int) -> Catalog:
    """A synthetic build: small real PNGs, 10 regions per image, 2 drafts per region."""
    catalog = open_catalog(root)
    rng = np.random.default_rng(0)
    per_image = REGIONS_PER_IMAGE * len(Q_TYPES)
    c = catalog.conn  # raw SQL of the synthetic build, inside the catalog's transaction
    with catalog.transaction():
        c.execute("INSERT INTO sources VALUES ('bench', 'images2d', '{}')")
        for i in range((n_drafts + per_image - 1) // per_image):
            item, rel, w, h = f"img{i}", f"images/bench/img{i}.png", 96, 80
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).save(root / rel)
            image_id = stable_id(item)
            c.execute(
                "INSERT INTO items VALUES ('bench', ?, 'f', 'done', 1, ?, ?)", (item, REGIONS_PER_IMAGE, now_iso())
            )
            c.execute("INSERT INTO images VALUES (?,?,?,?,?,?,?,?)", (image_id, "bench", item, rel, w, h, "0", "{}"))
            for k in range(REGIONS_PER_IMAGE):
                region_id, label = stable_id(image_id, k), f"structure{k}"
                c.execute("INSERT INTO regions VALUES (?,?,?,?,?,?)", (region_id, image_id, "bench", label, "CT", "{}"))
                for q_type in Q_TYPES:
                    draft_id = stable_id(region_id, q_type, 0)
                    rec = {
                        "id": draft_id,
                        "region_id": region_id,
                        "q_type": q_type,
                        "question": f"Where is the {label}?",
                        "answer": "yes",
                        "image": rel,
                        "width": w,
                        "height": h,
                        "boxes": [[k, k, 40 + k, 30 + k]],
                        "label": label,
                        "display_name": label,
                        "modality": "CT",
                        "body_part": "abdomen",
                        "side": "unknown",
                        "status": "ok",
                        "reason": None,
                    }
                    c.execute(
                        "INSERT INTO drafts VALUES (?,?,?,?,?,?,?)",
                        (draft_id, region_id, q_type, "ok", None, json.dumps(rec), now_iso()),
                    )
    return catalog


def verdict_result(row, verdict: str) -> list[dict]:
    """A reviewer's annotation result: the pre-filled draft plus ``verdict``."""
    d = row.draft
    return draft_prediction(d["question"], d["answer"], d["boxes"], row.width, row.height) + [
        {"from_name": "verdict", "to_name": "image", "type": "choices", "value": {"choices": [verdict]}}
    ]


def reviewed_project(catalog: Catalog, server: ServerInfo, client, batch: int = 1000) -> int:
    """Import every draft as a task that already carries one accepting annotation (setup, not timed),
    and record project and tasks in the catalog as `push` would, so `pull` reads them."""
    me = client.users.whoami().id
    project_id = client.projects.create(title="bench pull", label_config=label_config()).id
    rows = load_drafts(catalog)
    tasks = []
    for row in rows:
        d = row.draft
        t = task_payload(row, "/data/local-files/?d=" + d["image"])
        t["annotations"] = [{"result": verdict_result(row, "accept"), "completed_by": me}]
        tasks.append(t)
    task_ids: list[int] = []
    for start in range(0, len(tasks), batch):
        answer = client.projects.import_tasks(id=project_id, request=tasks[start : start + batch], return_task_ids=True)
        task_ids += answer.task_ids
    c = catalog.conn  # raw SQL of the synthetic build, inside the catalog's transaction
    with catalog.transaction():
        c.executemany(
            "INSERT INTO review_tasks VALUES (?, ?, ?, ?, ?, ?)",
            [
                (row.id, REVIEW, project_id, tid, content_hash(row), now_iso())
                for row, tid in zip(rows, task_ids, strict=True)
            ],
        )
    state = {"server": server.identity, "url": server.url, "id": project_id, "reviewers_per_item": 1}
    with catalog.transaction() as tx:
        tx.set_state(f"review.project.{REVIEW}", json.dumps(state))
    return project_id


def main(argv: list[str] | None = None) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # figures appear as they are measured
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=5000, help="drafts to push and reviewed tasks to pull")
    p.add_argument("--baseline-n", type=int, default=200, help="tasks for the one-task-per-request baseline")
    p.add_argument("--url", default=None, help="existing server (token from $LABEL_STUDIO_API_KEY); default: start one")
    p.add_argument("--document-root", default=None, help="with --url: the server's local-files document root")
    p.add_argument("--workers", type=int, default=None, help="server processes of the started server (default: 2/core)")
    p.add_argument("--concurrency", type=int, default=api.EXPORT_CONCURRENCY, help="pull's export requests in flight")
    p.add_argument("--revised", type=int, default=50, help="tasks that get a new annotation before the later pull")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="vgmed-bench-review-"))
    own = args.url is None
    try:
        if own:
            t0 = time.perf_counter()
            server = start_server(work / "server", document_root=work, workers=args.workers)
            workers = json.loads((work / "server" / "labelstudio" / "server.json").read_text())["workers"]
            print(f"started Label Studio at {server.url} ({workers} workers) in {time.perf_counter() - t0:.1f} s")
        else:
            server = resolve_server(None, args.url, document_root=args.document_root)
        client = connect(server)

        catalog = make_build(work / "build", args.n)
        n = len(load_drafts(catalog))
        t0 = time.perf_counter()
        report = push(catalog, server, progress=False)
        t_push = time.perf_counter() - t0
        assert report.created == n, report
        print(
            f"push (batched, {report.images} images): {n} drafts in {t_push:.2f} s = {n / t_push:.0f} tasks/s "
            f"(target < 15 s: {'met' if t_push < 15 else 'MISSED'})"
        )

        rows = load_drafts(catalog)[: args.baseline_n]
        base_id = client.projects.create(
            title="bench baseline",
            label_config=label_config(),
        ).id
        t0 = time.perf_counter()
        for row in rows:
            client.projects.import_tasks(id=base_id, request=[task_payload(row, "/data/local-files/?d=x.png")])
        t_one = time.perf_counter() - t0
        rate = len(rows) / t_one
        print(
            f"baseline, one task per request: {len(rows)} tasks in {t_one:.2f} s = {rate:.1f} tasks/s "
            f"-> {n} would take {n / rate:.0f} s"
        )

        pull_cat = make_build(work / "build-pull", args.n)
        pid = reviewed_project(pull_cat, server, client)

        def timed_pull(concurrency: int) -> float:
            pull_cat.conn.execute("DELETE FROM review_events")  # every run pulls all n events afresh
            pull_cat.conn.commit()
            t0 = time.perf_counter()
            got = pull(pull_cat, server, progress=False, concurrency=concurrency, full=True)
            elapsed = time.perf_counter() - t0
            assert got.new_events == n and not got.errors, got
            return elapsed

        t_pull = timed_pull(args.concurrency)
        print(
            f"pull (export slices of {api.EXPORT_SLICE} tasks, {args.concurrency} in flight): {n} reviewed tasks "
            f"in {t_pull:.2f} s = {n / t_pull:.0f} tasks/s (target < 15 s: {'met' if t_pull < 15 else 'MISSED'})"
        )
        t_serial = timed_pull(1)
        print(f"  the same pull with one slice in flight at a time: {t_serial:.2f} s")
        t0 = time.perf_counter()
        exported = len(api.export_tasks(client, pid))
        t_export = time.perf_counter() - t0
        print(f"baseline, the whole project in one export request (fetch only): {exported} tasks in {t_export:.2f} s")

        # Later pulls export only tasks saved since the previous pull. The 5-minute overlap would make
        # every task of this fresh project "recent": drop it, as for pulls more than 5 minutes apart.
        pull_module.SINCE_MARGIN = timedelta(0)
        time.sleep(1.1)  # the server's clock (HTTP Date) counts whole seconds
        pull(pull_cat, server, progress=False, full=True)  # sets the mark
        time.sleep(1.1)
        t0 = time.perf_counter()
        repeat = pull(pull_cat, server, progress=False)
        t_repeat = time.perf_counter() - t0
        assert repeat.new_events == 0, repeat
        revised = load_drafts(pull_cat)[: args.revised]
        ids = dict(pull_cat.conn.execute("SELECT draft_id, task_id FROM review_tasks"))
        for row in revised:
            client.annotations.create(id=ids[row.id], result=verdict_result(row, "edit"))
        t0 = time.perf_counter()
        later = pull(pull_cat, server, progress=False)
        t_later = time.perf_counter() - t0
        assert (later.new_events, later.known_events) == (len(revised), len(revised)), later
        print(
            f"a later pull with nothing new: {t_repeat:.2f} s; after {len(revised)} tasks got a new annotation: "
            f"{t_later:.2f} s (both export only the tasks saved since the previous pull)"
        )

        t0 = time.perf_counter()
        listed = sum(1 for _ in client.tasks.list(project=pid, fields="all", page_size=100))
        t_list = time.perf_counter() - t0
        assert listed == n
        print(
            f"baseline, paged task listing (100 per page): {listed} tasks in {t_list:.2f} s "
            f"(fetch only; the export path also parses and stores)"
        )
    finally:
        if own:
            stop_server(work / "server")
        shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
