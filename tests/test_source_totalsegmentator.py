"""The ``totalsegmentator`` kind on the MNI template laid out as TotalSegmentator output.

Per-structure masks (``segmentations/<structure>.nii.gz``, one of them empty) and the ``--ml``
multi-label file (label names in a NIfTI header extension, written here the way TotalSegmentator's
``nifti_ext_header.add_label_map_to_nifti`` writes it) must give the regions of the same anatomy read
as a plain NIfTI label map; a structure whose name says one side while its voxels lie on the other
is an error naming the file, and the run goes on.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from ingest_fixtures import LABELS, facts, flip_x, ingest, mni, save, write_msd

from vgmed_build.cli import main
from vgmed_build.sources.totalsegmentator import readable_name

# TotalSegmentator-style structure names of the sample's four labels.
TAGS = {1: "grey_matter_left", 2: "grey_matter_right", 3: "white_matter_left", 4: "white_matter_right"}


def caret_label_table(names: dict[int, str]) -> bytes:
    """The XML TotalSegmentator puts into the NIfTI extension of an ``--ml`` file."""
    body = "".join(f'<Label Key="{k}" Red="1" Green="0" Blue="0" Alpha="1"><![CDATA[{v}]]></Label>\n'
                   for k, v in names.items())
    return ('<?xml version="1.0" encoding="UTF-8"?> <CaretExtension>  <Date><![CDATA[2013-07-14T05:45:09]]></Date>'
            f'   <VolumeInformation Index="0">   <LabelTable>\n{body}\n  </LabelTable>  <StudyMetaDataLinkSet>'
            '  </StudyMetaDataLinkSet>  <VolumeType><![CDATA[Label]]></VolumeType>   </VolumeInformation>'
            '</CaretExtension>\n              ').encode()


def write_case(root: Path, case: str, image: np.ndarray, labels: np.ndarray, affine: np.ndarray,
               tags: dict[int, str], ml: bool = False) -> None:
    save(root / case / "ct.nii.gz", image, affine)
    if ml:
        img = nib.Nifti1Image(labels, affine)
        img.header.extensions.append(nib.nifti1.Nifti1Extension(0, caret_label_table(tags)))
        nib.save(img, root / case / "segmentations.nii.gz")
        return
    for value, tag in tags.items():
        save(root / case / "segmentations" / f"{tag}.nii.gz", (labels == value).astype(np.uint8), affine)
    save(root / case / "segmentations" / "kidney_left.nii.gz", np.zeros_like(labels), affine)  # absent organ


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    t1, labels, affine = mni(2)
    root = tmp_path_factory.mktemp("ref")
    write_msd(root / "Task", {"mni": (t1, labels, affine)})
    assert ingest(root / "b", "--source", f"msd:{root / 'Task'}", "--modality", "MRI") == 0
    (got,) = facts(root / "b").values()
    return got


def test_readable_names_and_their_sides():
    assert readable_name("kidney_left") == ("left kidney", "left")
    assert readable_name("iliac_artery_right") == ("right iliac artery", "right")
    assert readable_name("rib_left_3") == ("left rib 3", "left")
    assert readable_name("vertebrae_L1") == ("vertebrae L1", None)       # lumbar, not a side
    assert readable_name("spleen") == ("spleen", None)


def test_per_structure_masks_and_ml_file_give_the_nifti_regions(reference, tmp_path, capsys):
    t1, labels, affine = mni(2)
    root = tmp_path / "TotalSegmentator"
    write_case(root, "s0001", t1, labels, affine, TAGS)
    f_t1, f_affine = flip_x(t1, affine)                                   # same anatomy, LAS voxel order
    write_case(root, "s0002", f_t1, flip_x(labels, affine)[0], f_affine, TAGS)
    write_case(root, "s0003", t1, labels, affine, TAGS, ml=True)
    (root / "s0003" / "segmentations").mkdir()                           # empty folder: the --ml file is used
    (root / "metadata.csv").write_text("image_id;age\ns0001;50\n", encoding="utf-8")  # training-set extra file
    build = tmp_path / "b"
    assert ingest(build, "--source", f"totalsegmentator:{root}", "--modality", "MRI") == 0
    got = facts(build)
    assert set(got) == {"s0001", "s0002", "s0003"}
    for item in got.values():
        assert item == reference
    sides = {k[0]: v[0] for k, v in reference.items()}
    assert sides == {n: n.split()[0] for n in LABELS.values()}           # 'left grey matter' -> left
    capsys.readouterr()
    main(["stats", "--build", str(build), "--json", "--with-paths"])
    assert json.loads(capsys.readouterr().out)["errors"] == []           # the empty kidney mask is no error


def test_a_name_contradicting_world_coordinates_is_an_error_naming_the_file(reference, tmp_path, capsys):
    t1, labels, affine = mni(2)
    root = tmp_path / "ts"
    write_case(root, "good", t1, labels, affine, TAGS)
    write_case(root, "swapped", t1, labels, affine, {1: "grey_matter_right", 2: "grey_matter_left"})
    bad_affine = affine.copy()
    bad_affine[0, 0] = -bad_affine[0, 0]                                  # a flipped affine: sides turn over
    write_case(root, "flipped", t1, labels, bad_affine, {3: "white_matter_left"})
    write_case(root, "ml", t1, labels, affine, {1: "grey_matter_right", 2: "grey_matter_left"}, ml=True)
    build = tmp_path / "b"
    assert ingest(build, "--source", f"totalsegmentator:{root}", "--modality", "MRI") == 1
    capsys.readouterr()
    main(["stats", "--build", str(build), "--json", "--with-paths"])
    errors = {e["item"]: e["message"] for e in json.loads(capsys.readouterr().out)["errors"]}
    assert set(errors) == {"swapped", "flipped", "ml"}
    assert errors["swapped"].startswith("swapped/segmentations/grey_matter_")
    assert "is named right but lies on the patient's left" in errors["swapped"] or \
        "is named left but lies on the patient's right" in errors["swapped"]
    assert errors["flipped"].startswith("flipped/segmentations/white_matter_left.nii.gz: structure 'left white matter'")
    assert errors["ml"].startswith("ml/segmentations.nii.gz (label 1): structure 'right grey matter' is named right")
    assert set(facts(build)) == {"good"} and facts(build)["good"] == reference


def test_layout_problems_are_errors(tmp_path, capsys):
    t1, labels, affine = mni(2)
    root = tmp_path / "ts"
    write_case(root, "allempty", t1, np.zeros_like(labels), affine, TAGS)
    save(root / "nomasks" / "ct.nii.gz", t1, affine)
    save(root / "twoimages" / "a.nii.gz", t1, affine)
    save(root / "twoimages" / "b.nii.gz", t1, affine)
    save(root / "twoimages" / "segmentations" / "brain.nii.gz", (labels > 0).astype(np.uint8), affine)
    save(root / "shape" / "ct.nii.gz", t1, affine)
    save(root / "shape" / "segmentations" / "brain.nii.gz", (labels[1:] > 0).astype(np.uint8), affine)
    save(root / "nonbinary" / "ct.nii.gz", t1, affine)
    save(root / "nonbinary" / "segmentations" / "brain.nii.gz", labels, affine)
    build = tmp_path / "b"
    assert ingest(build, "--source", f"totalsegmentator:{root}", "--modality", "MRI") == 1
    capsys.readouterr()
    main(["stats", "--build", str(build), "--json", "--with-paths"])
    errors = {e["item"]: e["message"] for e in json.loads(capsys.readouterr().out)["errors"]}
    assert errors == {
        "allempty": "allempty/segmentations: every structure mask is empty",
        "nomasks": "nomasks: no segmentations/ folder of structure masks and no segmentations.nii.gz (--ml) file",
        "twoimages": "twoimages: cannot tell the image among the volume files (a.nii.gz, b.nii.gz); set options.image",
        "shape": f"shape/segmentations/brain.nii.gz: mask shape {labels[1:].shape} differs from the image's "
                 f"{labels.shape}",
        "nonbinary": "nonbinary/segmentations/brain.nii.gz: a structure mask must hold 0 and one other value, "
                     "got 0, 1, 2, 3, 4",
    }


def test_the_folder_of_one_totalsegmentator_run_ingests_however_it_is_pointed_at(reference, tmp_path, capsys):
    """``TotalSegmentator -i ct.nii.gz -o seg`` (and ``-o seg.nii.gz --ml``) in the user's folder."""
    t1, labels, affine = mni(2)
    run = tmp_path / "patient1"                                           # where the user ran the command
    save(run / "ct.nii.gz", t1, affine)
    for value, tag in TAGS.items():
        save(run / "seg" / f"{tag}.nii.gz", (labels == value).astype(np.uint8), affine)
    save(run / "seg" / "kidney_left.nii.gz", np.zeros_like(labels), affine)
    ml = tmp_path / "patient2"
    save(ml / "scan.nii.gz", t1, affine)                                  # -i scan.nii.gz -o seg.nii.gz --ml
    img = nib.Nifti1Image(labels, affine)
    img.header.extensions.append(nib.nifti1.Nifti1Extension(0, caret_label_table(TAGS)))
    nib.save(img, ml / "seg.nii.gz")
    other = tmp_path / "elsewhere"                                        # masks away from the CT: option image
    for value, tag in TAGS.items():
        save(other / "out" / f"{tag}.nii.gz", (labels == value).astype(np.uint8), affine)
    for name, source, key, extra in [
        ("folder", run, "patient1", []),                                  # the folder holding ct.nii.gz and seg/
        ("seg", run / "seg", "seg", []),                                  # seg/ itself, the CT beside it
        ("ml", ml, "patient2", ["--option", "image=scan.nii.gz"]),
        ("image", other / "out", "out", ["--option", f"image={run / 'ct.nii.gz'}"]),
    ]:
        build = tmp_path / f"b-{name}"
        assert ingest(build, "--source", f"totalsegmentator:{source}", "--modality", "MRI", *extra) == 0, name
        assert facts(build) == {key: reference}, name
    # Without the option, nothing beside the masks is an image: an error saying what to set.
    assert ingest(tmp_path / "b-none", "--source", f"totalsegmentator:{other / 'out'}", "--modality", "MRI") == 1
    capsys.readouterr()
    main(["stats", "--build", str(tmp_path / "b-none"), "--json", "--with-paths"])
    (error,) = json.loads(capsys.readouterr().out)["errors"]
    assert error["message"] == ("out: a folder of structure masks without ct.nii.gz in it or beside it "
                                "(beside: none); set option image (relative to the folder, e.g. "
                                "image=../scan.nii.gz)")
