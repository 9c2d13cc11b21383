"""Peak memory of each stage does not grow with the number of items: every stage runs in-process under
tracemalloc on a synthetic source of N and of 8N items (64 px pictures, not enlarged: fast), after a
warm-up run that imports what the stages import. Arrow's buffers (Parquet and the Hub layout) are
outside tracemalloc: each run also makes a fresh ``pyarrow.proxy_memory_pool`` the default and adds its
peak. A stage that held every item (a listing, every record) would need ~8x at 8N; one that streams
needs the same."""

from __future__ import annotations

import gc
import itertools
import json
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
from judge_fixtures import plant_reviews, plant_verdicts
from synthetic_source import make_samed2d

from vgmed_build import api
from vgmed_build import export as export_module
from vgmed_build.catalog import open_catalog
from vgmed_build.export import FORMATS, export
from vgmed_build.review import api as review_api
from vgmed_build.review.triage import select_for_review

pytestmark = pytest.mark.slow

N = 100
REVIEW_BATCH = 32  # drafts per import request (500 by default: more than N)
VERDICT_ACCEPT = {"from_name": "verdict", "to_name": "image", "type": "choices", "value": {"choices": ["accept"]}}
GROWTH = 1.2
# Cyclic garbage (PIL image objects, datetimes) waits for the collector: the peak of two runs differs by
# up to ~150 KB whatever their size (the memory left after either run is ~50 KB). A stage that held
# 2 KB per item (the old listing) would add 1.4 MB at 8N.
SLACK = 256 * 1024


def _peak(run: Callable[[], object]) -> int:
    """Peak Python memory plus peak Arrow memory of ``run()``."""
    default = pa.default_memory_pool()
    arrow = pa.proxy_memory_pool(default)
    pa.set_memory_pool(arrow)
    gc.collect()  # an earlier stage's garbage, finalised inside this one, is not this stage's memory
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1] + arrow.max_memory()
    finally:
        tracemalloc.stop()
        pa.set_memory_pool(default)


def _pin_interned_strings(n: int = 200_000) -> list[str]:
    """Keep ``n`` interned strings alive and rebuild the interpreter's table of interned strings once more,
    so that no stage measured after this call rebuilds it.

    pathlib interns every path component (``sys.intern`` in 3.11's ``parse_parts``): each stage adds its
    items' file names to that process-wide dict, and a freed name leaves a deleted slot behind. When the
    free slots run out, CPython rebuilds the table (several MB at once, the old one still held) in
    whichever stage is running: an export or an ingest at 8N showed +4 to +15 MB, at a different stage
    as other cases were added, never at N (fewer names). A rebuild leaves as many free slots as live
    entries: with ``n`` pinned, every later stage together adds far fewer names (~3,000 per stage at 8N),
    so the table is never rebuilt while a stage is measured, and what a stage holds is measured as before.
    """
    pinned = [sys.intern(f"vgmed-memory-pin-{i}") for i in range(n)]
    tracemalloc.start()
    try:
        for i in itertools.count():  # fresh names, dropped at once, until the table is rebuilt (a big block)
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            sys.intern(f"vgmed-memory-fill-{i}")
            if tracemalloc.get_traced_memory()[1] - before > n:
                return pinned
    finally:
        tracemalloc.stop()


def _review_peaks(tmp: Path, n: int) -> dict[str, int]:
    """review push and pull of ~``n`` drafts (a build of six drafts per image) against the Label Studio
    mimic in a process of its own: its tasks are the server's memory, not the stage's."""
    from labelstudio_fixture import make_build

    from vgmed_build.review.pull import pull
    from vgmed_build.review.push import push
    from vgmed_build.review.server import ServerInfo, connect

    catalog = make_build(tmp / "review", n_images=max(1, n // 6))
    mimic = subprocess.Popen([sys.executable, str(Path(__file__).with_name("labelstudio_mimic.py"))],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        server = ServerInfo(mimic.stdout.readline().strip(), api_key="mimic-token-0123456789",
                            document_root=tmp)
        peaks = {
            "review push": _peak(lambda: push(catalog, server, progress=False, batch_size=REVIEW_BATCH)),
            # Every draft unchanged: checked a batch at a time against its recorded task.
            "review push rerun": _peak(lambda: push(catalog, server, progress=False, batch_size=REVIEW_BATCH)),
        }
        client = connect(server)
        for (task_id,) in catalog.conn.execute("SELECT task_id FROM review_tasks"):
            client.annotations.create(id=task_id, result=[VERDICT_ACCEPT], lead_time=2.0)
        peaks["review pull"] = _peak(lambda: pull(catalog, server, progress=False))
        # Every task exported again, every revision known.
        peaks["review pull rerun"] = _peak(lambda: pull(catalog, server, progress=False, full=True))
        assert len(catalog.conn.execute("SELECT id FROM review_events").fetchall()) == len(
            catalog.conn.execute("SELECT draft_id FROM review_tasks").fetchall())
        return peaks
    finally:
        catalog.close()
        mimic.stdin.close()
        mimic.wait(timeout=30)


def _stage_peaks(tmp: Path, n: int) -> dict[str, int]:
    source = make_samed2d(tmp / "SAMed2Dv1", n, size=64)
    build, release = tmp / "build", tmp / "release"
    spec = [f"samed2d:{source}"]
    opts = {"min_side_px": 0, "min_area_px": 4}
    return {
        "ingest": _peak(lambda: api.ingest(build, source=spec, options=opts, modality="Dermoscopy")),
        "ingest rerun": _peak(lambda: api.ingest(build, source=spec, options=opts, modality="Dermoscopy")),
        "generate": _peak(lambda: api.generate(build)),
        "generate rerun": _peak(lambda: api.generate(build)),  # every slot done: what is stored is read back
        "release": _peak(lambda: api.release(build, out=release, include_unreviewed=True,
                                             created="2026-01-01T00:00:00Z")),
        # Over the release just written: it is replaced only once its manifest proves it ours.
        "release rerun": _peak(lambda: api.release(build, out=release, include_unreviewed=True,
                                                   created="2026-01-01T00:00:00Z")),
        "validate": _peak(lambda: api.validate(release)),
        # Every format: records (and Arrow batches, Parquet row groups) streamed.
        **{f"export {fmt}": _peak(lambda fmt=fmt: export(release, FORMATS[fmt], tmp / fmt)) for fmt in FORMATS},
        "release sampled": _sampled_release_peak(build, tmp / "sampled"),
        "release majority all reviewed": _all_reviewed_release_peak(build, tmp / "majority"),
        **_review_peaks(tmp, n),
    }


AUDIT = 20  # reviewed drafts, the same at N and 8N: what people review is bounded by their time, not the build
FLAGGED = 10


def _sampled_release_peak(build: Path, out: Path) -> int:
    """`release --policy sampled` set up as tests/test_triage.py sets it up: every ok draft judged
    (FLAGGED flagged, and rejected by a clinician), an audit of AUDIT drafts recorded and accepted; the
    judge-passed rest (all but 30 of 350 or 2,800 drafts) goes in unreviewed."""
    with open_catalog(build) as cat:
        ids = sorted(cat.ok_draft_ids())
    plant_verdicts(build, {k: "wrong_target" if i < FLAGGED else "ok" for i, k in enumerate(ids)})
    with open_catalog(build) as cat:
        selection = select_for_review(cat, audit=AUDIT, target=None)
    plant_reviews(build, {**{k: ["accept"] for k in selection.audit}, **{k: ["reject"] for k in selection.flagged}})
    return _peak(lambda: api.release(build, out=out, policy="sampled", target_error_rate=0.5,
                                     created="2026-01-01T00:00:00Z"))


# Every draft not yet reviewed gets one of these (2 or 3 reviewers, agreeing or not, an edit among them).
PANELS = (["accept", "accept"], ["accept", "reject"], ["reject", "reject", "accept"], ["edit", "accept"],
          ["accept", "accept", "accept"])


def _all_reviewed_release_peak(build: Path, out: Path) -> int:
    """`release --policy majority` after `_sampled_release_peak`, every draft now reviewed (and every ok
    draft judged): the quality section holds a few bytes per decided draft, not its decision."""
    with open_catalog(build) as cat:
        reviewed = {draft["id"] for draft, _ in cat.reviewed_drafts()}
        ids = [k for k, _ in cat.draft_records() if k not in reviewed]
    plant_reviews(build, {k: PANELS[i % len(PANELS)] for i, k in enumerate(ids)})
    return _peak(lambda: api.release(build, out=out, policy="majority", created="2026-01-01T00:00:00Z"))


def _measure(tmp: Path) -> tuple[dict[str, int], dict[str, int]]:
    # Parquet's fixed costs made smaller than N's files (150-200 records), so N and 8N both fill them:
    # row groups of ~64 KB (32 MB by default; the 8N files hold ~0.6 MB of Arrow each) and 32 records
    # turned into Arrow at a time (256: ~1.3 MB of Python dicts, more than N's files hold).
    export_module.PARQUET_ROW_GROUP_BYTES = 64 * 1024
    export_module.PARQUET_BATCH = 32
    # Review's batches too (500 drafts per import request, 200 task ids per export request, 1,000 per page):
    # 16 tasks per export slice, 32 task ids per page of the catalog.
    review_api.EXPORT_SLICE = 16
    review_api.LIST_PAGE = 32
    _stage_peaks(tmp / "warm-up", N)  # N, not fewer: one-off costs (imports, caches) of a run of N land here
    pinned = _pin_interned_strings()  # alive while the stages are measured
    peaks = _stage_peaks(tmp / "n", N), _stage_peaks(tmp / "8n", 8 * N)
    del pinned
    return peaks


@pytest.fixture(scope="module")
def peaks(tmp_path_factory) -> tuple[dict[str, int], dict[str, int]]:
    """Measured in a fresh process: tracemalloc counts every thread's allocations, so what earlier tests
    leave running in the suite's process (servers, clients) must not land in a stage's peak (one stage
    once showed an extra ~15 MB in the full suite and never alone)."""
    tmp = tmp_path_factory.mktemp("memory")
    code = ("import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            "import test_stage_memory as t; print(json.dumps(t._measure(Path(sys.argv[2]))))")
    done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(tmp)],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    small, large = json.loads(done.stdout.strip().splitlines()[-1])
    return small, large


def _growth(peaks: tuple[dict[str, int], dict[str, int]], stages: set[str]) -> dict[str, str]:
    small, large = peaks
    return {s: f"{small[s] / 1e6:.2f} -> {large[s] / 1e6:.2f} MB ({large[s] / small[s]:.2f}x)"
            for s in sorted(stages) if large[s] > GROWTH * small[s] + SLACK}


INGEST = {"ingest", "ingest rerun"}
REVIEW = {"review push", "review push rerun", "review pull", "review pull rerun"}


def test_ingest_peak_memory_is_the_same_at_n_and_8n(peaks):
    """Listing (SA-Med2D's streamed index), dispatch, fingerprints, withdrawal: nothing per item stays."""
    small, large = peaks
    print({s: f"{small[s] / 1e6:.2f} -> {large[s] / 1e6:.2f} MB" for s in small})
    assert _growth(peaks, INGEST) == {}


def test_later_stages_peak_memory_is_the_same_at_n_and_8n(peaks):
    """generate (regions 128 at a time, stored drafts region by region), release (drafts 64 at a time,
    manifest written entry by entry; ``--policy sampled``: the judge-passed drafts and the decisions in
    scratch stores, each verdict looked up per draft), validate (records, ids, images and the manifest's file list
    streamed), export in every format (manifest and records streamed; Parquet a row group at a time,
    the Hub layout through ``datasets``' Arrow cache on disk)."""
    assert _growth(peaks, set(peaks[0]) - INGEST - REVIEW) == {}


def test_review_peak_memory_is_the_same_at_n_and_8n(peaks):
    """review push (drafts a batch at a time by id, their recorded tasks by draft id) and review pull (task
    ids a page at a time, exports a slice at a time, each slice's tasks, drafts and stored revisions
    looked up and stored together), first runs and reruns, against the mimic in its own process."""
    assert _growth(peaks, REVIEW) == {}
