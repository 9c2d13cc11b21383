"""End to end through `vgmed-build ingest` for the DICOM and 2D-image source kinds: boxes where the
geometry says, errors recorded without stopping the run, and no DICOM header value anywhere in the
build (catalog bytes, PNG bytes, region export)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
from dicom_fixtures import HEADER_STRINGS, body_and_bone, contour, ct_series, make_rtstruct, make_seg, square
from ingest_fixtures import ingest
from PIL import Image
from pydicom.data import get_testdata_file
from test_source_images2d import disc_mask, retina, write

from vgmed_build.catalog import open_catalog
from vgmed_build.cli import main
from vgmed_build.resources import schema_errors


def regions(build: Path) -> list[dict]:
    with open_catalog(build) as catalog:
        return list(catalog.regions())


def build_bytes(build: Path) -> bytes:
    """Every byte the build holds: catalog (and any journal) plus images."""
    return b"".join(p.read_bytes() for p in sorted(build.rglob("*")) if p.is_file())


def png_chunks(path: Path) -> list[bytes]:
    data, pos, out = path.read_bytes(), 8, []
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        out.append(data[pos + 4:pos + 8])
        pos += 12 + length
    return out


def test_dicom_series_seg_rtstruct_end_to_end(tmp_path, capsys):
    src = tmp_path / "src"
    series = ct_series(src / "ct")
    make_seg(series, body_and_bone(series), ["body", "bone"], src / "seg.dcm")
    make_rtstruct(series, {"tumour": [(2, contour(square(40, 30, 60, 50), series[2]))]}, src / "rt.dcm")
    build = tmp_path / "build"
    assert ingest(build, "--source", f"dicom:{src}") == 0
    found = {r["label"]: r for r in regions(build)}
    assert set(found) == {"tumour", "bone"}  # 'body' covers > 40% of the image: dropped by max_area_ratio
    tumour = found["tumour"]
    # CT_small is axial with IOP (1,0,0 / 0,1,0): stored columns already run to the patient's left,
    # which is the radiological display, so the square keeps its pixel box; it lies at x < centre
    # in LPS, i.e. on the patient's right.
    # 128 x 128 px at 0.66 mm, rendered at a quarter of that (min_side_px 512): every edge x 4.
    assert (tumour["width"], tumour["height"]) == (512, 512)
    assert tumour["boxes"] == [[4 * 40, 4 * 30, 4 * 60, 4 * 50]] and tumour["side"] == "right"
    assert tumour["slice_index"] == 2 and tumour["plane"] == "axial"
    z0 = float(series[0].ImagePositionPatient[2])
    assert abs(tumour["slice_position_mm"] - (z0 + 10.0)) < 1e-3
    assert tumour["area_ratio"] == round(400 / 128**2, 6) and tumour["modality"] == "CT"
    assert tumour["source"]["item"] == "ct" and tumour["source"]["kind"] == "dicom"
    assert all(schema_errors("region", r) == [] for r in found.values())

    # rerun: unchanged, nothing duplicated
    capsys.readouterr()
    assert ingest(build, "--source", f"dicom:{src}") == 0
    assert "0 ingested, 1 unchanged" in capsys.readouterr().out
    assert len(regions(build)) == 2

    # no header value anywhere: catalog bytes, PNG bytes, exported regions
    assert main(["regions", "--build", str(build)]) == 0
    exported = capsys.readouterr().out
    blob = build_bytes(build) + exported.encode()
    ds = series[0]
    forbidden = [*HEADER_STRINGS, str(ds.PatientName), ds.PatientID, ds.StudyInstanceUID,
                 ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID, ds.StudyDate]
    for value in forbidden:
        assert value.encode() not in blob, value
    for png in (build / "images").rglob("*.png"):
        assert set(png_chunks(png)) <= {b"IHDR", b"PLTE", b"IDAT", b"IEND"}


def test_dicom_bad_files_become_error_records_and_the_run_goes_on(tmp_path, capsys):
    src = tmp_path / "src"
    series = ct_series(src / "ct")
    make_rtstruct(series, {"tumour": [(3, contour(square(40, 30, 60, 50), series[3]))]}, src / "rt.dcm")
    truncated = Path(series[1].filename)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    (src / "ct" / "export.log").write_text("not an image\n")
    shutil.copy(get_testdata_file("liver.dcm"), src / "orphan_seg.dcm")
    build = tmp_path / "build"
    assert ingest(build, "--source", f"dicom:{src}") == 1  # something failed
    assert [r["label"] for r in regions(build)] == ["tumour"]  # ... and the good series still went in
    capsys.readouterr()
    assert main(["stats", "--build", str(build), "--json", "--with-paths"]) == 1
    errors = {e["item"]: e["message"] for e in json.loads(capsys.readouterr().out)["errors"]}
    assert set(errors) == {f"ct/{truncated.name}", "ct/export.log", "orphan_seg.dcm"}
    assert "truncated" in errors[f"ct/{truncated.name}"] and "not a DICOM file" in errors["ct/export.log"]
    assert "references is not under the source root" in errors["orphan_seg.dcm"]
    blob = build_bytes(build)
    for value in ("JANCT000", *HEADER_STRINGS):
        assert value.encode() not in blob


def test_2d_ultrasound_dicom_end_to_end(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(get_testdata_file("US1_UNCR.dcm"), src / "us1.dcm")
    ds = pydicom.dcmread(src / "us1.dcm")
    mask = np.zeros((ds.Rows, ds.Columns), np.uint8)
    mask[100:180, 200:330] = 1
    write(src / "masks" / "us1_cyst.png", mask)
    build = tmp_path / "build"
    assert ingest(build, "--source", f"dicom:{src}") == 0
    (region,) = regions(build)
    assert region["label"] == "cyst" and region["modality"] == "Ultrasound" and region["plane"] == "2d"
    assert region["boxes"] == [[200, 100, 330, 180]] and region["side"] == "unknown"
    png = np.asarray(Image.open(build / region["image"]))
    assert png.shape == (480, 640, 3) and np.array_equal(png, ds.pixel_array)
    blob = build_bytes(build)
    for value in (str(ds.PatientName), str(ds.get("InstitutionName")), ds.SOPInstanceUID):
        assert value.encode() not in blob


def test_images2d_fundus_end_to_end(tmp_path):
    src = tmp_path / "fundus"
    pixels = retina(src)
    write(src / "masks" / "eye1_disc.png", disc_mask())
    rgb = np.stack([disc_mask()] * 3, axis=-1)
    rgb[..., 0] = 0
    retina(src, "images/eye2.jpg")
    write(src / "masks" / "eye2_disc.png", rgb)  # an RGB mask: an error record, not a crash
    build = tmp_path / "build"
    assert ingest(build, "--source", f"images2d:{src}", "--modality", "Fundus") == 1
    (region,) = regions(build)
    assert region["boxes"] == [[3 * 120, 3 * 40, 3 * 150, 3 * 70]] and region["label"] == "disc"  # 160 px: x 3
    assert region["modality"] == "Fundus" and region["side"] == "unknown"
    assert region["source"]["item"] == "images/eye1.jpg"
    # Enlarged x 3 linearly with pixel edges aligned: every third pixel, from the second, is the source's.
    png = np.asarray(Image.open(build / region["image"]))
    assert png.shape == (3 * pixels.shape[0], 3 * pixels.shape[1], 3) and np.array_equal(png[1::3, 1::3], pixels)
    with open_catalog(build) as catalog:
        messages = [f"{p}: {m}" for p, m in catalog.conn.execute("SELECT path, message FROM errors")]
    assert len(messages) == 1 and messages[0].startswith("masks/eye2_disc.png: RGB mask")


def test_bundled_dicom_sample(tmp_path):
    """The sample in vgmed_build/sample/dicom: small, ingests cleanly, boxes match the SEG frames
    read independently with plain pydicom, sides from the geometry, no header value in the build."""
    import vgmed_build
    from vgmed_build.config import load_sources_file
    from vgmed_build.ingest.run import run_ingest

    sample = Path(vgmed_build.__file__).parent / "sample"
    assert sum(p.stat().st_size for p in (sample / "dicom").rglob("*") if p.is_file()) < 1_000_000
    specs = [s for s in load_sources_file(sample / "sources.toml") if s.kind == "dicom"]
    assert [s.name for s in specs] == ["ct-seg"]
    build = tmp_path / "build"
    report = run_ingest(build, specs, progress=False)
    assert report.errors == [] and report.done == 1
    found = {r["label"]: r for r in regions(build)}
    assert found["aorta"]["side"] == "left" and found["vertebra"]["side"] == "midline"
    assert found["aorta"]["display_name"] == "descending aorta" and found["vertebra"]["category"] == "bone"
    seg = pydicom.dcmread(next((sample / "dicom" / "seg").glob("*.dcm")))
    frames = seg.pixel_array
    for number, label in ((1, "vertebra"), (2, "aorta")):
        first = next(n for n, f in enumerate(seg.PerFrameFunctionalGroupsSequence)
                     if f.SegmentIdentificationSequence[0].ReferencedSegmentNumber == number)
        rows, cols = np.nonzero(frames[first])
        k = found[label]["width"] // frames.shape[2]  # 128 px rendered at 512: x 4
        assert k == 4 and found[label]["height"] == k * frames.shape[1]
        assert found[label]["boxes"] == [[k * cols.min(), k * rows.min(), k * (cols.max() + 1), k * (rows.max() + 1)]]
    blob = build_bytes(build)
    for value in HEADER_STRINGS:
        assert value.encode() not in blob


def test_quick_dicom_source_is_not_named_after_its_folder(tmp_path):
    """DICOM folders often carry the patient's name; a quick --source must not turn it into the dataset name."""
    from vgmed_build.config import parse_source_flag

    folder = tmp_path / "DOE^JOHN_12345"
    folder.mkdir()
    spec = parse_source_flag(f"dicom:{folder}")
    assert "DOE" in str(spec.path) and "DOE" not in spec.name and spec.name.startswith("dicom-")
    assert parse_source_flag(f"dicom:{folder}").name == spec.name  # stable across runs (resume)
    nifti = tmp_path / "Task03_Liver"
    nifti.mkdir()
    assert parse_source_flag(f"msd:{nifti}").name == "Task03_Liver"
