"""Ingest under faults and hostile input (issue 30, issue 21 item 4): filtered-out items are skipped
with their reason, hostile geometry is refused before rasterising, a killed worker costs one item,
errors carry their item as a field (no name leaks, no mangled text), nothing outside a source is
read, and Ctrl-C / SIGTERM / a full disk end the command with one line, on real subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from coco_fixtures import PERSON, TABLE, write_coco
from disk_fixtures import fill
from ingest_fixtures import ingest, mni, sources_toml
from PIL import Image

from vgmed_build.cli import main
from vgmed_build.identifiers import item_pseudonym
from vgmed_build.ingest.pool import WorkerDied, run_parallel

VGMED = [sys.executable, "-m", "vgmed_build.cli"]


def stats(build: Path, capsys, *flags: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["stats", "--build", str(build), "--json", *flags])
    return code, json.loads(capsys.readouterr().out)


def coco_with(root: Path, images: list[int], annotations: list[dict]) -> None:
    """The fixture's COCO folder reduced to ``images`` (ids) and ``annotations``."""
    doc = write_coco(root)
    doc["images"] = [i for i in doc["images"] if i["id"] in images]
    doc["annotations"] = annotations
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(doc), encoding="utf-8")


def ann(i: int, image: int, category: int, polygon: list) -> dict:
    return {"id": i, "image_id": image, "category_id": category, "segmentation": [polygon], "iscrowd": 0}


def photos(root: Path, n: int, name: str = "img_{i:03d}") -> Path:
    """``n`` small images2d items (a gradient and one rectangle each)."""
    for i in range(n):
        pixels = np.tile(np.arange(64, dtype=np.uint8) * 2 + i % 50, (48, 1))
        mask = np.zeros((48, 64), np.uint8)
        mask[5 + i % 20 : 20 + i % 20, 10:30] = 255
        for path, arr in ((f"images/{name.format(i=i)}.png", pixels), (f"masks/{name.format(i=i)}_spot.png", mask)):
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / path)
    return root


# --- issue 21 item 4: nothing left after the size filters is a skip, not an error -----------------


def test_an_image_whose_only_object_is_too_large_is_skipped_with_its_reason(tmp_path, capsys):
    root = tmp_path / "coco"
    coco_with(root, [2, 3], [ann(21, 2, 3, TABLE), ann(30, 3, 4, PERSON)])  # coffee.png: the table only
    build = tmp_path / "b"
    capsys.readouterr()
    assert ingest(build, "--source", f"coco:{root}") == 0
    out = capsys.readouterr()
    assert "1 ingested, 0 unchanged, 1 skipped, 0 errors" in out.out
    reason = "every structure covers more than max_area_ratio = 0.4 of the image"
    assert f"  skipped 1 item(s): {reason}" in out.out and "error" not in out.err
    code, got = stats(build, capsys)
    assert code == 0 and got["errors"] == [] and got["skipped"] == {reason: 1}
    assert got["sources"]["coco"]["items_done"] == 1 and got["sources"]["coco"]["items_skipped"] == 1
    assert main(["stats", "--build", str(build)]) == 0
    text = capsys.readouterr().out
    assert "coco: 1 items done, 1 skipped, 0 failed" in text and f"  {reason}: 1" in text
    # A rerun finds it unchanged; the catalog holds nothing of it.
    assert ingest(build, "--source", f"coco:{root}") == 0
    assert "0 ingested, 2 unchanged, 0 skipped" in capsys.readouterr().out
    with sqlite3.connect(build / "catalog.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM images WHERE item_key='val2017/coffee.png'").fetchone() == (0,)


def test_an_object_below_min_area_px_is_skipped_with_that_reason(tmp_path, capsys):
    root = tmp_path / "coco"
    speck = [300, 200, 306, 200, 306, 206, 300, 206]  # 7 x 7 px = 49 < min_area_px
    coco_with(root, [2, 3], [ann(20, 2, 2, speck), ann(30, 3, 4, PERSON)])
    cfg = sources_toml(tmp_path / "s.toml", [{"name": "coco", "kind": "coco", "path": str(root),
                                               "options": {"min_area_px": 100}}])
    assert ingest(tmp_path / "b", "--sources", str(cfg)) == 0
    assert stats(tmp_path / "b", capsys)[1]["skipped"] == {"every structure is smaller than min_area_px = 100": 1}


# --- hostile geometry: bounded before rasterising; a good source beside it is stored -------------


@pytest.mark.parametrize("bad, says", [(1e12, "polygon x coordinate 1e+12 lies far outside the 600x400 picture"),
                                       ("NaN", "polygon coordinate 0 is nan, not a finite number")])
def test_a_huge_or_nan_coordinate_is_an_error_and_the_good_source_is_stored(tmp_path, capsys, bad, says):
    root = tmp_path / "coco"
    polygon = [float(bad), 10, 200, 10, 200, 200, 10, 200]
    coco_with(root, [2, 3], [ann(20, 2, 2, polygon), ann(30, 3, 4, PERSON)])
    text = (root / "annotations" / "instances_val2017.json").read_text().replace('"NaN"', "NaN")
    (root / "annotations" / "instances_val2017.json").write_text(text)
    good = photos(tmp_path / "good", 3)
    build = tmp_path / "b"
    capsys.readouterr()
    started = time.monotonic()
    code = ingest(build, "--source", f"coco:{root}", "--source", f"images2d:{good}", "--modality", "Natural",
                  "--workers", "2", "--with-paths")
    assert time.monotonic() - started < 120  # bounded: no allocation until the process dies
    err = capsys.readouterr().err
    assert code == 1 and f"error [coco] val2017/coffee.png: annotation 20: {says}" in err
    with sqlite3.connect(build / "catalog.sqlite") as conn:
        done = dict(conn.execute("SELECT source, COUNT(*) FROM items WHERE status='done' GROUP BY source"))
    assert done == {"good": 3, "coco": 1}  # the astronaut of the bad source too


# --- a worker killed from outside costs the item it held; the others go on --------------------------


def kill_when_written(pid_file: Path) -> threading.Thread:
    """A started thread that SIGKILLs the process whose id appears in ``pid_file`` (a worker, from outside)."""
    def killer() -> None:
        while not pid_file.exists() or not pid_file.read_text():
            time.sleep(0.05)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)

    thread = threading.Thread(target=killer)
    thread.start()
    return thread


def test_pool_reports_the_item_of_a_killed_worker_and_goes_on(tmp_path):
    pid_file = tmp_path / "pid"

    def work(index: int) -> int:
        if index == 2:
            pid_file.write_text(str(os.getpid()))
            time.sleep(60)
        return index * 10

    thread = kill_when_written(pid_file)
    got: dict[int, object] = {}
    run_parallel(range(6), work, 2, got.__setitem__)
    thread.join()
    assert got == {0: 0, 1: 10, 2: WorkerDied(-signal.SIGKILL), 3: 30, 4: 40, 5: 50}
    assert "killed by SIGKILL" in got[2].describe()


def test_ingest_with_a_worker_killed_from_outside_stores_every_other_item(tmp_path, capsys, monkeypatch):
    """The real ingest (fork inherits this patch): the worker rendering one item is SIGKILLed."""
    import vgmed_build.ingest.run as run

    root = photos(tmp_path / "photos", 5)
    pid_file = tmp_path / "pid"
    real = run.render_item

    def render(spec, key, data, build_dir):
        if key == "images/img_002.png":
            pid_file.write_text(str(os.getpid()))
            time.sleep(60)
        return real(spec, key, data, build_dir)

    monkeypatch.setattr(run, "render_item", render)

    thread = kill_when_written(pid_file)
    capsys.readouterr()
    code = ingest(tmp_path / "b", "--source", f"images2d:{root}", "--modality", "Dermoscopy", "--workers", "2",
                  "--with-paths")
    thread.join()
    out = capsys.readouterr()
    assert code == 1 and "Traceback" not in out.err and "BrokenProcessPool" not in out.err
    assert "4 ingested" in out.out
    assert "error [photos] images/img_002.png: the worker process reading this item died (killed by SIGKILL" in out.err


# --- errors carry their item as a field: no leak, no mangling ---------------------------------------


def test_a_patient_name_in_a_file_name_never_reaches_shared_output(tmp_path, capsys):
    root = photos(tmp_path / "photos", 2)
    name = "Doe: Jane MRN 12345"
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (48, 1))).save(root / "images" / f"{name}.png")
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[5:20, 10:30, 0] = 255
    Image.fromarray(rgb).save(root / "masks" / f"{name}_spot.png")  # an RGB mask: an error of that item
    build = tmp_path / "b"
    capsys.readouterr()
    assert ingest(build, "--source", f"images2d:{root}", "--modality", "Dermoscopy") == 1
    err = capsys.readouterr().err
    pseudonym = item_pseudonym("photos", f"images/{name}.png")
    assert f"error [photos] {pseudonym}: RGB mask with differing channels" in err
    code, hidden = stats(build, capsys)
    assert main(["stats", "--build", str(build)]) == 1
    text = capsys.readouterr().out
    for shown in (err, json.dumps(hidden), text):
        assert "Doe" not in shown and "12345" not in shown
    assert hidden["errors"][0]["item"] == pseudonym and hidden["errors"][0]["message"].startswith(pseudonym)
    # Where the output stays on the site, the file is named as it is.
    _, full = stats(build, capsys, "--with-paths")
    assert full["errors"][0]["message"].startswith(f"masks/{name}_spot.png: RGB mask")
    assert full["errors"][0]["item"] == f"images/{name}.png"


def test_a_short_source_folder_name_does_not_mangle_messages(tmp_path, capsys):
    folder = tmp_path / "p"
    folder.mkdir()  # a nifti source with no pairs at all
    build = tmp_path / "b"
    capsys.readouterr()
    assert ingest(build, "--source", f"nifti:{folder}", "--modality", "CT") == 1
    err = capsys.readouterr().err
    expected = f"{item_pseudonym('p', 'p')}: no image/label pairs (expected images/ + labels/ folders"
    assert f"error [p] {expected}" in err
    _, got = stats(build, capsys)
    assert got["errors"][0]["message"].startswith(expected)


# --- nothing outside the source is read --------------------------------------------------------------


def test_an_mhd_whose_data_file_leaves_its_folder_is_refused_unread(tmp_path, capsys):
    import SimpleITK as sitk

    image, labels, affine = mni(4)
    pairs = tmp_path / "src" / "pairs"
    pairs.mkdir(parents=True)
    for stem, data in (("case", image.astype(np.float32)), ("case_seg", labels.astype(np.uint8))):
        sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(data.T)), str(pairs / f"{stem}.mhd"))
    outside = tmp_path / "src" / "outside"
    (pairs / "case.raw").rename(outside)
    header = pairs / "case.mhd"
    header.write_text(header.read_text().replace("ElementDataFile = case.raw", "ElementDataFile = ../outside"))
    build = tmp_path / "b"
    capsys.readouterr()
    assert ingest(build, "--source", f"nifti:{pairs}", "--modality", "MRI", "--with-paths") == 1
    err = capsys.readouterr().err
    assert ("case.mhd: ElementDataFile '../outside' is not one data file inside the header's folder; "
            "refused (nothing outside the source is read)") in err


# --- Ctrl-C, SIGTERM and a full disk: one line, no traceback, a rerun resumes ------------------------


def items_stored(build: Path) -> int:
    try:
        with sqlite3.connect(build / "catalog.sqlite") as conn:
            return conn.execute("SELECT COUNT(*) FROM items WHERE status='done'").fetchone()[0]
    except sqlite3.Error:
        return 0


def _signals_as_in_a_terminal() -> None:
    """In the child before exec: SIGINT / SIGTERM delivered and at their defaults, as from a shell. A child
    inherits an ignored or blocked signal; the suite's process may have either left over from a library
    run in it earlier (the full suite's run saw ingest finish, exit 0, after a Ctrl-C it never got)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.parametrize("sig, workers, code, said", [(signal.SIGINT, "2", 130, "Ctrl-C"),
                                                       (signal.SIGTERM, "1", 143, "SIGTERM")])
def test_a_signal_stops_ingest_with_one_line_and_a_rerun_resumes(tmp_path, sig, workers, code, said):
    root = photos(tmp_path / "photos", 300)
    build = tmp_path / "b"
    args = [*VGMED, "ingest", "--build", str(build), "--source", f"images2d:{root}", "--modality", "Dermoscopy",
            "--no-progress", "--workers", workers]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_signals_as_in_a_terminal)
    deadline = time.monotonic() + 120
    while items_stored(build) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "ingest finished before the signal: give it more items"
    os.killpg(proc.pid, sig)  # as a terminal's Ctrl-C does: the whole process group
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"ingest: stopped by {said}; rerun the same command to resume (what finished is stored)")
    stored = items_stored(build)
    assert 2 <= stored < 300
    with sqlite3.connect(build / "catalog.sqlite") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    time.sleep(1)  # the workers saw their parent go
    assert subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True).stdout == b""
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0 and f"{stored} unchanged" in rerun.stdout


def test_a_full_disk_is_one_clear_error(tmp_path):
    """A real full disk: the build on a 1 MB tmpfs in a private mount namespace (unshare)."""
    unshare = shutil.which("unshare")
    probe = unshare and subprocess.run([unshare, "-rm", "true"], capture_output=True).returncode == 0
    if not probe:
        pytest.skip("unshare -rm (user and mount namespaces) is not available here")
    root = photos(tmp_path / "photos", 200)
    disk = tmp_path / "disk"
    disk.mkdir()
    check = "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('PRAGMA integrity_check').fetchone()[0])"
    script = (
        'mount -t tmpfs -o size=1m tmpfs "$1" && "$2" -m vgmed_build.cli ingest --build "$1/b" '
        '--source "images2d:$3" --modality Dermoscopy --no-progress; echo "rc=$?"; '
        '"$2" -c "$4" "$1/b/catalog.sqlite"'
    )
    got = subprocess.run([unshare, "-rm", "sh", "-c", script, "sh", str(disk), sys.executable, str(root), check],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert "Traceback" not in got.stderr
    assert "rc=2" in got.stdout and got.stdout.strip().splitlines()[-1] == "ok"
    (line,) = [x for x in got.stderr.splitlines() if x.startswith("error:")]
    assert "ingest: the disk is full" in line and "rerun the same command to resume" in line


def test_a_slake_box_with_a_nan_coordinate_is_an_error_naming_the_file(tmp_path):
    from vgmed_build.sources.base import SourceError
    from vgmed_build.sources.slake import read_detections

    path = tmp_path / "imgs" / "xmlab1" / "detection.json"
    path.parent.mkdir(parents=True)
    path.write_text('[{"Liver": [10, 20, 30, 40]}, {"Tumor": [NaN, 5, 10, 10]}]')
    with pytest.raises(SourceError, match=r"^imgs/xmlab1/detection.json: box of 'Tumor' has a coordinate that is "
                                          r"not a finite number$"):
        read_detections(path, tmp_path)


def test_errors_stored_before_v4_get_their_path_as_a_field(tmp_path):
    """Migration v4 moves the leading 'path: ' of a stored ingest error into errors.path."""
    from vgmed_build.catalog import CATALOG_NAME, MIGRATIONS, open_catalog

    with sqlite3.connect(tmp_path / CATALOG_NAME) as conn:
        for script in MIGRATIONS[:3]:
            conn.executescript(script)
        conn.execute("PRAGMA user_version = 3")
        conn.execute("INSERT INTO errors (stage, source, item, message, created_at) VALUES "
                     "('ingest', 's', 'a/b.png', 'a/b.png: mask is empty', 'now'), "
                     "('ingest', 's', 'src', 'options.x must be set', 'now'), "
                     "('generate', '', 'r1', 'r1: bad', 'now')")
    with open_catalog(tmp_path, create=False) as catalog:
        rows = catalog.conn.execute("SELECT item, path, message FROM errors ORDER BY item").fetchall()
    assert rows == [("a/b.png", "a/b.png", "mask is empty"), ("r1", "", "r1: bad"),
                    ("src", "", "options.x must be set")]


# --- an all-black picture with a valid mask: ingested with a warning, not refused -------------------


def test_a_flat_picture_with_a_valid_mask_is_ingested_with_one_warning(tmp_path, capsys):
    """Issue 30: a float TIFF whose finite values are all 0 (one NaN pixel) holding a mask, and a mid-grey
    PNG, are ingested with a warning line naming each file; the warning is stored and shown by `stats`,
    and goes once the file has contrast."""
    root = photos(tmp_path / "photos", 1)
    black = np.zeros((48, 64), np.float32)
    black[0, 0] = np.nan
    Image.fromarray(black).save(root / "images" / "black.tif")
    Image.fromarray(np.full((48, 64), 128, np.uint8)).save(root / "images" / "grey.png")
    mask = np.zeros((48, 64), np.uint8)
    mask[10:25, 30:50] = 255
    for stem in ("black", "grey"):
        Image.fromarray(mask).save(root / "masks" / f"{stem}_spot.png")
    with Image.open(root / "images" / "black.tif") as im:  # as written by Pillow: a 32-bit float TIFF
        assert im.mode == "F"
    build = tmp_path / "b"
    capsys.readouterr()
    assert ingest(build, "--source", f"images2d:{root}", "--modality", "Dermoscopy", "--with-paths") == 0
    out = capsys.readouterr()
    assert "3 ingested" in out.out and "0 errors, 2 ingested with a warning" in out.out
    warnings = [line.strip() for line in out.err.splitlines() if "warning [" in line]
    assert warnings == [
        "warning [photos] images/black.tif: image has no contrast: every pixel is 0 (all black) as read (8-bit); "
        "ingested with its masks, but its picture shows nothing: check the file",
        "warning [photos] images/grey.png: image has no contrast: every pixel is 128 as read (8-bit); "
        "ingested with its masks, but its picture shows nothing: check the file",
    ]
    with sqlite3.connect(build / "catalog.sqlite") as conn:
        (path, record), = conn.execute("SELECT path, record_json FROM images WHERE item_key='images/black.tif'")
    with Image.open(build / path) as im:
        assert not np.asarray(im).any()  # the picture as it is: black
    (region,) = [json.loads(r) for (r,) in sqlite3.connect(build / "catalog.sqlite").execute(
        "SELECT r.record_json FROM regions r JOIN images i ON r.image_id = i.id WHERE i.item_key='images/black.tif'")]
    ys, xs = np.nonzero(mask)  # the box, from the mask by hand: [x0, y0, x1, y1], end exclusive
    scale = json.loads(record)["width"] / 64
    assert region["boxes"] == [[xs.min() * scale, ys.min() * scale, (xs.max() + 1) * scale, (ys.max() + 1) * scale]]
    # stored: `stats` shows them (exit 0: a warning is no error), by pseudonym unless --with-paths
    code, hidden = stats(build, capsys)
    assert code == 0 and hidden["errors"] == [] and len(hidden["warnings"]) == 2
    assert hidden["warnings"][0]["message"] == (f"{item_pseudonym('photos', 'images/black.tif')}: image has no "
                                                "contrast: every pixel is 0 (all black) as read (8-bit); ingested "
                                                "with its masks, but its picture shows nothing: check the file")
    assert "black.tif" not in json.dumps(hidden)
    assert main(["stats", "--build", str(build), "--with-paths"]) == 0
    text = capsys.readouterr().out
    assert "warnings (items ingested all the same): 2" in text and "[photos] images/grey.png: image has no" in text
    # fixed: the warning goes with the next ingest of the item
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (48, 1))).save(root / "images" / "grey.png")
    assert ingest(build, "--source", f"images2d:{root}", "--modality", "Dermoscopy") == 0
    assert "1 ingested, 2 unchanged" in capsys.readouterr().out
    _, after = stats(build, capsys, "--with-paths")
    assert [w["item"] for w in after["warnings"]] == ["images/black.tif"]


def test_an_image_without_pixels_is_still_refused(tmp_path):
    from vgmed_build.ingest.render import flat_picture
    from vgmed_build.sources.base import SourceError

    with pytest.raises(SourceError, match="image has no pixels"):
        flat_picture("a.png", np.zeros((0, 4), np.uint8))
    assert flat_picture("a.png", np.full((3, 4, 3), [255, 0, 0], np.uint8)).startswith(
        "image has no contrast: every pixel is (255, 0, 0) as read")
    assert flat_picture("a.png", np.eye(3, dtype=np.uint8)) is None


# --- a failure nothing foresaw: named, sanitised, the run goes on ------------------------------------


@pytest.mark.parametrize("step", ["reading", "rendering"])
def test_an_unexpected_failure_names_item_stage_step_and_exception_without_paths_or_uids(
    tmp_path, capsys, monkeypatch, step
):
    """Issue 30: no bare "internal error <name>": the line says ingest, the step, the exception's type and
    message; the item's absolute path (a patient-named folder) and UIDs in the message are replaced."""
    import vgmed_build.ingest.run as run
    from vgmed_build.sources import images2d

    root = photos(tmp_path / "Doe_Jane_MRN12345", 3)
    bad = root / "images" / "img_001.png"
    real_load, real_render = images2d._load_image_item, run.render_item

    def boom() -> None:
        raise KeyError(f"tag (0008,0018) 1.2.840.113619.2.55.3 missing in {bad} and {root}/other")

    def load(path, *args):
        if path == bad and step == "reading":
            boom()
        return real_load(path, *args)

    def render(spec, key, data, build_dir):
        if key == "images/img_001.png" and step == "rendering":
            boom()
        return real_render(spec, key, data, build_dir)

    monkeypatch.setattr(images2d, "_load_image_item", load)
    monkeypatch.setattr(run, "render_item", render)
    build = tmp_path / "b"
    capsys.readouterr()
    assert ingest(build, "--source", f"images2d:{root}", "--modality", "Dermoscopy") == 1
    out = capsys.readouterr()
    assert "2 ingested" in out.out and "1 errors" in out.out
    (line,) = [x.strip() for x in out.err.splitlines() if x.strip().startswith("error [")]
    pseudonym = item_pseudonym("Doe_Jane_MRN12345", "images/img_001.png")
    assert line == (f"error [Doe_Jane_MRN12345] {pseudonym}: ingest failed unexpectedly while {step} this item "
                    "(KeyError: 'tag (0008,0018) <uid> missing in <path> and <path>'); a bug or a file problem "
                    "vgmed does not check for yet: `vgmed-build -v ingest ...` shows the trace; please report it")
    assert "internal error" not in out.err and "Doe_Jane" not in line.split("]", 1)[1]
    _, shown = stats(build, capsys, "--with-paths")
    assert shown["errors"][0]["message"].startswith("images/img_001.png: ingest failed unexpectedly")


def test_an_unexpected_os_error_names_its_file(tmp_path):
    from vgmed_build.ingest.run import Job, failed_file
    from vgmed_build.sources.base import SourceItem, SourceSpec

    spec = SourceSpec(name="s", kind="images2d", path=tmp_path)
    job = Job(spec, SourceItem(key="images/a.png", files=[], load=lambda: None), None, "{}")
    exc = PermissionError(13, "Permission denied", str(tmp_path / "masks" / "a_spot.png"))
    assert failed_file(exc, job) == "masks/a_spot.png"
    assert failed_file(ValueError("x"), job) == "images/a.png"


@pytest.mark.parametrize("command", [["generate"], ["stats"], ["release", "--include-unreviewed"]])
def test_a_catalog_opened_on_a_full_disk_is_the_full_disk_line_not_a_broken_catalog(
    tmp_path, full_disk, capsys, command
):
    """SQLite opens a WAL catalog on a full disk with a bare "disk I/O error" (no errno): it was reported as
    "not a usable vgmed catalog"; the catalog is fine, the disk is full (issue 30, found by the campaign)."""
    build = tmp_path / "b"
    assert ingest(build, "--source", f"images2d:{photos(tmp_path / 'photos', 2)}", "--modality", "Dermoscopy") == 0
    shutil.copytree(build, full_disk / "b")
    fill(full_disk)
    capsys.readouterr()
    extra = ["--out", str(full_disk / "rel")] if command[0] == "release" else []
    assert main([command[0], "--build", str(full_disk / "b"), *command[1:], *extra]) == 2
    err = capsys.readouterr().err
    assert f"error: {command[0]}: the disk is full writing {full_disk / 'b' / 'catalog.sqlite'}; free some space" in err
    assert "not a usable" not in err and "Traceback" not in err
    (full_disk / "filler").unlink()
    assert sqlite3.connect(full_disk / "b" / "catalog.sqlite").execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_disk_filling_up_during_generate_is_one_line_not_a_region_error(tmp_path, full_disk):
    """A full disk met while storing drafts stopped the run with "region ...: cannot draft: OperationalError:
    database or disk is full" lines before the full-disk line (found by the fault campaign)."""
    build = tmp_path / "b"
    assert ingest(build, "--source", f"images2d:{photos(tmp_path / 'photos', 60)}", "--modality", "Dermoscopy") == 0
    shutil.copytree(build, full_disk / "b")
    fill(full_disk, leave=40_000)  # room to open the catalog (a 32 KiB shared-memory file), not for 120 drafts
    generate = [*VGMED, "generate", "--build", str(full_disk / "b")]
    run = subprocess.run(generate, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert [line for line in run.stderr.splitlines() if "error" in line.lower()] == [
        "error: generate: the disk is full; free some space and rerun the same command to resume (what finished "
        "is stored)"]
    (full_disk / "filler").unlink()
    assert subprocess.run(generate, capture_output=True, text=True, timeout=300).returncode == 0
    with sqlite3.connect(full_disk / "b" / "catalog.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM errors").fetchone() == (0,)
        assert conn.execute("SELECT COUNT(DISTINCT region_id) FROM drafts").fetchone() == (60,)
