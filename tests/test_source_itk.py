"""ITK formats (MHA, MHD + raw, NRRD, 3D Slicer .seg.nrrd) give the same regions as the NIfTI of the volume.

The ITK files are written by SimpleITK itself from the NIfTI files (SimpleITK reads NIfTI into its LPS
geometry and writes that geometry out), so the LPS -> RAS conversion under test is checked against
SimpleITK's own, not against a copy of our code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from ingest_fixtures import LABELS, facts, flip_x, ingest, mni, save, write_pair

from vgmed_build.cli import main
from vgmed_build.sources.volumes import read_volume


def convert(nifti: Path, target: Path) -> Path:
    """SimpleITK reads the NIfTI file and writes it in the target's format (its own LPS geometry)."""
    sitk.WriteImage(sitk.ReadImage(str(nifti)), str(target))
    return target


def slicer_seg(nifti_labels: Path, target: Path, names: dict[int, str], crop: bool) -> Path:
    """A 3D Slicer style segmentation: label map + Segment<N>_* header fields, cropped to the extent."""
    img = sitk.ReadImage(str(nifti_labels))
    if crop:  # Slicer may store only the segments' extent; the origin moves with it
        arr = sitk.GetArrayFromImage(img)
        nz = np.nonzero(arr)
        lo = [int(a.min()) for a in nz][::-1]
        hi = [int(a.max()) for a in nz][::-1]
        img = sitk.RegionOfInterest(img, [h - lo_ + 1 for lo_, h in zip(lo, hi, strict=True)], lo)
    for n, (value, name) in enumerate(sorted(names.items())):
        img.SetMetaData(f"Segment{n}_ID", f"Segment_{value}")
        img.SetMetaData(f"Segment{n}_Name", name)
        img.SetMetaData(f"Segment{n}_LabelValue", str(value))
        img.SetMetaData(f"Segment{n}_Layer", "0")
    img.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    sitk.WriteImage(img, str(target), True)
    return target


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> dict:
    """The MNI template (left grey matter brightened: an asymmetric picture) as RAS and LAS NIfTI pairs."""
    t1, labels, affine = mni(2)
    image = np.clip(t1.astype(np.int16) + 40 * (labels == 1), 0, 255).astype(np.uint8)
    root = tmp_path_factory.mktemp("nifti")
    write_pair(root / "pairs", "ras", image, labels, affine)
    f_image, f_affine = flip_x(image, affine)
    write_pair(root / "pairs", "las", f_image, flip_x(labels, affine)[0], f_affine)
    build = root / "b"
    assert ingest(build, "--source", f"nifti:{root / 'pairs'}", "--modality", "MRI") == 0
    reference = facts(build)
    assert reference["ras.nii.gz"] == reference["las.nii.gz"]
    return {"pairs": root / "pairs", "reference": reference["ras.nii.gz"], "labels": labels, "affine": affine}


def _named(reference: dict, names: dict[int, str]) -> dict:
    """The NIfTI reference with labels renamed as label_<value> -> name (the sources file's labels)."""
    return {(names.get(int(k[0].removeprefix("label_")), k[0]),) + k[1:]: v for k, v in reference.items()}


@pytest.mark.parametrize("ext", [".mha", ".mhd", ".nrrd"])
def test_itk_formats_give_the_nifti_regions_boxes_sides_and_pixels(volumes, tmp_path, ext):
    folder = tmp_path / "itk"
    folder.mkdir()
    for case in ("ras", "las"):
        convert(volumes["pairs"] / f"{case}.nii.gz", folder / f"{case}{ext}")
        convert(volumes["pairs"] / f"{case}_seg.nii.gz", folder / f"{case}_seg{ext}")
    if ext == ".mhd":
        assert sorted(p.suffix for p in folder.glob("ras.*")) == [".mhd", ".raw"]
    build = tmp_path / "b"
    assert ingest(build, "--source", f"nifti:{folder}", "--modality", "MRI") == 0
    got = facts(build)
    assert set(got) == {f"ras{ext}", f"las{ext}"}
    for item in got.values():
        assert item == volumes["reference"]
    sides = {k[0]: v[0] for k, v in volumes["reference"].items() if k[1] == "axial"}
    assert sides == {"label_1": "left", "label_2": "right", "label_3": "left", "label_4": "right"}


def test_reader_converts_lps_to_the_nifti_affine(volumes, tmp_path):
    """Independent check of the geometry: RAS affine of the MHA == nibabel's affine, data [i, j, k]."""
    for case in ("ras", "las"):
        nifti = read_volume(volumes["pairs"] / f"{case}_seg.nii.gz", volumes["pairs"], "label map")
        mha = read_volume(convert(volumes["pairs"] / f"{case}_seg.nii.gz", tmp_path / f"{case}.mha"), tmp_path, "x")
        np.testing.assert_allclose(mha.affine, nifti.affine, atol=1e-4)
        np.testing.assert_array_equal(mha.data, np.asarray(nifti.data))
    # A voxel's world position from SimpleITK (LPS) is ours (RAS) with x and y negated.
    img = sitk.ReadImage(str(tmp_path / "las.mha"))
    ours = read_volume(tmp_path / "las.mha", tmp_path, "x").affine
    for ijk in ([0, 0, 0], [10, 20, 30], [96, 1, 90]):
        lps = np.array(img.TransformIndexToPhysicalPoint(ijk))
        np.testing.assert_allclose(ours @ np.array([*ijk, 1.0]), [*(lps * [-1, -1, 1]), 1.0], atol=1e-4)


@pytest.mark.parametrize("crop", [False, True])
def test_slicer_seg_nrrd_names_segments_from_its_header(volumes, tmp_path, crop):
    folder = tmp_path / "slicer"
    folder.mkdir()
    for case in ("ras", "las"):
        convert(volumes["pairs"] / f"{case}.nii.gz", folder / f"{case}.nrrd")
        slicer_seg(volumes["pairs"] / f"{case}_seg.nii.gz", folder / f"{case}.seg.nrrd", LABELS, crop)
    assert "Segment0_Name:=left grey matter" in (folder / "ras.seg.nrrd").read_bytes()[:4000].decode("latin-1")
    if crop:
        sizes = {sitk.ReadImage(str(folder / n)).GetSize() for n in ("ras.seg.nrrd", "ras.nrrd")}
        assert len(sizes) == 2
    build = tmp_path / "b"
    assert ingest(build, "--source", f"nifti:{folder}", "--modality", "MRI") == 0
    got = facts(build)
    assert set(got) == {"ras.nrrd", "las.nrrd"}
    expected = _named(volumes["reference"], LABELS)
    for item in got.values():
        assert item == expected
    assert {k[0]: v[0] for k, v in expected.items()} == {
        "left grey matter": "left", "right grey matter": "right",
        "left white matter": "left", "right white matter": "right"}


def test_slicer_layers_give_overlapping_segments(volumes, tmp_path):
    """Overlapping segments are stored by Slicer in layers (a 4th axis): one mask per segment."""
    folder = tmp_path / "layers"
    folder.mkdir()
    convert(volumes["pairs"] / "ras.nii.gz", folder / "brain.nrrd")
    ref = sitk.ReadImage(str(volumes["pairs"] / "ras_seg.nii.gz"))
    labels = sitk.GetArrayFromImage(ref)
    layer0 = (labels == 1).astype(np.uint8)                        # left grey matter, value 1
    layer1 = np.where(np.isin(labels, [1, 3]), 2, 0).astype(np.uint8)  # left hemisphere (overlaps), value 2
    layers = [sitk.GetImageFromArray(a) for a in (layer0, layer1)]
    for layer in layers:
        layer.CopyInformation(ref)
    seg = sitk.Compose(layers)
    for key, value in {"Segment0_Name": "left grey matter", "Segment0_LabelValue": "1", "Segment0_Layer": "0",
                       "Segment1_Name": "left hemisphere", "Segment1_LabelValue": "2", "Segment1_Layer": "1"}.items():
        seg.SetMetaData(key, value)
    sitk.WriteImage(seg, str(folder / "brain.seg.nrrd"), True)
    build = tmp_path / "b"
    assert ingest(build, "--source", f"nifti:{folder}", "--modality", "MRI") == 0
    got = facts(build)["brain.nrrd"]
    assert {k[0] for k in got} == {"left grey matter", "left hemisphere"}
    assert {v[0] for v in got.values()} == {"left"}
    reference = {k[1:]: v for k, v in volumes["reference"].items() if k[0] == "label_1"}
    assert {k[1:]: v[:4] for k, v in got.items() if k[0] == "left grey matter"} == {
        k: v[:4] for k, v in reference.items()}


def test_nnunet_v2_file_ending_mha(volumes, tmp_path):
    root = tmp_path / "Dataset001_MNI"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    convert(volumes["pairs"] / "ras.nii.gz", root / "imagesTr" / "mni_0000.mha")
    convert(volumes["pairs"] / "ras_seg.nii.gz", root / "labelsTr" / "mni.mha")
    save(root / "labelsTr" / "other.nii.gz", volumes["labels"], volumes["affine"])  # not the file_ending: ignored
    meta = {"channel_names": {"0": "T1"}, "labels": {"background": 0, **{n: v for v, n in LABELS.items()}},
            "numTraining": 1, "file_ending": ".mha"}
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    build = tmp_path / "b"
    assert ingest(build, "--source", f"msd:{root}") == 0
    got = facts(build)
    assert set(got) == {"imagesTr/mni_0000.mha"}
    assert got["imagesTr/mni_0000.mha"] == _named(volumes["reference"], LABELS)

    meta["file_ending"] = ".jpg"  # lossy: nnU-Net refuses it too
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    assert ingest(tmp_path / "b2", "--source", f"msd:{root}") == 1


def test_unreadable_itk_files_are_errors_naming_the_file(volumes, tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    convert(volumes["pairs"] / "ras.nii.gz", folder / "good.mha")
    convert(volumes["pairs"] / "ras_seg.nii.gz", folder / "good_seg.mha")
    (folder / "broken.mha").write_bytes((folder / "good.mha").read_bytes()[:5000])
    convert(volumes["pairs"] / "ras_seg.nii.gz", folder / "broken_seg.mha")
    convert(volumes["pairs"] / "ras.nii.gz", folder / "flat.nrrd")
    slice2d = sitk.ReadImage(str(volumes["pairs"] / "ras_seg.nii.gz"))[:, :, 40]
    sitk.WriteImage(slice2d, str(folder / "flat_seg.nrrd"))
    build = tmp_path / "b"
    assert ingest(build, "--source", f"nifti:{folder}", "--modality", "MRI") == 1
    capsys.readouterr()
    main(["stats", "--build", str(build), "--json", "--with-paths"])
    errors = {e["item"]: e["message"] for e in json.loads(capsys.readouterr().out)["errors"]}
    assert set(errors) == {"broken.mha", "flat.nrrd"}
    assert errors["broken.mha"].startswith("broken.mha: cannot read image with SimpleITK")
    assert errors["flat.nrrd"].startswith("flat_seg.nrrd: label map must be a 3D volume, got a 2D image")
