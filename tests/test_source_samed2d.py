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


# --- the published index at scale: read as a stream ---------------------------------------------------

# Names as SA-Med2D-20M publishes them: modality codes with and without a sequence, datasets and cases
# that hold "_", "-" and "." themselves, every slice axis.
REAL_NAMES = (
    "mr_t1c--BraTS2021--BraTS2021_00000--z_0075",
    "mr_00--ACDC--patient001_frame01--z_0003",
    "ultrasound_00--Breast_Ultrasound--benign (10)--x_0000",
    "x_ray--ChestX-Det--36199.png--x_0000",
    "pet_00--autoPET--PETCT_0af7ffe12a-07-06-2002-NA--y_0120",
    "dermoscopy_00--ISIC2018_Task1--ISIC_0000000--x_0000",
)


def test_real_names_list_and_load(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    index = {}
    for i, stem in enumerate(REAL_NAMES):
        Image.fromarray(np.full((40, 40), 60 + i, np.uint8)).save(tmp_path / "images" / f"{stem}.png")
        Image.fromarray(rect((40, 40), 5, 15 + i, 5, 20)).save(tmp_path / "masks" / f"{stem}--0001_000.png")
        index[f"images/{stem}.png"] = [f"masks/{stem}--0001_000.png"]
    (tmp_path / "SAMed2D_v1.json").write_text(json.dumps(index))
    (tmp_path / "SAMed2D_v1_class_mapping_id.json").write_text(
        json.dumps({parse_image_name(s).dataset: {"lesion": 1} for s in REAL_NAMES}))
    items, errors = listed(tmp_path)
    assert errors == [] and [i.key for i in items] == list(index)  # the index's own order
    modalities = [item.load().modality for item in items]
    assert modalities == ["MRI", "MRI", "Ultrasound", "X-ray", "PET", "Dermoscopy"]
    assert parse_image_name(REAL_NAMES[3]).case == "36199.png"
    assert all(list(item.load().masks) == ["lesion"] for item in items)


def test_the_index_is_read_as_a_stream(tmp_path):
    """A 50,000-image index (~12 MB of JSON) is listed in a small fraction of what json.load needs."""
    import tracemalloc

    from vgmed_build.sources.samed2d import index_entries

    stem = "ct_00--AbdomenCT1K--Case_{:05d}--x_{:04d}"
    index = {f"images/{stem.format(i, i % 300)}.png": [f"masks/{stem.format(i, i % 300)}--{c:04d}_000.png"
                                                        for c in range(3)] for i in range(50_000)}
    path = tmp_path / "SAMed2D_v1.json"
    path.write_text(json.dumps(index))
    del index
    tracemalloc.start()
    try:
        n = 0
        for key, masks in index_entries(path, tmp_path):
            n += 1
            assert key.startswith("images/ct_00--") and len(masks) == 3
        _, streamed = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        whole = json.loads(path.read_text())
        _, loaded = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == len(whole) == 50_000
    assert streamed < loaded / 50 and streamed < 1_000_000, (streamed, loaded)


def test_a_broken_index_stops_the_listing_and_withdraws_nothing(tmp_path, capsys):
    make_samed2d(tmp_path / "SAMed2Dv1")
    build = tmp_path / "build"
    flags = ["--no-progress", "--source", f"samed2d:{tmp_path / 'SAMed2Dv1'}", "--with-paths"]
    assert main(["ingest", "--build", str(build), *flags]) == 0
    index = tmp_path / "SAMed2Dv1" / "SAMed2D_v1.json"
    text = index.read_text()
    index.write_text(text[: text.index(f'"images/{EYE}.png"') + 20])  # breaks off inside the second entry
    capsys.readouterr()
    assert main(["ingest", "--build", str(build), *flags]) == 1
    err = capsys.readouterr().err
    assert "SAMed2D_v1.json: cannot read JSON (" in err
    with open_catalog(build) as catalog:  # the eye, after the break, is not withdrawn
        assert {r["label"] for r in catalog.regions()} == {"liver", "kidney", "optic disc"}
    index.write_text("[1, 2]")
    assert main(["ingest", "--build", str(build), *flags]) == 1
    assert "SAMed2D_v1.json: expected an object mapping images to mask lists" in capsys.readouterr().err
    with open_catalog(build) as catalog:
        assert len(list(catalog.regions())) == 3
