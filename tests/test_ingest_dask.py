"""`ingest --dask-scheduler`: a real Dask scheduler and two worker processes on this machine render a
synthetic source, 8 items a task, while this process writes the catalog; one worker is SIGKILLed
mid-run. The build (regions, PNG bytes) and its release equal those of a `--workers 1` build of the
same source. An item that kills every worker it reaches is an error of its own, not of its batch."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from synthetic_source import make_images2d

from vgmed_build.catalog import CATALOG_NAME
from vgmed_build.cli import main

pytest.importorskip("distributed")
pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
CREATED = "2026-01-01T00:00:00Z"


def _start(*args: str, log: Path) -> subprocess.Popen:
    with open(log, "wb") as fh:
        return subprocess.Popen([str(BIN / "dask"), *args], stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(check, what: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _stored_items(build: Path) -> int:
    if not (build / CATALOG_NAME).exists():
        return 0
    try:
        with sqlite3.connect(build / CATALOG_NAME) as conn:
            return conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def _build_and_release(build: Path, source: Path, *flags: str) -> tuple[dict, dict]:
    """The build's content (regions, images by hash) and the release's files by hash."""
    args = ["--build", str(build), "--no-progress"]
    assert main(["generate", *args]) == 0
    out = build.parent / f"{build.name}-release"
    assert main(["release", *args, "--out", str(out), "--include-unreviewed", "--created", CREATED]) == 0
    regions = build.parent / f"{build.name}-regions.jsonl"
    assert main(["regions", *args, "--out", str(regions)]) == 0
    images = {p.relative_to(build).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
              for p in (build / "images").rglob("*.png")}
    released = {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in out.rglob("*") if p.is_file()}
    return {"regions": regions.read_text(), "images": images}, released


def test_dask_cluster_with_a_worker_killed_builds_what_one_process_builds(tmp_path):
    source = make_images2d(tmp_path / "photos", 120)
    src = ["--source", f"images2d:{source}", "--modality", "Dermoscopy"]
    assert main(["ingest", "--build", str(tmp_path / "one"), "--no-progress", *src]) == 0
    one = _build_and_release(tmp_path / "one", source)

    scheduler_file = tmp_path / "scheduler.json"
    procs = [_start("scheduler", "--scheduler-file", str(scheduler_file), "--port", "0", "--no-dashboard",
                    log=tmp_path / "scheduler.log")]
    try:
        _wait_for(scheduler_file.exists, "the scheduler")
        address = json.loads(scheduler_file.read_text())["address"]
        for i in range(2):  # no nanny: a killed worker stays dead, its task goes to the other one
            procs.append(_start("worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1", "--no-nanny",
                                "--no-dashboard", "--name", f"w{i}", log=tmp_path / f"worker{i}.log"))
        for i in range(2):
            _wait_for(lambda i=i: "Registered to" in (tmp_path / f"worker{i}.log").read_text(), f"worker {i}")
        build = tmp_path / "dask"
        ingest = subprocess.Popen(
            [str(BIN / "vgmed-build"), "ingest", "--build", str(build), "--no-progress", *src,
             "--dask-scheduler", address, "--dask-batch", "8"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        _wait_for(lambda: _stored_items(build) >= 8 or ingest.poll() is not None, "the first batch")
        assert ingest.poll() is None, "ingest finished before a worker could be killed"
        procs[1].send_signal(signal.SIGKILL)  # worker 0, mid-run
        out, err = ingest.communicate(timeout=300)
        assert ingest.returncode == 0, err
        assert "120 items: 120 ingested, 0 unchanged, 0 skipped, 0 errors" in out
        assert procs[1].wait() == -signal.SIGKILL and procs[2].poll() is None  # one worker died, one went on
        assert _build_and_release(build, source) == one
        # A rerun on the cluster (one worker left, batches sized by timing) finds every item unchanged and
        # duplicates nothing.
        rerun = subprocess.run([str(BIN / "vgmed-build"), "ingest", "--build", str(build), "--no-progress", *src,
                                "--dask-scheduler", address], capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0 and "120 items: 0 ingested, 120 unchanged" in rerun.stdout
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)


def test_an_unreachable_scheduler_is_a_clear_error_before_anything_is_written(tmp_path, capsys):
    source = make_images2d(tmp_path / "photos", 2)
    code = main(["ingest", "--build", str(tmp_path / "b"), "--source", f"images2d:{source}", "--modality",
                 "Dermoscopy", "--dask-scheduler", "tcp://127.0.0.1:9", "--no-progress"])
    assert code == 2
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in capsys.readouterr().err
    assert not (tmp_path / "b" / CATALOG_NAME).exists()
    code = main(["ingest", "--build", str(tmp_path / "b"), "--source", f"images2d:{source}", "--modality",
                 "Dermoscopy", "--dask-batch", "4", "--no-progress"])
    assert code == 2 and "--dask-batch takes a count of 0 (chosen by timing) or more, with --dask-scheduler" \
        in capsys.readouterr().err
    assert not (tmp_path / "b" / CATALOG_NAME).exists()


def _kill_on_three(item: int) -> int:
    if item == 3:
        os._exit(9)  # what a crash inside a C library does to the worker holding the item
    return item * 10


def test_an_item_that_kills_its_workers_is_an_error_of_its_own_not_of_its_batch():
    from dask import config
    from dask.distributed import Client, LocalCluster

    from vgmed_build.ingest.distributed import WorkerLost, run_on_dask

    got: list[tuple[int, object]] = []
    with config.set({"distributed.scheduler.allowed-failures": 0}), \
            LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        run_on_dask(range(8), _kill_on_three, client, lambda item, result: got.append((item, result)), batch=4)
    assert sorted(item for item, _ in got) == list(range(8))  # each item once
    results = dict(got)
    assert isinstance(results.pop(3), WorkerLost)
    assert results == {i: i * 10 for i in range(8) if i != 3}  # its batch mates rendered all the same
