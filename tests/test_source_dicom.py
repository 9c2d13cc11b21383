"""The DICOM adapter on real files: CT_small made into a series, highdicom SEGs, an RTSTRUCT with a
known square, the bundled liver SEG, a real CR radiograph, and broken inputs."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_fixtures import (
    CT_SMALL,
    SLICE_STEP,
    body_and_bone,
    contour,
    ct_series,
    hu,
    make_rtstruct,
    make_seg,
    square,
)
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from vgmed_build.sources import get_adapter
from vgmed_build.sources.base import Image2D, SourceError, SourceItem, SourceSpec, Volume

LIVER_SEG = Path(get_testdata_file("liver.dcm"))


def listed(root: Path, **kw) -> tuple[list[SourceItem], list[str]]:
    out = list(get_adapter("dicom").items(SourceSpec(name="dcm", kind="dicom", path=root, **kw)))
    return [o for o in out if isinstance(o, SourceItem)], [str(o) for o in out if isinstance(o, SourceError)]


def test_series_sorted_by_position_not_file_name(tmp_path):
    series = ct_series(tmp_path / "case1")
    make_seg(series, body_and_bone(series), ["body", "bone"], tmp_path / "case1_seg.dcm")
    items, errors = listed(tmp_path)
    assert errors == [] and [i.key for i in items] == ["case1"]
    vol = items[0].load()
    assert isinstance(vol, Volume) and vol.modality == "CT" and vol.image.shape == (128, 128, 5)
    for k, ds in enumerate(series):  # k-th slice in z order, whatever its file name
        assert np.allclose(vol.image[:, :, k], hu(ds).T)
    assert Path(series[0].filename).name == "IM0004.dcm"
    # voxel -> RAS: LPS x and y flipped, columns along i, slices along +z
    x0, y0, z0 = (float(v) for v in series[0].ImagePositionPatient)
    spacing = float(series[0].PixelSpacing[1])
    expected = np.array([[-spacing, 0, 0, -x0], [0, -spacing, 0, -y0], [0, 0, SLICE_STEP, z0], [0, 0, 0, 1]])
    assert np.allclose(vol.affine, expected)
    masks = body_and_bone(series)
    assert sorted(vol.masks) == ["body", "bone"]
    for k in range(5):
        assert np.array_equal(vol.masks["body"][:, :, k], masks[k, :, :, 0].T)
        assert np.array_equal(vol.masks["bone"][:, :, k], masks[k, :, :, 1].T)
    assert (vol.masks["body"] & vol.masks["bone"]).sum() == vol.masks["bone"].sum() > 0  # overlap kept


def test_seg_labels_mapped_and_modality_overridden(tmp_path):
    series = ct_series(tmp_path / "s", n=3)
    make_seg(series, body_and_bone(series), ["body", "bone"], tmp_path / "s" / "seg.dcm")
    items, _ = listed(tmp_path, labels={"bone": "skeleton"}, modality="CT (contrast)")
    vol = items[0].load()
    assert sorted(vol.masks) == ["body", "skeleton"] and vol.modality == "CT (contrast)"


def test_seg_without_source_references_is_placed_by_plane_position(tmp_path):
    series = ct_series(tmp_path / "s")
    make_seg(series, body_and_bone(series), ["body", "bone"], tmp_path / "seg.dcm")
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    for frame in seg.PerFrameFunctionalGroupsSequence:
        del frame.DerivationImageSequence
    seg.save_as(tmp_path / "seg.dcm")
    vol = listed(tmp_path)[0][0].load()
    masks = body_and_bone(series)
    for k in range(5):
        assert np.array_equal(vol.masks["bone"][:, :, k], masks[k, :, :, 1].T)


def test_rtstruct_square_with_hole_rasterised_where_expected(tmp_path):
    series = ct_series(tmp_path / "ct")
    outer = contour(square(40, 30, 60, 50), series[2])   # columns 40..59, rows 30..49 on slice 2
    hole = contour(square(45, 35, 50, 40), series[2])    # 5 x 5 hole (even-odd)
    marker = contour(square(5, 6, 8, 9), series[4])
    make_rtstruct(series, {"tumour": [(2, outer), (2, hole)], "marker": [(4, marker)]}, tmp_path / "rt.dcm")
    vol = listed(tmp_path)[0][0].load()
    tumour = vol.masks["tumour"]
    assert tumour.sum() == 400 - 25 and tumour[:, :, 2].sum() == 375
    cols, rows = np.nonzero(tumour[:, :, 2])  # volume axes are (column i, row j, slice k)
    assert (cols.min(), cols.max(), rows.min(), rows.max()) == (40, 59, 30, 49)
    assert not tumour[45:50, 35:40, 2].any() and tumour[44, 35, 2] and tumour[50, 39, 2]
    assert np.argwhere(vol.masks["marker"]).tolist() == [[i, j, 4] for i in range(5, 8) for j in range(6, 9)]


def test_rtstruct_contour_off_the_slices_is_an_error(tmp_path):
    series = ct_series(tmp_path / "ct", n=3)
    data = contour(square(40, 30, 60, 50), series[1])
    data[2::3] = [v + SLICE_STEP / 2 for v in data[2::3]]  # halfway between two slices
    make_rtstruct(series, {"tumour": [(1, data)]}, tmp_path / "rt.dcm")
    with pytest.raises(SourceError, match=r"^rt.dcm: a contour of ROI 'tumour' lies off"):
        listed(tmp_path)[0][0].load()


def test_bundled_liver_seg_read_onto_a_matching_series(tmp_path):
    """liver.dcm (pydicom-data) is a real 3-frame SEG whose CT is not shipped: rebuild the CT's
    geometry from the SEG's references and positions, then the frames must land on their slices."""
    seg = pydicom.dcmread(LIVER_SEG)
    base = pydicom.dcmread(CT_SMALL)
    (tmp_path / "ct").mkdir()
    series_uid = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    for n, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = series_uid
        ds.Rows = ds.Columns = 512
        ds.PixelSpacing = [0.810547, 0.810547]
        ds.ImagePositionPatient = frame.PlanePositionSequence[0].ImagePositionPatient
        ds.PixelData = np.zeros((512, 512), np.int16).tobytes()
        ds.save_as(tmp_path / "ct" / f"slice{2 - n}.dcm", enforce_file_format=True)
    shutil.copy(LIVER_SEG, tmp_path / "liver_seg.dcm")
    items, errors = listed(tmp_path)
    assert errors == []
    vol = items[0].load()
    assert list(vol.masks) == ["Liver"] and vol.image.shape == (512, 512, 3)
    frames = seg.pixel_array  # frame 0 is the lowest slice (z = -128.69)
    for k in range(3):
        assert np.array_equal(vol.masks["Liver"][:, :, k], frames[k].T.astype(bool))
    assert [int(vol.masks["Liver"][:, :, k].sum()) for k in range(3)] == [36233, 35645, 35220]


def test_seg_whose_series_is_missing(tmp_path):
    shutil.copy(LIVER_SEG, tmp_path / "liver.dcm")
    items, errors = listed(tmp_path)
    assert items == []
    assert errors == ["liver.dcm: the image series this SEG references is not under the source root"]


def test_truncated_and_non_dicom_files_are_skipped_and_the_series_goes_on(tmp_path):
    series = ct_series(tmp_path / "ct")
    make_seg(series, body_and_bone(series), ["body", "bone"], tmp_path / "seg.dcm")
    middle = Path(series[2].filename)
    middle.write_bytes(middle.read_bytes()[:-1000])
    (tmp_path / "ct" / "notes.bin").write_bytes(b"scanner export log\n" * 20)
    items, errors = listed(tmp_path)
    assert len(errors) == 2
    assert errors[0] == (
        "ct/IM0000.dcm: pixel data is 31906 bytes, the header needs 32768 (truncated file?); skipped"
    )
    assert errors[1] == "ct/notes.bin: not a DICOM file (no DICM preamble); skipped"
    assert [p.name for p in items[0].files if p.parent.name == "ct"] == [
        "IM0001.dcm", "IM0002.dcm", "IM0003.dcm", "IM0004.dcm"]
    vol = items[0].load()
    assert vol.image.shape == (128, 128, 5)  # the missing slice keeps its place as a blank
    assert np.allclose(vol.image[:, :, 3], hu(series[3]).T)
    assert vol.image[:, :, 2].max() == vol.image.min() and not vol.masks["body"][:, :, 2].any()


def test_inconsistent_geometry_and_duplicate_positions(tmp_path):
    series = ct_series(tmp_path / "ct", n=3)
    make_seg(series, body_and_bone(series), ["body", "bone"], tmp_path / "seg.dcm")
    odd = pydicom.dcmread(series[1].filename)
    odd.PixelSpacing = [0.7, 0.7]
    odd.save_as(series[1].filename)
    with pytest.raises(SourceError, match=r"^ct: inconsistent slice geometry \(ct/IM0002.dcm differs"):
        listed(tmp_path)[0][0].load()
    odd.PixelSpacing = series[0].PixelSpacing
    odd.ImagePositionPatient = series[2].ImagePositionPatient
    odd.save_as(series[1].filename)
    with pytest.raises(SourceError, match=r"two slices at the same position"):
        listed(tmp_path)[0][0].load()


def test_empty_segment_is_an_error_unless_skipped(tmp_path):
    series = ct_series(tmp_path / "ct", n=3)
    masks = body_and_bone(series)
    masks[..., 1] = False
    masks[0, 0, 0, 1] = True  # highdicom refuses all-empty segments; empty it after writing
    make_seg(series, masks, ["body", "bone"], tmp_path / "seg.dcm")
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    frames = seg.pixel_array
    bone_frames = [n for n, f in enumerate(seg.PerFrameFunctionalGroupsSequence)
                   if f.SegmentIdentificationSequence[0].ReferencedSegmentNumber == 2]
    frames[bone_frames] = 0
    seg.PixelData = pydicom.pixels.pack_bits(frames)
    seg.save_as(tmp_path / "seg.dcm")
    with pytest.raises(SourceError, match=r"^seg.dcm: segment 'bone' is empty"):
        listed(tmp_path)[0][0].load()
    vol = listed(tmp_path, options={"skip_empty": True})[0][0].load()
    assert list(vol.masks) == ["body"]


def test_series_without_annotation_and_two_series_in_one_folder(tmp_path):
    a = ct_series(tmp_path / "mixed", n=2)
    b_folder = tmp_path / "tmp_b"
    b = ct_series(b_folder, n=2)
    for ds in b:
        shutil.move(ds.filename, tmp_path / "mixed" / f"B{Path(ds.filename).name}")
    b_folder.rmdir()
    make_seg(a, body_and_bone(a), ["body", "bone"], tmp_path / "seg.dcm")
    items, errors = listed(tmp_path)
    # series are numbered by their first file name: the B* files come first
    assert [i.key for i in items] == ["mixed#series2"]
    assert errors == ["mixed#series1: image series without a SEG or RTSTRUCT; nothing to ingest"]


def test_single_series_folder_as_root(tmp_path):
    series = ct_series(tmp_path / "case7", n=2)
    make_seg(series, body_and_bone(series), ["body", "bone"], tmp_path / "case7" / "seg.dcm")
    items, errors = listed(tmp_path / "case7")
    assert errors == [] and [i.key for i in items] == ["case7"]


def test_2d_radiograph_pairs_with_mask_files(tmp_path):
    """A real CR chest radiograph (MONOCHROME1, windowed by its header) with a lung mask PNG."""
    shutil.copy(get_testdata_file("RG1_UNCR.dcm"), tmp_path / "chest1.dcm")
    ds = pydicom.dcmread(tmp_path / "chest1.dcm")
    mask = np.zeros((ds.Rows, ds.Columns), np.uint8)
    mask[400:1200, 300:800] = 255
    (tmp_path / "masks").mkdir()
    Image.fromarray(mask).save(tmp_path / "masks" / "chest1_lung.png")
    items, errors = listed(tmp_path, labels={"lung": "right lung"})
    assert errors == [] and [i.key for i in items] == ["chest1.dcm"]
    img = items[0].load()
    assert isinstance(img, Image2D) and img.modality == "X-ray"
    assert img.pixels.dtype == np.uint8 and img.pixels.shape == (ds.Rows, ds.Columns)
    assert np.array_equal(img.masks["right lung"], mask > 0)
    raw = ds.pixel_array.astype(float)
    # MONOCHROME1: the highest raw values display darkest
    assert img.pixels[raw == raw.max()].mean() < img.pixels[raw == raw.min()].mean()

    (tmp_path / "masks" / "chest1_lung.png").unlink()
    items, errors = listed(tmp_path)
    assert items == [] and errors == [
        "chest1.dcm: 2D DICOM image without mask files (looked for masks/{stem}_{label}.png)"]


def test_no_header_values_in_keys_or_messages(tmp_path):
    series = ct_series(tmp_path / "ct", n=3)
    make_seg(series, body_and_bone(series), ["body", "bone"], tmp_path / "seg.dcm")
    shutil.copy(LIVER_SEG, tmp_path / "other_seg.dcm")
    Path(series[0].filename).write_bytes(Path(series[0].filename).read_bytes()[:3000])
    items, errors = listed(tmp_path)
    uids = {series[0].SeriesInstanceUID, series[0].SOPInstanceUID, series[0].StudyInstanceUID}
    text = " ".join(errors + [i.key for i in items] + [repr(i) for i in items])
    for value in (*uids, str(series[0].PatientName), series[0].PatientID, "JANCT", generate_uid()[:20]):
        assert value not in text


def test_sagittal_series_geometry_and_contours(tmp_path):
    """A sagittal stack (IOP rows along +y, columns along -z, normal -x): the affine must send every
    voxel to its patient position, and contours drawn in patient mm must land on the right pixels."""
    series = ct_series(tmp_path / "sag", n=4)
    for k, ds in enumerate(series):
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.ImagePositionPatient = [30.0 - 3.0 * k, -60.0, 40.0]   # slices step along the normal (-x)
        ds.save_as(ds.filename)
    make_rtstruct(series, {"box": [(1, contour_sagittal(series[1], square(10, 20, 30, 25)))]}, tmp_path / "rt.dcm")
    vol = listed(tmp_path)[0][0].load()
    spacing = float(series[0].PixelSpacing[0])
    for k, ds in enumerate(series):
        lps = np.array([float(v) for v in ds.ImagePositionPatient])
        assert np.allclose(vol.affine @ [0, 0, k, 1], [-lps[0], -lps[1], lps[2], 1])
        assert np.allclose(vol.image[:, :, k], hu(ds).T)
    i, j = 7, 11  # column 7 is 7 steps along +y (RAS y = -LPS y); row 11 is 11 steps along -z
    x, y, z = (float(v) for v in series[2].ImagePositionPatient)
    assert np.allclose(vol.affine @ [i, j, 2, 1], [-x, -(y + i * spacing), z - j * spacing, 1])
    cols, rows, ks = np.nonzero(vol.masks["box"])
    assert set(ks) == {1} and (cols.min(), cols.max(), rows.min(), rows.max()) == (10, 29, 20, 24)


def contour_sagittal(ds, corners):
    """Voxel (column i, row j) corners on a sagittal slice -> LPS ContourData (mm)."""
    x0, y0, z0 = (float(v) for v in ds.ImagePositionPatient)
    step = float(ds.PixelSpacing[0])
    return [v for i, j in corners for v in (x0, y0 + i * step, z0 - j * step)]
