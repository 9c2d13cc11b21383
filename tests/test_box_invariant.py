"""Every box of every region, for every source kind the tests can build: inside its image, and the union
of a region's boxes covers its mask (every mask pixel lies in some box, so mask pixels <= box pixels).

The real ingest runs; a spy around ``extract_regions`` keeps each rendered label slice next to the
geometry it gave, and the check runs on the geometry's final boxes (after object datasets replace them
with one box per object), which are the boxes the catalog stores. The mask is recomputed here with
scipy's own connected-component labelling (components under ``min_component_px`` are not part of it).
Enlarged 2D images (the bundled COCO photos, SA-Med2D, SLAKE, small retina) are the case that broke.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from coco_fixtures import write_coco
from dicom_fixtures import contour, ct_series, make_rtstruct, square
from ingest_fixtures import SAMPLE_DIR, SAMPLE_SOURCES, ingest, mni, write_pair
from PIL import Image
from scipy import ndimage
from test_source_images2d import disc_mask, retina, write
from test_source_samed2d import make_samed2d
from test_source_slake import make_slake
from test_source_totalsegmentator import TAGS, write_case

from vgmed_build.ingest import render


def _sample(root: Path) -> list[str]:
    return ["--sources", str(SAMPLE_SOURCES)]


def _nifti(root: Path) -> list[str]:
    t1, labels, affine = mni(2)
    write_pair(root / "pairs", "mni", t1, labels, affine)
    return ["--source", f"nifti:{root / 'pairs'}", "--modality", "MRI"]


def _itk(root: Path) -> list[str]:
    _nifti(root)
    for name in ("mni.nii.gz", "mni_seg.nii.gz"):
        target = root / "mha" / name.replace(".nii.gz", ".mha")
        target.parent.mkdir(exist_ok=True)
        sitk.WriteImage(sitk.ReadImage(str(root / "pairs" / name)), str(target))
    return ["--source", f"nifti:{root / 'mha'}", "--modality", "MRI"]


def _totalsegmentator(root: Path) -> list[str]:
    t1, labels, affine = mni(2)
    write_case(root / "ts", "s0001", t1, labels, affine, TAGS)
    return ["--source", f"totalsegmentator:{root / 'ts'}", "--modality", "MRI"]


def _rtstruct(root: Path) -> list[str]:
    series = ct_series(root / "ct")
    outer, hole = contour(square(40, 30, 60, 50), series[2]), contour(square(45, 35, 50, 40), series[2])
    make_rtstruct(series, {"tumour": [(2, outer), (2, hole)], "marker": [(4, contour(square(5, 6, 8, 9), series[4]))]},
                  root / "ct" / "rt.dcm")
    return ["--source", f"dicom:{root / 'ct'}"]


def _images2d(root: Path) -> list[str]:
    retina(root / "src")  # 200 x 160 px: enlarged 3 times
    write(root / "src" / "masks/eye1_disc.png", disc_mask())
    return ["--source", f"images2d:{root / 'src'}", "--modality", "Fundus"]


def _samed2d(root: Path) -> list[str]:
    make_samed2d(root / "SAMed2Dv1")
    return ["--source", f"samed2d:{root / 'SAMed2Dv1'}"]


def _slake(root: Path) -> list[str]:
    make_slake(root / "Slake1.0")
    return ["--source", f"slake:{root / 'Slake1.0'}"]


def _coco(root: Path) -> list[str]:
    write_coco(root / "coco")
    return ["--source", f"coco:{root / 'coco'}"]


def _small_coco(root: Path) -> list[str]:
    """The COCO fixture at half size: every picture is enlarged (the bundled sample's case)."""
    doc = write_coco(root / "coco")
    for info in doc["images"][:3]:
        path = root / "coco" / "val2017" / info["file_name"]
        with Image.open(path) as img:
            img.convert("RGB").resize((info["width"] // 2, info["height"] // 2)).save(path)
        info["width"], info["height"] = info["width"] // 2, info["height"] // 2
    for ann in doc["annotations"]:
        if isinstance(ann["segmentation"], list):
            ann["segmentation"] = [[v / 2 for v in poly] for poly in ann["segmentation"]]
    doc["annotations"] = [a for a in doc["annotations"] if not a["iscrowd"]]
    (root / "coco" / "annotations" / "instances_val2017.json").write_text(json.dumps(doc), encoding="utf-8")
    return ["--source", f"coco:{root / 'coco'}"]


KINDS: dict[str, Callable[[Path], list[str]]] = {
    "bundled sample (msd, dicom seg, enlarged coco)": _sample,
    "nifti": _nifti,
    "nifti kind on mha files": _itk,
    "totalsegmentator": _totalsegmentator,
    "dicom rtstruct": _rtstruct,
    "images2d (enlarged)": _images2d,
    "samed2d (enlarged)": _samed2d,
    "slake (enlarged)": _slake,
    "coco": _coco,
    "coco (enlarged)": _small_coco,
}


def kept_mask(label_slice: np.ndarray, value: int, min_px: int, connectivity: int) -> np.ndarray:
    """The pixels of ``value`` in components of at least ``min_px`` pixels (scipy, not cc3d)."""
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 1 else 2)
    comps, n = ndimage.label(label_slice == value, structure=structure)
    sizes = np.bincount(comps.ravel(), minlength=n + 1)
    keep = sizes >= max(min_px, 1)
    keep[0] = False
    return keep[comps]


def box_problems(boxes: list[list[int]], mask: np.ndarray) -> list[str]:
    height, width = mask.shape
    problems = [f"box {b} outside the {width} x {height} image" for b in boxes
                if not (0 <= b[0] < b[2] <= width and 0 <= b[1] < b[3] <= height)]
    covered = np.zeros_like(mask)
    for x0, y0, x1, y1 in boxes:
        covered[y0:y1, x0:x1] = True
    outside = int(np.count_nonzero(mask & ~covered))
    if outside:
        problems.append(f"{outside} of {int(mask.sum())} mask pixels lie in no box {boxes}")
    if int(mask.sum()) > int(covered.sum()):
        problems.append(f"mask pixels {int(mask.sum())} > box pixels {int(covered.sum())}")
    return problems


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_box_lies_in_its_image_and_the_boxes_cover_the_mask(kind, tmp_path, monkeypatch):
    seen: list[tuple[object, np.ndarray]] = []  # (geometry, its mask), checked after ingest
    real = render.extract_regions

    def spy(label_slice, values=None, **kw):
        found = real(label_slice, values, **kw)
        for value, geo in found.items():
            mask = kept_mask(label_slice, value, kw["min_component_px"], kw["connectivity"])
            seen.append((geo, mask))
        return found

    monkeypatch.setattr(render, "extract_regions", spy)
    build = tmp_path / "b"
    assert ingest(build, "--workers", "1", *KINDS[kind](tmp_path)) in (0, 1)  # slake: one item has no mask
    with sqlite3.connect(build / "catalog.sqlite") as conn:
        stored = [json.loads(r) for (r,) in conn.execute("SELECT record_json FROM regions")]
    assert stored and seen
    problems = {}
    checked = set()
    for geo, mask in seen:
        found = box_problems(geo.boxes, mask)
        if found:
            problems[str(geo.boxes)] = found
        checked.add((mask.shape, json.dumps(geo.boxes)))
    assert not problems, problems
    for region in stored:  # what the catalog holds is what was checked
        assert ((region["height"], region["width"]), json.dumps(region["boxes"])) in checked, region["label"]


def test_the_bundled_photos_boxes_sit_on_their_objects(tmp_path):
    """The sample's COCO photos are enlarged 2x: each box is twice the polygon's own extent."""
    assert ingest(tmp_path / "b", *_sample(tmp_path)) == 0
    doc = json.loads((SAMPLE_DIR / "coco/annotations/instances_demo.json").read_text(encoding="utf-8"))
    names = {c["id"]: c["name"] for c in doc["categories"]}
    with sqlite3.connect(tmp_path / "b" / "catalog.sqlite") as conn:
        stored = [json.loads(r) for (r,) in conn.execute("SELECT record_json FROM regions")]
    photos = {r["label"]: r for r in stored if r["modality"] == "Natural"}
    for label in ("cup", "rocket", "mast"):
        polygons = [a["segmentation"][0] for a in doc["annotations"] if names[a["category_id"]] == label]
        want = sorted([round(2 * min(p[0::2])), round(2 * min(p[1::2])), round(2 * max(p[0::2])),
                       round(2 * max(p[1::2]))] for p in polygons)
        got = photos[label]["boxes"]
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):  # within a pixel of the polygon's edges at twice the size
            assert all(abs(a - b) <= 2 for a, b in zip(g, w, strict=True)), (label, got, want)
    cup = photos["cup"]
    (x0, y0, x1, y1), = cup["boxes"]
    mask_px = cup["area_ratio"] * cup["width"] * cup["height"]
    assert mask_px <= (x1 - x0) * (y1 - y0) <= 1.6 * mask_px  # a round cup fills most of its box
