"""Boxes, areas, slice selection and laterality against known answers and a straightforward baseline."""

from __future__ import annotations

import numpy as np
import pytest
from ingest_fixtures import flip_x, mni
from skimage import measure

from vgmed_build import imaging
from vgmed_build.regions import extract_regions, mask_slice_areas, select_slices, slice_label_areas
from vgmed_build.sources.base import Volume


def test_single_column_mask_gives_exclusive_edge_box():
    lab = np.zeros((20, 12), np.uint8)
    lab[3:9, 5] = 1
    region = extract_regions(lab)[1]
    assert region.boxes == [[5, 3, 6, 9]]
    assert region.area_px == 6 and region.area_ratio == pytest.approx(6 / 240)
    assert region.centroid == pytest.approx((5.5, 6.0))
    assert region.side == "unknown"


def test_single_pixel_centroid_is_its_centre():
    lab = np.zeros((8, 8), np.uint8)
    lab[3, 5] = 2
    region = extract_regions(lab)[2]
    assert region.boxes == [[5, 3, 6, 4]] and region.centroid == (5.5, 3.5)


def test_components_touching_labels_and_filters():
    lab = np.zeros((50, 60), np.int32)
    lab[10:20, 5:15] = 1          # component A of label 1 (100 px)
    lab[30:34, 40:50] = 1         # component B of label 1 (40 px)
    lab[10:20, 15:25] = 2         # label 2 touching label 1: must stay separate
    lab[45, 58] = 1               # a 1-pixel speck of label 1
    regions = extract_regions(lab)
    assert regions[1].boxes == [[5, 10, 15, 20], [40, 30, 50, 34], [58, 45, 59, 46]]
    assert regions[2].boxes == [[15, 10, 25, 20]]
    filtered = extract_regions(lab, min_component_px=10)
    assert filtered[1].boxes == [[5, 10, 15, 20], [40, 30, 50, 34]] and filtered[1].area_px == 140
    assert list(extract_regions(lab, [2])) == [2]
    # label 1 covers 141 / 3000 px = 4.7 %: a 4 % cap drops it, label 2 (3.3 %) stays
    assert list(extract_regions(lab, max_area_ratio=0.04)) == [2]
    # diagonal neighbours join with 8-connectivity only
    diag = np.zeros((5, 5), np.uint8)
    diag[1, 1] = diag[2, 2] = 1
    assert len(extract_regions(diag, connectivity=2)[1].boxes) == 1
    assert len(extract_regions(diag, connectivity=1)[1].boxes) == 2


def _baseline_boxes(lab: np.ndarray) -> dict[int, list[list[int]]]:
    """Straightforward per-label skimage label + regionprops (the benchmark's baseline)."""
    out = {}
    for value in np.unique(lab):
        if value == 0:
            continue
        props = measure.regionprops(measure.label(lab == value, connectivity=2))
        out[int(value)] = sorted([p.bbox[1], p.bbox[0], p.bbox[3], p.bbox[2]] for p in props)
    return out


def test_boxes_match_per_label_regionprops_on_real_slices():
    _, labels, _ = mni(2)
    for k in range(10, labels.shape[2] - 10, 7):
        lab = imaging.display_slice(labels, "axial", k)
        # grey matter touches white matter: the equal-value relabelling path
        ours = {v: r.boxes for v, r in extract_regions(lab).items()}
        assert ours == _baseline_boxes(lab)
        # left grey and right white matter never touch (the x = 0 gap): the binary fast path
        apart = np.where(np.isin(lab, [1, 4]), lab, 0)
        assert {v: r.boxes for v, r in extract_regions(lab, [1, 4]).items()} == _baseline_boxes(apart)
        for connectivity in (1, 2):
            sizes = {v: r.area_px for v, r in extract_regions(lab, connectivity=connectivity).items()}
            assert sizes == {int(v): int((lab == v).sum()) for v in np.unique(lab) if v}


def test_slice_label_areas_one_pass_matches_per_label_counts():
    rng = np.random.default_rng(1)
    vol = rng.integers(0, 6, size=(13, 17, 11)).astype(np.uint16)
    vol[vol == 4] = 0                         # a value that never occurs
    for axis in range(3):
        values, areas = slice_label_areas(vol, axis)
        assert values.tolist() == [1, 2, 3, 5]
        in_plane = tuple(a for a in range(3) if a != axis)
        expected = np.stack([(vol == v).sum(axis=in_plane) for v in values], axis=1)
        np.testing.assert_array_equal(areas, expected)
        np.testing.assert_array_equal(mask_slice_areas([vol == v for v in values], axis), expected)


def test_slice_label_areas_with_huge_label_values(monkeypatch):
    import vgmed_build.regions as regions

    monkeypatch.setattr(regions, "_MAX_DENSE_VALUE", 1000)   # force the sorting path
    vol = np.zeros((4, 5, 6), np.int64)
    vol[0, 0, :3] = 70000
    vol[1, 2, 5] = 3
    values, areas = slice_label_areas(vol, 2)
    assert values.tolist() == [3, 70000]
    assert areas[:, 1].tolist() == [1, 1, 1, 0, 0, 0] and areas[:, 0].tolist() == [0, 0, 0, 0, 0, 1]


def test_slice_policies():
    areas = np.array([[0, 5], [10, 50], [30, 50], [20, 0], [100, 1]])
    assert select_slices(areas, "largest", 1) == {4: [0], 1: [1]}
    assert select_slices(areas, "largest", 60) == {4: [0]}           # structure 1 never reaches 60
    assert select_slices(areas, "all", 20) == {1: [1], 2: [0, 1], 3: [0], 4: [0]}
    assert select_slices(areas, "every_n", 1, every_n=2) == {0: [1], 2: [0, 1], 4: [0, 1]}
    with pytest.raises(ValueError):
        select_slices(areas, "random", 1)


def _geometry(width=40, height=20):
    """An axial slice of an RAS volume whose world x = 0 lies between image columns 19 and 20."""
    affine = np.eye(4)
    affine[:3, 3] = [-(width - 1) / 2, -(height - 1) / 2, 0]
    return imaging.slice_geometry(affine, (width, height, 1), "axial", 0)


def test_side_from_world_coordinates_not_columns():
    geom = _geometry()
    lab = np.zeros(geom.shape, np.uint8)
    lab[5:10, 25:35] = 1                   # image right half = patient left (radiological)
    lab[5:10, 2:10] = 2                    # image left half = patient right
    lab[12:16, 17:23] = 3                  # straddles x = 0, centred: midline
    lab[2:4, 2:6] = 4
    lab[2:4, 30:36] = 4                    # one component on each side: bilateral
    lab[16:19, 14:22] = 5                  # straddles, centroid 2 px (2 mm) right of the midline
    regions = extract_regions(lab, geometry=geom, midline_mm=0.0, margin_mm=5.0)
    assert {v: r.side for v, r in regions.items()} == {1: "left", 2: "right", 3: "midline", 4: "bilateral",
                                                       5: "midline"}
    # a narrower margin: the straddling label 5 belongs to the side of its centroid
    assert extract_regions(lab, [5], geometry=geom, margin_mm=1.0)[5].side == "right"
    # moving the midline (a source option) changes the answer, the image columns do not
    assert extract_regions(lab, [1], geometry=geom, midline_mm=-20.0)[1].side == "right"


def test_sides_on_the_real_template_and_its_flipped_copy():
    image, labels, affine = mni(2)
    k = labels.shape[2] // 2 + 5
    for lab_vol, aff in ((labels, affine), flip_x(labels, affine)):
        vol = imaging.canonical(Volume(image=image.astype(np.float32), affine=aff, modality="MRI",
                                       label_map=np.asarray(lab_vol)))
        geom = imaging.slice_geometry(vol.affine, vol.label_map.shape, "axial", k)
        regions = extract_regions(imaging.display_slice(vol.label_map, "axial", k), geometry=geom)
        assert {v: r.side for v, r in regions.items()} == {1: "left", 2: "right", 3: "left", 4: "right"}
        assert min(b[0] for b in regions[1].boxes) >= geom.shape[1] // 2   # left structures: image right
