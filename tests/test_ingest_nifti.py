"""End-to-end `vgmed-build ingest | regions | stats` on real NIfTI volumes (MNI152 template + masks)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml
from ingest_fixtures import (
    LABELS,
    REPO,
    SAMPLE_SOURCES,
    flip_x,
    ingest,
    mni,
    save,
    sources_toml,
    write_msd,
    write_pair,
)
from PIL import Image

from vgmed_build.cli import main
from vgmed_build.config import ConfigError, load_sources_file
from vgmed_build.ingest.run import run_ingest

MNI_SOURCES = ("mni152", "mni152-coronal")


def stats(build: Path, capsys) -> tuple[int, dict]:
    capsys.readouterr()
    rc = main(["stats", "--build", str(build), "--json", "--with-paths"])
    return rc, json.loads(capsys.readouterr().out)


def regions_of(build: Path) -> list[dict]:
    with sqlite3.connect(build / "catalog.sqlite") as conn:
        return [json.loads(r) for (r,) in conn.execute("SELECT record_json FROM regions ORDER BY id")]


def check_consistent(build: Path) -> dict[str, int]:
    """Catalog invariants after any run: no half items, files match rows, no orphans or temp files."""
    conn = sqlite3.connect(build / "catalog.sqlite")
    try:
        for source, key, n_images, n_regions in conn.execute(
                "SELECT source, item_key, n_images, n_regions FROM items WHERE status='done'"):
            got = conn.execute("SELECT COUNT(*) FROM images WHERE source=? AND item_key=?", (source, key)).fetchone()
            assert got[0] == n_images, (source, key)
            got = conn.execute("SELECT COUNT(*) FROM regions r JOIN images i ON r.image_id = i.id "
                               "WHERE i.source=? AND i.item_key=?", (source, key)).fetchone()
            assert got[0] == n_regions, (source, key)
        rows = conn.execute("SELECT path, sha256 FROM images").fetchall()
        for path, sha in rows:
            assert hashlib.sha256((build / path).read_bytes()).hexdigest() == sha
        on_disk = {p.relative_to(build).as_posix() for p in (build / "images").rglob("*.png")}
        assert on_disk == {p for p, _ in rows}, "PNG files without catalog rows (or the reverse)"
        assert not list((build / "images").rglob("*.tmp"))
        orphans = conn.execute("SELECT COUNT(*) FROM regions WHERE image_id NOT IN (SELECT id FROM images)")
        assert orphans.fetchone()[0] == 0
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("items", "images", "regions")}
    finally:
        conn.close()


@pytest.fixture(scope="module")
def sample_build(tmp_path_factory) -> Path:
    build = tmp_path_factory.mktemp("sample") / "build"
    assert ingest(build, "--sources", str(SAMPLE_SOURCES)) == 0
    return build


def test_bundled_sample_regions_have_the_right_sides_and_positions(sample_build):
    regions = [r for r in regions_of(sample_build) if r["source"]["name"] in MNI_SOURCES]
    assert {r["label"] for r in regions} == set(LABELS.values())
    assert len(regions) == 8  # each structure's largest axial and coronal slice (sources.toml)
    for r in regions:
        hemisphere = r["label"].split()[0]
        assert r["side"] == hemisphere, r
        # radiological display: patient-left structures on the image's right half, and vice versa
        xs = [x for b in r["boxes"] for x in (b[0], b[2])]
        if hemisphere == "left":
            assert min(xs) >= r["width"] // 2
        else:
            assert max(xs) <= r["width"] // 2 + 1
        assert r["source"]["item"] == "imagesTr/mni152_0000.nii.gz"     # relative, never absolute
        # 2 mm voxels rendered finer so the short side has 512 px (min_side_px); the extent is kept.
        assert min(r["width"], r["height"]) == 512 and r["modality"] == "MRI"
        row_mm, col_mm = r["pixel_spacing_mm"]
        assert row_mm == pytest.approx(col_mm, rel=2e-3) and row_mm < 2.0
        x0, y0, x1, y1 = r["boxes"][0]
        assert 0 <= x0 < x1 <= r["width"] and 0 <= y0 < y1 <= r["height"]
    # slice_policy = "largest": each structure on the slice where its label covers most voxels (first on ties)
    import nibabel as nib

    lab = np.asarray(nib.load(REPO / "vgmed_build/sample/mni152/labelsTr/mni152.nii.gz").dataobj)
    for r in regions:
        axis = {"axial": 2, "coronal": 1}[r["plane"]]
        value = {n: v for v, n in LABELS.items()}[r["label"]]
        per_slice = (lab == value).sum(axis=tuple(a for a in range(3) if a != axis))
        assert r["slice_index"] == int(per_slice.argmax()), r["label"]
    assert {r["plane"] for r in regions} == {"axial", "coronal"}


def test_region_pixels_agree_with_the_label_map(sample_build):
    """Independent check: re-derive each region from the volume with nibabel + scipy + the display rule."""
    import nibabel as nib
    from scipy import ndimage

    lab = np.asarray(nib.load(REPO / "vgmed_build/sample/mni152/labelsTr/mni152.nii.gz").dataobj)
    for r in regions_of(sample_build):
        if r["source"]["name"] != "mni152":
            continue
        value = {n: v for v, n in LABELS.items()}[r["label"]]
        native = lab[:, :, r["slice_index"]].T[::-1, ::-1] == value   # RAS volume: rows = -y, cols = -x
        # Enlarged to the rendered size by nearest neighbour: rendered pixel k shows voxel
        # floor((k + 0.5) * n_voxels / n_pixels) (pixel edges aligned).
        rows = np.floor((np.arange(r["height"]) + 0.5) * native.shape[0] / r["height"]).astype(int)
        cols = np.floor((np.arange(r["width"]) + 0.5) * native.shape[1] / r["width"]).astype(int)
        sl = native[np.ix_(rows, cols)]
        comps, n = ndimage.label(sl, structure=np.ones((3, 3)))
        sizes = np.bincount(comps.ravel())
        boxes = sorted([o[1].start, o[0].start, o[1].stop, o[0].stop]
                       for i, o in enumerate(ndimage.find_objects(comps), start=1) if sizes[i] >= 16)
        assert r["boxes"] == boxes
        assert r["area_ratio"] == pytest.approx(sum(sizes[1:][sizes[1:] >= 16]) / sl.size, abs=1e-6)


def test_images_are_8bit_pngs_without_metadata(sample_build):
    with sqlite3.connect(sample_build / "catalog.sqlite") as conn:
        rows = conn.execute("SELECT path, width, height, record_json FROM images").fetchall()
    for path, width, height, rec in rows:
        img = Image.open(sample_build / path)
        grey = json.loads(rec)["modality"] != "Natural"               # the sample's COCO photos are RGB
        assert img.mode == ("L" if grey else "RGB") and img.size == (width, height)
        assert img.info == {} and not getattr(img, "text", {})
        assert json.loads(rec)["path"] == path


def test_regions_jsonl_validates_against_the_schema(sample_build, tmp_path, capsys):
    out = tmp_path / "regions.jsonl"
    capsys.readouterr()
    assert main(["regions", "--build", str(sample_build), "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"regions: wrote {len(regions_of(sample_build))} records to {out}\n"
    schema = json.loads((REPO / "schemas" / "region.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    lines = out.read_text().splitlines()
    assert len(lines) == len(regions_of(sample_build))
    for line in lines:
        validator.validate(json.loads(line))
    ids = [json.loads(line)["id"] for line in lines]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_stats_counts(sample_build, capsys):
    rc, data = stats(sample_build, capsys)
    assert rc == 0 and data["errors"] == []
    regions = regions_of(sample_build)
    assert sum(data["labels"].values()) == len(regions)
    assert data["sources"]["mni152"]["items_done"] == 1
    assert data["sources"]["mni152"]["regions"] == sum(r["source"]["name"] == "mni152" for r in regions)
    assert data["sides"]["left"] == sum(r["side"] == "left" for r in regions)
    capsys.readouterr()
    assert main(["stats", "--build", str(sample_build)]) == 0
    text = capsys.readouterr().out
    assert "mni152: 1 items done" in text and "left grey matter" in text


def test_flipped_affine_gives_the_same_sides_boxes_and_pixels(tmp_path, capsys):
    t1, labels, affine = mni(2)
    # Mark the left grey matter brighter so the (symmetric) template's rendering is asymmetric.
    image = np.clip(t1.astype(np.int16) + 40 * (labels == 1), 0, 255).astype(np.uint8)
    folder = tmp_path / "pairs"
    write_pair(folder, "ras", image, labels, affine)
    f_image, f_affine = flip_x(image, affine)
    write_pair(folder, "las", f_image, flip_x(labels, affine)[0], f_affine)
    assert ingest(tmp_path / "b", "--source", f"nifti:{folder}", "--modality", "MR") == 0
    by_item: dict[str, dict] = {"ras.nii.gz": {}, "las.nii.gz": {}}
    with sqlite3.connect(tmp_path / "b" / "catalog.sqlite") as conn:
        sha = dict(conn.execute("SELECT id, sha256 FROM images"))
    for r in regions_of(tmp_path / "b"):
        by_item[r["source"]["item"]][(r["label"], r["slice_index"])] = (
            r["side"], r["boxes"], r["centroid"], r["slice_position_mm"], sha[r["image_id"]])
    assert by_item["ras.nii.gz"] == by_item["las.nii.gz"] and len(by_item["ras.nii.gz"]) == 4
    assert {v[0] for v in by_item["ras.nii.gz"].values()} == {"left", "right"}
    assert all(r["modality"] == "MRI" for r in regions_of(tmp_path / "b"))     # MR normalised


@pytest.mark.parametrize("nnunet", [False, True])
def test_msd_and_nnunet_layouts(tmp_path, nnunet):
    t1, labels, affine = mni(2)
    root = write_msd(tmp_path / "Task01_MNI", {"mni_a": (t1, labels, affine),
                                              "mni_b": (t1, np.where(labels > 2, labels, 0), affine)}, nnunet)
    (root / "imagesTr" / "._mni_a.nii.gz").write_bytes(b"\0\5\26\7 macOS resource fork")  # MSD archives have these
    build = tmp_path / "b"
    assert ingest(build, "--source", f"msd:{root}") == 0
    regions = regions_of(build)
    items = {r["source"]["item"] for r in regions}
    suffix = "_0000" if nnunet else ""
    assert items == {f"imagesTr/mni_a{suffix}.nii.gz", f"imagesTr/mni_b{suffix}.nii.gz"}
    assert {r["label"] for r in regions} == set(LABELS.values())        # names from dataset.json
    assert {r["modality"] for r in regions} == {"MRI"}
    only_b = {r["label"] for r in regions if "mni_b" in r["source"]["item"]}
    assert only_b == {"left white matter", "right white matter"}


def test_bad_inputs_become_errors_naming_the_file_and_the_run_goes_on(tmp_path, capsys):
    t1, labels, affine = mni(2)
    folder = tmp_path / "pairs"
    write_pair(folder, "good", t1, labels, affine)
    save(folder / "shape.nii.gz", t1, affine)
    save(folder / "shape_seg.nii.gz", labels[:-1], affine)
    shifted = affine.copy()
    shifted[0, 3] += 10
    write_pair(folder, "affine", t1, labels, affine, label_affine=shifted)
    write_pair(folder, "float", t1, labels.astype(np.float32) * 0.5, affine)
    write_pair(folder, "negative", t1, labels.astype(np.int16) - 1, affine)
    write_pair(folder, "fourd", np.stack([t1, 255 - t1], axis=-1), labels, affine)
    write_pair(folder, "empty", t1, np.zeros_like(labels), affine)
    write_pair(folder, "truncated", t1, labels, affine)
    data = (folder / "truncated.nii.gz").read_bytes()
    (folder / "truncated.nii.gz").write_bytes(data[: len(data) // 3])
    (folder / "notnifti.nii.gz").write_bytes(gzip.compress(b"this is not a NIfTI file" * 20))
    save(folder / "notnifti_seg.nii.gz", labels, affine)
    save(folder / "nolabel.nii.gz", t1, affine)
    build = tmp_path / "b"
    assert ingest(build, "--source", f"nifti:{folder}", "--modality", "MRI") == 1
    rc, data = stats(build, capsys)
    assert rc == 1
    errors = {e["item"]: e["message"] for e in data["errors"]}
    expected = {
        "shape.nii.gz": "shape_seg.nii.gz: label map shape",
        "affine.nii.gz": "affine_seg.nii.gz: label map affine differs",
        "float.nii.gz": "float_seg.nii.gz: label map has non-integer values",
        "negative.nii.gz": "negative_seg.nii.gz: label map has negative values",
        "fourd.nii.gz": "fourd.nii.gz: 4D image with 2 volumes; set option 'channel'",
        "empty.nii.gz": "empty_seg.nii.gz: label map is empty",
        "truncated.nii.gz": "truncated.nii.gz: cannot read image as NIfTI",
        "notnifti.nii.gz": "notnifti.nii.gz: cannot read image as NIfTI",
        "nolabel.nii.gz": "nolabel.nii.gz: no label map nolabel_seg.nii[.gz]",
    }
    assert set(errors) == set(expected)
    for item, fragment in expected.items():
        assert fragment in errors[item], (item, errors[item])
    assert {r["source"]["item"] for r in regions_of(build)} == {"good.nii.gz"}
    check_consistent(build)

    # Fixing a file clears its error on the next run; the others stay listed, the good item is skipped.
    save(folder / "empty_seg.nii.gz", labels, affine)
    assert ingest(build, "--source", f"nifti:{folder}", "--modality", "MRI") == 1
    _, data = stats(build, capsys)
    assert {e["item"] for e in data["errors"]} == set(expected) - {"empty.nii.gz"}
    assert {r["source"]["item"] for r in regions_of(build)} == {"good.nii.gz", "empty.nii.gz"}

    # The 4D volume works once a channel is chosen (single image + label form, options in a file).
    cfg = sources_toml(tmp_path / "s.toml", [{"name": "fourd", "kind": "nifti", "path": "pairs/fourd.nii.gz",
                                               "modality": "MRI", "options": {"label": "fourd_seg.nii.gz",
                                                                              "channel": 1}}])
    assert ingest(build, "--sources", str(cfg)) == 0
    assert any(r["source"]["name"] == "fourd" for r in regions_of(build))


def test_rerun_skips_changed_options_reingest_in_place(tmp_path, capsys):
    t1, labels, affine = mni(2)
    write_pair(tmp_path / "pairs", "a", t1, labels, affine)
    entry = {"name": "mni", "kind": "nifti", "path": "pairs", "modality": "MRI",
             "options": {"slice_policy": "every_n", "every_n": 6}}
    cfg = sources_toml(tmp_path / "s.toml", [entry])
    build = tmp_path / "b"
    assert ingest(build, "--sources", str(cfg)) == 0
    first = check_consistent(build)
    before = regions_of(build)
    capsys.readouterr()
    assert ingest(build, "--sources", str(cfg)) == 0
    assert "0 ingested, 1 unchanged" in capsys.readouterr().out
    assert check_consistent(build) == first and regions_of(build) == before

    entry["options"]["every_n"] = 12                          # every 12th slice: a subset of every 6th
    sources_toml(tmp_path / "s.toml", [entry])
    assert ingest(build, "--sources", str(cfg)) == 0
    after = check_consistent(build)
    assert after["items"] == 1 and 0 < after["regions"] < first["regions"]
    assert {r["id"] for r in regions_of(build)} < {r["id"] for r in before}    # stable ids, stale ones gone

    capsys.readouterr()
    assert ingest(build, "--sources", str(cfg), "--force") == 0
    assert "1 ingested" in capsys.readouterr().out
    assert check_consistent(build) == after


def test_kill_9_mid_run_leaves_no_half_item_and_rerun_completes(tmp_path):
    t1, labels, affine = mni(2)
    folder = tmp_path / "pairs"
    n_items = 8
    for i in range(n_items):
        write_pair(folder, f"case{i:02d}", t1, labels, affine)
    cfg = sources_toml(tmp_path / "s.toml", [{"name": "mni", "kind": "nifti", "path": "pairs", "modality": "MRI",
                                               "options": {"slice_policy": "every_n", "every_n": 2}}])
    build = tmp_path / "b"
    cmd = [sys.executable, "-m", "vgmed_build.cli", "ingest", "--build", str(build), "--sources", str(cfg),
           "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with sqlite3.connect(build / "catalog.sqlite", timeout=5) as conn:
                done = conn.execute("SELECT COUNT(*) FROM items WHERE status='done'").fetchone()[0]
        except sqlite3.OperationalError:      # catalog not created yet
            done = 0
        if done >= 1:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 1 <= done < n_items, "the kill must land mid-run"
    counts = check_consistent_after_kill(build)
    assert 1 <= counts["items"] < n_items

    assert run_ingest(build, load_sources_file(cfg), progress=False).errors == []
    final = check_consistent(build)
    clean = tmp_path / "clean"
    run_ingest(clean, load_sources_file(cfg), progress=False)
    assert final == check_consistent(clean) and final["items"] == n_items
    assert regions_of(build) == regions_of(clean)


def children_of(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_killing_ingest_kills_its_workers(tmp_path):
    """Issue 12.7: SIGKILL of `ingest --workers 2` must not leave its 2 workers blocked forever."""
    t1, labels, affine = mni(2)
    for i in range(12):
        write_pair(tmp_path / "pairs", f"case{i:02d}", t1, labels, affine)
    cmd = [sys.executable, "-m", "vgmed_build.cli", "ingest", "--build", str(tmp_path / "b"), "--source",
           f"nifti:{tmp_path / 'pairs'}", "--modality", "MRI", "--workers", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None and len(workers) < 2:
        workers = children_of(proc.pid)
        time.sleep(0.05)
    assert len(workers) == 2, "the kill must land while both workers run"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(w) for w in workers):
        time.sleep(0.1)
    left = [w for w in workers if alive(w)]
    for w in left:
        os.kill(w, signal.SIGKILL)
    assert left == []


def check_consistent_after_kill(build: Path) -> dict[str, int]:
    """Like check_consistent, but a killed run may leave PNGs (never rows) of its unfinished item."""
    conn = sqlite3.connect(build / "catalog.sqlite")
    try:
        for source, key, n_images in conn.execute("SELECT source, item_key, n_images FROM items"):
            rows = conn.execute("SELECT path FROM images WHERE source=? AND item_key=?", (source, key)).fetchall()
            assert len(rows) == n_images and all((build / p).is_file() for (p,) in rows)
        assert conn.execute("SELECT COUNT(*) FROM images WHERE item_key NOT IN "
                            "(SELECT item_key FROM items)").fetchone()[0] == 0
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("items", "images", "regions")}
    finally:
        conn.close()


def test_workers_give_the_same_catalog_as_one_process(tmp_path):
    t1, labels, affine = mni(2)
    for i in range(4):
        write_pair(tmp_path / "pairs", f"c{i}", t1, np.where(labels == (i % 4) + 1, 0, labels), affine)
    cfg = sources_toml(tmp_path / "s.toml", [{"name": "mni", "kind": "nifti", "path": "pairs", "modality": "MRI"}])
    serial = run_ingest(tmp_path / "one", load_sources_file(cfg), workers=1, progress=False)
    parallel = run_ingest(tmp_path / "two", load_sources_file(cfg), workers=2, progress=False)
    assert serial.done == parallel.done == 4 and not serial.errors and not parallel.errors
    assert regions_of(tmp_path / "one") == regions_of(tmp_path / "two")
    assert check_consistent(tmp_path / "one") == check_consistent(tmp_path / "two")


def test_sources_file_formats_agree_and_typos_fail_loudly(tmp_path):
    toml_specs = load_sources_file(SAMPLE_SOURCES)
    import tomllib

    data = tomllib.loads(SAMPLE_SOURCES.read_text())
    for name, dump in (("s.json", json.dumps), ("s.yaml", yaml.safe_dump)):
        path = SAMPLE_SOURCES.parent / f".test-{os.getpid()}-{name}"
        try:
            path.write_text(dump(data))
            assert load_sources_file(path) == toml_specs
        finally:
            path.unlink()
    mni_spec = next(s for s in toml_specs if s.name == "mni152")
    assert mni_spec.options["slice_policy"] == "largest" and mni_spec.options["max_area_ratio"] == 0.4  # default filled
    assert mni_spec.path == SAMPLE_SOURCES.parent / "mni152"

    def fails(entries: object, fragment: str, name: str = "bad.json") -> None:
        path = tmp_path / name
        path.write_text(json.dumps(entries))
        with pytest.raises(ConfigError) as exc:
            load_sources_file(path)
        assert str(path) in str(exc.value) and fragment in str(exc.value), str(exc.value)

    base = {"name": "x", "kind": "nifti", "path": "p"}
    fails({"source": [{**base, "modalty": "CT"}]}, "unknown key 'modalty' (did you mean 'modality'?)")
    fails({"source": [{**base, "options": {"slice_polcy": "all"}}]}, "unknown key 'slice_polcy'")
    fails({"source": [{**base, "options": {"plane": "oblique"}}]}, "option 'plane' = 'oblique'")
    fails({"source": [{**base, "options": {"window": "lungs"}}]}, "option 'window'")
    fails({"source": [{**base, "kind": "nrrd"}]}, "unknown source kind 'nrrd'")
    fails({"source": [base, base]}, "two sources are named 'x'")
    fails({"sources": [base], "extra": 1}, "unknown top-level key")
    fails({"source": [{"name": "x", "kind": "nifti"}]}, "'path' is required")
    (tmp_path / "broken.toml").write_text("[[source]\nname=")
    with pytest.raises(ConfigError, match="broken.toml: cannot parse"):
        load_sources_file(tmp_path / "broken.toml")
    assert main(["ingest", "--build", str(tmp_path / "b"), "--sources", str(tmp_path / "bad.json")]) == 2


def test_a_missing_source_path_changes_nothing_and_is_named_as_typed(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build = tmp_path / "b"
    capsys.readouterr()
    assert ingest(build, "--source", "msd:data/Task01_BrainTumour") == 2
    err = capsys.readouterr().err
    assert err == "error: --source msd:data/Task01_BrainTumour: no such file or folder\n"
    assert not build.exists() and sorted(tmp_path.iterdir()) == []
    cfg = sources_toml(tmp_path / "s.toml", [{"name": "liver", "kind": "msd", "path": "gone/Task03_Liver"}])
    assert ingest(build, "--sources", str(cfg)) == 2
    assert f"source 'liver': {tmp_path}/gone/Task03_Liver: no such file or folder" in capsys.readouterr().err
    assert not build.exists()


def test_unknown_or_missing_source_paths_are_errors_until_fixed(tmp_path, capsys):
    build = tmp_path / "b"
    (tmp_path / "nowhere").mkdir()
    assert ingest(build, "--source", f"msd:{tmp_path / 'nowhere'}") == 1
    rc, data = stats(build, capsys)
    assert rc == 1 and "not an MSD / nnU-Net dataset folder" in data["errors"][0]["message"]
    assert main(["ingest", "--build", str(build), "--source", "nifti"]) == 2
    # once the dataset is there, the stale listing error disappears
    t1, labels, affine = mni(2)
    write_msd(tmp_path / "nowhere", {"a": (t1, labels, affine)})
    assert ingest(build, "--source", f"msd:{tmp_path / 'nowhere'}") == 0
    rc, data = stats(build, capsys)
    assert rc == 0 and data["errors"] == [] and data["sources"]["nowhere"]["items_done"] == 1


@pytest.mark.parametrize("command", ["ingest", "regions", "stats"])
def test_help_explains_every_option(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    options = {"ingest": ["--build", "--sources", "--source", "--option", "--modality", "--body-part", "--workers",
                          "--force", "--no-progress", "--keep-missing", "--wait", "--with-paths"],
               "regions": ["--build", "--out", "--source", "--with-paths"],
               "stats": ["--build", "--json", "--with-paths"]}[command]
    for option in options:
        assert option in text
    assert text.count("\n  --") >= len(options)
    assert "(default: )" not in text and "(default: [])" not in text   # empty defaults say nothing


def test_regions_export_refuses_records_that_do_not_validate(tmp_path, capsys):
    t1, labels, affine = mni(2)
    write_pair(tmp_path / "pairs", "a", t1, labels, affine)
    build = tmp_path / "b"
    assert ingest(build, "--source", f"nifti:{tmp_path / 'pairs'}", "--modality", "MRI") == 0
    with sqlite3.connect(build / "catalog.sqlite") as conn:
        region_id, rec = conn.execute("SELECT id, record_json FROM regions ORDER BY id LIMIT 1").fetchone()
        broken = {**json.loads(rec), "side": "upstairs"}
        conn.execute("UPDATE regions SET record_json=? WHERE id=?", (json.dumps(broken), region_id))
    capsys.readouterr()
    assert main(["regions", "--build", str(build), "--out", str(tmp_path / "r.jsonl")]) == 1
    err = capsys.readouterr().err
    assert region_id in err and "side" in err
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == len(regions_of(build)) - 1
    assert main(["regions", "--build", str(tmp_path / "missing")]) == 2


def test_label_mapping_merges_values_and_skips_empty_names(tmp_path):
    """Left + right grey matter mapped to one name: one bilateral region per image; '' drops a label."""
    t1, labels, affine = mni(2)
    write_pair(tmp_path / "pairs", "a", t1, labels, affine)
    cfg = sources_toml(tmp_path / "s.toml", [{
        "name": "mni", "kind": "nifti", "path": "pairs", "modality": "MRI",
        "labels": {"1": "grey matter", "2": "grey matter", "3": "", "4": "right white matter"},
        "options": {"slice_policy": "every_n", "every_n": 10}}])
    build = tmp_path / "b"
    assert ingest(build, "--sources", str(cfg)) == 0
    regions = regions_of(build)
    assert {r["label"] for r in regions} == {"grey matter", "right white matter"}
    per_image = [(r["image_id"], r["label"]) for r in regions]
    assert len(per_image) == len(set(per_image))                       # one region per (image, name)
    grey = [r for r in regions if r["label"] == "grey matter"]
    assert all(r["label_value"] is None for r in grey)
    assert {r["side"] for r in grey} == {"bilateral"}
    assert all(r["n_components"] >= 2 for r in grey)
    assert {(r["label_value"], r["side"]) for r in regions if r["label"] == "right white matter"} == {(4, "right")}
    check_consistent(build)


def test_overlapping_masks_from_an_adapter_give_one_region_each(tmp_path):
    """Volumes with masks (DICOM SEG / RTSTRUCT style) may overlap; same-named masks are united."""
    from vgmed_build.config import normalise_options
    from vgmed_build.ingest.render import render_item
    from vgmed_build.sources.base import SourceSpec, Volume

    t1, labels, affine = mni(2)
    masks = {"tissue": labels > 0, "left gm": labels == 1, "right gm": labels == 2}
    spec = SourceSpec(name="m", kind="dicom", path=tmp_path, modality="MRI",
                      labels={"left gm": "grey matter", "right gm": "grey matter"},
                      options=normalise_options({"slice_policy": "every_n", "every_n": 15,
                                                 "max_area_ratio": 1.0}, "test"))
    vol = Volume(image=t1.astype(np.float32), affine=affine, modality="MR", masks=masks)
    images = render_item(spec, "series1", vol, tmp_path)
    regions = [r for img in images for r in img.regions]
    assert {r["label"] for r in regions} == {"tissue", "grey matter"}
    both = [img for img in images if {r["label"] for r in img.regions} == {"tissue", "grey matter"}]
    assert both, "overlapping masks must both give regions on the same image"
    for img in both:
        tissue, grey = sorted(img.regions, key=lambda r: r["label"] != "tissue")
        assert tissue["area_ratio"] > grey["area_ratio"]              # grey matter lies inside the tissue
        assert grey["side"] == "bilateral" and tissue["modality"] == "MRI"


def test_sagittal_slices_lie_in_their_hemisphere(tmp_path):
    t1, labels, affine = mni(2)
    write_pair(tmp_path / "pairs", "a", t1, labels, affine)
    cfg = sources_toml(tmp_path / "s.toml", [{"name": "mni", "kind": "nifti", "path": "pairs", "modality": "MRI",
                                               "labels": {str(v): n for v, n in LABELS.items()},
                                               "options": {"plane": "sagittal", "min_side_px": 0}}])
    assert ingest(tmp_path / "b", "--sources", str(cfg)) == 0
    regions = regions_of(tmp_path / "b")
    assert len(regions) == 4 and {r["plane"] for r in regions} == {"sagittal"}
    for r in regions:
        hemisphere = r["label"].split()[0]
        assert r["side"] == hemisphere
        # the slice's world x is its position: negative = patient left
        assert (r["slice_position_mm"] < 0) == (hemisphere == "left")
        assert r["width"] == labels.shape[1] and r["height"] == labels.shape[2]   # cols: y, rows: z
