"""CT windows on the review screen (issue 22): ingest keeps each CT slice's Hounsfield units beside its
PNG, the review renders soft tissue / lung / bone from them (not from the released, windowed PNG), the
task carries them for config.xml's window switch, and the release stays as it was. The browser half is
tests/test_review_browser.py."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from ingest_fixtures import SAMPLE_DIR, SAMPLE_SOURCES, ingest
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image

from vgmed_build.catalog import open_catalog
from vgmed_build.cli import main
from vgmed_build.ctslices import HU_OFFSET, decode_hu, encode_hu, hu_path
from vgmed_build.imaging import ct_window, to_uint8
from vgmed_build.ingest.run import delete_image
from vgmed_build.review.images import IMAGE_KEY, REVIEW_WINDOWS, WINDOW_KEYS, review_images, window_choice
from vgmed_build.review.pull import rewritten
from vgmed_build.review.state import load_drafts
from vgmed_build.review.tasks import AS_RELEASED, content_hash, label_config, task_data


def test_units_round_trip_as_16_bit_png():
    values = np.array([[-1024.4, 0.5, 3071.0], [np.nan, 40000.0, -40000.0]], dtype=np.float32)
    data = encode_hu(values)
    with Image.open(io.BytesIO(data)) as im:
        stored = np.asarray(im, dtype=np.int64)
        assert im.size == (3, 2) and not im.info.get("dpi") and not getattr(im, "text", {})
    assert stored.tolist() == [[-1024 + HU_OFFSET, 0 + HU_OFFSET, 3071 + HU_OFFSET], [-1024 + HU_OFFSET, 65535, 0]]
    assert decode_hu(data).tolist() == [[-1024, 0, 3071], [-1024, 32767, -32768]]
    with pytest.raises(ValueError, match="2D"):
        encode_hu(np.zeros((2, 2, 2)))


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ctwin")
    build = root / "b"
    assert ingest(build, "--sources", str(SAMPLE_SOURCES)) == 0
    assert main(["generate", "--build", str(build), "--no-progress"]) == 0
    return build


def _images(build: Path) -> list[dict]:
    catalog = open_catalog(build)
    return [{"path": p, "modality": json.loads(r)["modality"]}
            for p, r in catalog.conn.execute("SELECT path, record_json FROM images")]


def test_ingest_keeps_the_units_of_ct_slices_only(sample):
    images = _images(sample)
    for img in images:
        assert (sample / hu_path(img["path"])).exists() == (img["modality"] == "CT"), img
    (ct,) = [i["path"] for i in images if i["modality"] == "CT"]
    units = decode_hu((sample / hu_path(ct)).read_bytes())
    released = np.asarray(Image.open(sample / ct)).astype(int)
    assert units.shape == released.shape
    # The release PNG is these units in the source's window (mediastinum, sources.toml), to a grey level.
    assert np.abs(to_uint8(units, *ct_window("mediastinum")).astype(int) - released).max() <= 1
    # Independent check against the DICOM itself: the units are its rescaled values, enlarged (linear).
    ds = pydicom.dcmread(sorted((SAMPLE_DIR / "dicom" / "ct").iterdir())[0])
    source = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert source.min() - 1 <= units.min() and units.max() <= source.max() + 1
    assert abs(units.mean() - source.mean()) < 0.01 * (source.max() - source.min())
    # What the release window clips is in the units: the lung window spreads what the release shows black.
    assert len(np.unique(to_uint8(units, *ct_window("lung"))[released == 0])) > 50


def test_the_release_takes_none_of_the_review_files(sample, tmp_path):
    catalog = open_catalog(sample)
    for row in load_drafts(catalog):
        review_images(sample, row)  # what a push writes
    assert list((sample / "images" / "_review").rglob("*.lung.*.png"))
    out = tmp_path / "rel"
    assert main(["release", "--build", str(sample), "--out", str(out), "--include-unreviewed",
                 "--created", "2026-01-01T00:00:00Z"]) == 0
    shipped = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert shipped and not any("_hu" in p or "_review" in p for p in shipped)


def test_a_ct_draft_gets_one_view_per_window_with_its_boxes(sample):
    catalog = open_catalog(sample)
    rows = load_drafts(catalog)
    ct = next(r for r in rows if r.draft["modality"] == "CT" and r.draft["boxes"])
    mri = next(r for r in rows if r.draft["modality"] == "MRI")
    assert set(review_images(sample, mri)) == {IMAGE_KEY}
    assert set(review_images(sample, ct, windows=False)) == {IMAGE_KEY}
    shown = review_images(sample, ct)
    assert set(shown) == {IMAGE_KEY, *WINDOW_KEYS}
    units = decode_hu((sample / hu_path(ct.draft["image"])).read_bytes())
    x0, y0, x1, y1 = ct.draft["boxes"][0]
    for name, key in zip(REVIEW_WINDOWS, WINDOW_KEYS, strict=True):
        view = np.asarray(Image.open(sample / shown[key]).convert("RGB")).astype(int)
        assert view.shape[:2] == units.shape  # boxes keep their pixels
        expected = to_uint8(units, *ct_window(name)).astype(int)
        inner = (slice(y0 + 3, y1 - 3), slice(x0 + 3, x1 - 3))
        assert (view[inner] == expected[inner][..., None]).all(), name  # grey, exactly the window
        assert tuple(view[y0, (x0 + x1) // 2]) == (0xFF, 0x3B, 0x30)  # the box, in box 1's red
    # A second push reuses the views.
    mtimes = {k: (sample / p).stat().st_mtime_ns for k, p in shown.items()}
    assert review_images(sample, ct) == shown
    assert {k: (sample / p).stat().st_mtime_ns for k, p in shown.items()} == mtimes


def test_task_data_offers_the_windows_and_pull_checks_them(sample):
    rows = load_drafts(open_catalog(sample))
    ct = next(r for r in rows if r.draft["modality"] == "CT" and r.draft["boxes"])
    urls = {IMAGE_KEY: "/i.png", **{k: f"/{k}.png" for k in WINDOW_KEYS}}
    data = task_data(ct, urls)
    assert [w["value"] for w in data["windows"]] == [AS_RELEASED, "soft tissue W400 L50", "lung W1500 L-600",
                                                     "bone W1800 L400"]
    assert data["window_lung"] == "/window_lung.png" and data["window_title"]
    plain = task_data(ct, "/i.png")  # uploaded images, or no units: no switch, but every key config.xml names
    assert plain["windows"] == [] and plain["window_title"] == "" and all(plain[k] == "" for k in WINDOW_KEYS)
    pushed = {**data, "vgmed_hash": content_hash(ct, "")}
    assert rewritten(pushed, ct, pushed["vgmed_hash"]) is None
    assert rewritten({**pushed, "windows": []}, ct, pushed["vgmed_hash"]) is not None
    assert rewritten({**plain, "vgmed_hash": content_hash(ct, "")}, ct, None) is None


def test_the_config_switches_between_the_windows_it_is_given():
    config = label_config()
    for name in REVIEW_WINDOWS:
        # the switch's value, the view it shows and that view's image
        assert f'[data-value="{window_choice(name)}"]) .vgmed-window-{name}' in config
        assert re.search(rf'vgmed-window-{name}">\s*<Image name="window_{name}" value="\$window_{name}"', config)
    objects = [o.name for o in LabelInterface(config).objects]
    assert objects == [IMAGE_KEY, *WINDOW_KEYS]
    # Uploaded images: Label Studio takes uploads only for a project with one data object.
    plain = LabelInterface(label_config(windows=False))
    plain.validate()
    assert [o.name for o in plain.objects] == [IMAGE_KEY] and "window" not in {c.name for c in plain.controls}


def test_an_image_ingest_drops_takes_its_units_along(tmp_path):
    png, units = tmp_path / "images/ct/a.png", tmp_path / hu_path("images/ct/a.png")
    for p in (png, units):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    delete_image(tmp_path, "images/ct/a.png")
    assert not png.exists() and not units.exists()
    delete_image(tmp_path, "images/mr/b.png")  # an image without units: nothing to do, no error
