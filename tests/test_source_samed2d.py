"""The SA-Med2D adapter on a fixture in the SAMed2Dv1 layout built from real images (pydicom's CT
slice, scikit-image's retina photo), with per-instance binary masks and the class mapping file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import skimage
from PIL import Image
from pydicom.data import get_testdata_file

from vgmed_build.catalog import open_catalog
from vgmed_build.cli import main
from vgmed_build.imaging import to_uint8
from vgmed_build.sources import get_adapter
from vgmed_build.sources.base import SourceError, SourceItem, SourceSpec
from vgmed_build.sources.samed2d import parse_image_name, parse_mask_name

CT = "ct_00--AbdomenCT1K--Case_00011--x_0040"
EYE = "fundus_photography--gamma--eye_01--x_0000"


def rect(shape: tuple[int, int], r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[r0:r1, c0:c1] = 255
    return m


def make_samed2d(root: Path, annotations_dir: bool = False) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    ct = to_uint8(pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array.astype(float))
    Image.fromarray(ct).save(root / "images" / f"{CT}.png")
    eye = Image.open(Path(skimage.__file__).parent / "data" / "retina.jpg").convert("RGB").resize((96, 96))
    eye.save(root / "images" / f"{EYE}.png")
    masks = {
        f"{CT}--0000_000": rect((128, 128), 20, 50, 30, 70),    # liver
        f"{CT}--0003_000": rect((128, 128), 60, 80, 20, 35),    # kidney, first instance
        f"{CT}--0003_001": rect((128, 128), 60, 82, 90, 104),   # kidney, second instance
        f"{EYE}--0000_000": rect((96, 96), 30, 50, 60, 80),     # optic disc
    }
    for stem, arr in masks.items():
        Image.fromarray(arr).save(root / "masks" / f"{stem}.png")
    index = {f"images/{CT}.png": [f"masks/{s}.png" for s in masks if s.startswith(CT)],
             f"images/{EYE}.png": [f"masks/{EYE}--0000_000.png"]}
    classes = {"AbdomenCT1K": {"liver": 0, "kidney": 3}, "gamma": {"optic disc": 0, "optic cup": 1}}
    folder = root / "annotations" if annotations_dir else root
    folder.mkdir(exist_ok=True)
    (folder / "SAMed2D_v1.json").write_text(json.dumps(index))
    (folder / "SAMed2D_v1_class_mapping_id.json").write_text(json.dumps(classes))


def listed(root: Path, **kw) -> tuple[list[SourceItem], list[str]]:
    out = list(get_adapter("samed2d").items(SourceSpec(name="sam", kind="samed2d", path=root, **kw)))
    return [o for o in out if isinstance(o, SourceItem)], [str(o) for o in out if isinstance(o, SourceError)]


def test_names_are_parsed():
    info = parse_image_name(CT)
    parts = (info.modality, info.dataset, info.case, info.slice)
    assert parts == ("ct_00", "AbdomenCT1K", "Case_00011", "x_0040")
    assert parse_mask_name(f"{CT}--0003_001") == (CT, 3, 1)
    with pytest.raises(ValueError):
        parse_image_name("ct_00_AbdomenCT1K_Case_00011_x_0040")


@pytest.mark.parametrize("annotations_dir", [False, True])
def test_instances_merged_per_class(tmp_path, annotations_dir):
    make_samed2d(tmp_path, annotations_dir)
    items, errors = listed(tmp_path)
    assert errors == [] and [i.key for i in items] == [f"images/{CT}.png", f"images/{EYE}.png"]
    ct = items[0].load()
    assert ct.modality == "CT" and sorted(ct.masks) == ["kidney", "liver"]
    assert ct.masks["kidney"].sum() == 20 * 15 + 22 * 14 and ct.masks["liver"].sum() == 30 * 40
    eye = items[1].load()
    assert eye.modality == "Fundus" and eye.pixels.shape == (96, 96, 3) and list(eye.masks) == ["optic disc"]


def test_filters_labels_and_errors(tmp_path):
    make_samed2d(tmp_path)
    items, _ = listed(tmp_path, options={"modalities": ["fundus_photography"]})
    assert [i.key for i in items] == [f"images/{EYE}.png"]
    labels = {"kidney": "kidneys", "0000": ""}
    items, _ = listed(tmp_path, options={"datasets": ["AbdomenCT1K"]}, labels=labels)
    assert list(items[0].load().masks) == ["kidneys"]  # class 0 dropped by mapping it to ""
    (tmp_path / "SAMed2D_v1_class_mapping_id.json").write_text(json.dumps({"AbdomenCT1K": {"liver": 0}}))
    items, _ = listed(tmp_path)
    with pytest.raises(SourceError, match=rf"^masks/{CT}--0003_000.png: class 0003 of dataset 'AbdomenCT1K'"):
        items[0].load()
    Image.fromarray(rect((96, 90), 0, 5, 0, 5)).save(tmp_path / "masks" / f"{EYE}--0000_000.png")
    with pytest.raises(SourceError, match=r"--0000_000.png: mask size 90x96 differs"):
        items[1].load()
    (tmp_path / "masks" / f"{EYE}--0000_000.png").unlink()
    _, errors = listed(tmp_path)
    assert errors == [f"masks/{EYE}--0000_000.png: mask file not found"]
    _, errors = listed(tmp_path / "images")
    assert errors == ["images: not an SA-Med2D folder (SAMed2D_v1.json not found)"]


def test_samed2d_end_to_end(tmp_path):
    make_samed2d(tmp_path / "SAMed2Dv1")
    build = tmp_path / "build"
    flags = ["--no-progress", "--source", f"samed2d:{tmp_path / 'SAMed2Dv1'}"]
    assert main(["ingest", "--build", str(build), *flags]) == 0
    with open_catalog(build) as catalog:
        found = {r["label"]: r for r in catalog.regions()}
    k = 4  # 128 px images enlarged by a whole factor (min_side_px 512)
    assert found["liver"]["width"] == k * 128
    kidney = [[k * 20, k * 60, k * 35, k * 80], [k * 90, k * 60, k * 104, k * 82]]
    assert found["kidney"]["boxes"] == kidney  # two instances, one region
    assert found["liver"]["boxes"] == [[k * 30, k * 20, k * 70, k * 50]] and found["liver"]["modality"] == "CT"
    assert found["optic disc"]["width"] == 5 * 96  # 96 px: x 5 (480 <= 512)
    assert found["optic disc"]["boxes"] == [[5 * 60, 5 * 30, 5 * 80, 5 * 50]]
    assert found["optic disc"]["modality"] == "Fundus"
