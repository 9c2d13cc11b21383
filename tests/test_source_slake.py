"""The SLAKE adapter on fixtures in the SLAKE 1.0 layout built from real images (pydicom's CT and MR
slices rendered to JPG), with grey-value and colour masks and detection.json boxes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from vgmed_build.catalog import open_catalog
from vgmed_build.cli import main
from vgmed_build.imaging import to_uint8
from vgmed_build.sources import get_adapter
from vgmed_build.sources.base import SourceError, SourceItem, SourceSpec


def render(name: str) -> np.ndarray:
    ds = pydicom.dcmread(get_testdata_file(name))
    return to_uint8(ds.pixel_array.astype(float))


def question(img: str, modality: str, location: str, qid: int) -> dict:
    return {"img_id": int(img[5:]), "img_name": f"{img}/source.jpg", "question": "Which organ is abnormal?",
            "answer": "Liver", "q_lang": "en", "location": location, "modality": modality,
            "answer_type": "OPEN", "base_type": "vqa", "content_type": "Organ", "triple": ["vhead", "_", "_"],
            "qid": qid}


def make_slake(root: Path) -> dict[str, np.ndarray]:
    """xmlab0: CT, grey-value mask + boxes; xmlab1: MR, colour mask; xmlab2: image only."""
    mr = render("MR_small.dcm")
    folders = {"xmlab0": render("CT_small.dcm"), "xmlab1": mr, "xmlab2": mr}
    for name, pixels in folders.items():
        (root / "imgs" / name).mkdir(parents=True)
        Image.fromarray(pixels).convert("RGB").save(root / "imgs" / name / "source.jpg", quality=95)
    ct = np.zeros((128, 128), np.uint8)
    ct[20:50, 30:70] = 3     # "Liver"
    ct[80:100, 10:30] = 7    # "Spleen"
    Image.fromarray(ct).save(root / "imgs/xmlab0/mask.png")
    det0 = [{"Liver": [30.0, 20.0, 40.0, 30.0]}, {"Spleen": [11.0, 79.0, 19.0, 21.0]},
            {"Tumor": [100, 100, 10, 10]}]
    (root / "imgs/xmlab0/detection.json").write_text(json.dumps(det0))
    mr = np.zeros((64, 64, 3), np.uint8)
    mr[10:30, 10:25] = (255, 0, 0)      # left structure
    mr[10:30, 40:55] = (0, 255, 0)      # right structure
    Image.fromarray(mr).save(root / "imgs/xmlab1/mask.png")
    det1 = [{"Brain Edema": [10, 10, 15, 20]}, {"Brain Tumor": [40, 10, 15, 20]}]
    (root / "imgs/xmlab1/detection.json").write_text(json.dumps(det1))
    (root / "train.json").write_text(json.dumps([question("xmlab0", "CT", "Abdomen", 1)]))
    (root / "test.json").write_text(json.dumps([question("xmlab1", "MRI", "Brain", 2),
                                                question("xmlab2", "MRI", "Brain", 3)]))
    return {"ct": ct, "mr": mr}


def listed(root: Path, **kw) -> tuple[list[SourceItem], list[str]]:
    out = list(get_adapter("slake").items(SourceSpec(name="slake", kind="slake", path=root, **kw)))
    return [o for o in out if isinstance(o, SourceItem)], [str(o) for o in out if isinstance(o, SourceError)]


def test_structures_named_from_detection_boxes(tmp_path):
    masks = make_slake(tmp_path)
    items, errors = listed(tmp_path)
    assert [i.key for i in items] == ["imgs/xmlab0", "imgs/xmlab1"]
    assert errors == ["imgs/xmlab2: neither mask.png nor detection.json; nothing to ground"]
    ct = items[0].load()
    assert ct.modality == "CT" and ct.pixels.shape == (128, 128, 3)
    assert sorted(ct.masks) == ["Liver", "Spleen", "Tumor"]
    assert np.array_equal(ct.masks["Liver"], masks["ct"] == 3)
    assert np.array_equal(ct.masks["Spleen"], masks["ct"] == 7)  # IoU 0.9 with its box
    assert np.argwhere(ct.masks["Tumor"]).min(0).tolist() == [100, 100]  # no mask: the box itself
    assert ct.masks["Tumor"].sum() == 100
    mr = items[1].load()
    assert mr.modality == "MRI"
    assert np.array_equal(mr.masks["Brain Edema"], (masks["mr"] == (255, 0, 0)).all(axis=-1))
    assert mr.masks["Brain Tumor"].sum() == 20 * 15 and mr.masks["Brain Tumor"][10:30, 40:55].all()


def test_labels_splits_locations_and_options(tmp_path):
    make_slake(tmp_path)
    items, _ = listed(tmp_path, labels={"7": "spleen", "Liver": "liver", "255,0,0": "oedema"},
                      options={"unmatched_boxes": "skip"})
    assert sorted(items[0].load().masks) == ["liver", "spleen"]
    assert sorted(items[1].load().masks) == ["Brain Tumor", "oedema"]
    items, errors = listed(tmp_path, options={"splits": ["test"]})
    assert [i.key for i in items] == ["imgs/xmlab1"] and len(errors) == 1
    items, _ = listed(tmp_path, options={"locations": ["abdomen"]})
    assert [i.key for i in items] == ["imgs/xmlab0"]
    items, _ = listed(tmp_path, options={"match_iou": 0.95, "unmatched_boxes": "skip"})
    assert sorted(items[0].load().masks) == ["Liver"]  # spleen's box matches with IoU 0.9 only
    _, errors = listed(tmp_path, options={"splits": ["validate"]})
    assert errors[0] == "validate.json: split file not found"


def test_bad_inputs(tmp_path):
    make_slake(tmp_path)
    Image.fromarray(np.zeros((64, 60), np.uint8)).save(tmp_path / "imgs/xmlab1/mask.png")
    (tmp_path / "imgs/xmlab0/detection.json").write_text('[{"Liver": [1, 2, 3]}]')
    items, _ = listed(tmp_path)
    with pytest.raises(SourceError, match=r"^imgs/xmlab0/detection.json: box of 'Liver' is not \[x, y, w, h"):
        items[0].load()
    with pytest.raises(SourceError, match=r"^imgs/xmlab1/mask.png: mask size 60x64 differs"):
        items[1].load()
    _, errors = listed(tmp_path / "imgs")
    assert errors == ["imgs: not a SLAKE folder (no imgs/ inside)"]


def test_slake_end_to_end(tmp_path):
    make_slake(tmp_path / "Slake1.0")
    build = tmp_path / "build"
    flags = ["--no-progress", "--source", f"slake:{tmp_path / 'Slake1.0'}"]
    assert main(["ingest", "--build", str(build), *flags]) == 1
    with open_catalog(build) as catalog:
        found = {r["label"]: r for r in catalog.regions()}
        errors = [f"{p}: {m}" for p, m in catalog.conn.execute("SELECT path, message FROM errors")]
    k = found["Liver"]["width"] // 128  # small 2D images are enlarged by a whole factor (min_side_px)
    assert k == 4
    assert found["Liver"]["boxes"] == [[k * 30, k * 20, k * 70, k * 50]]
    assert found["Tumor"]["boxes"] == [[k * 100, k * 100, k * 110, k * 110]]
    assert found["Brain Tumor"]["width"] == 8 * 64  # 64 px: x 8
    assert found["Brain Tumor"]["boxes"] == [[8 * 40, 8 * 10, 8 * 55, 8 * 30]]
    assert found["Brain Tumor"]["modality"] == "MRI"
    assert found["Liver"]["source"]["item"] == "imgs/xmlab0" and found["Liver"]["side"] == "unknown"
    assert errors == ["imgs/xmlab2: neither mask.png nor detection.json; nothing to ground"]


def test_hugging_face_copy_names(tmp_path):
    """The Hugging Face copy: images/ instead of imgs/, validation.json instead of validate.json."""
    make_slake(tmp_path)
    (tmp_path / "imgs").rename(tmp_path / "images")
    (tmp_path / "test.json").rename(tmp_path / "validation.json")
    items, errors = listed(tmp_path, options={"splits": ["validate"]})
    assert [i.key for i in items] == ["images/xmlab1"] and len(errors) == 1
    assert items[0].load().modality == "MRI"
