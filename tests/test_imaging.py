"""Orientation, display convention, square pixels, windowing and PNG writing on volumes with known answers."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from ingest_fixtures import flip_x, mni
from PIL import Image

from vgmed_build import imaging
from vgmed_build.sources.base import Volume


def _vol(image, affine, labels=None) -> Volume:
    return Volume(image=image.astype(np.float32), affine=affine, modality="MRI", label_map=labels)


def _world_to_voxel(affine, xyz):
    return np.rint(np.linalg.inv(affine) @ np.array([*xyz, 1.0]))[:3].astype(int)


def test_canonical_undoes_a_flipped_affine_on_the_real_template():
    image, labels, affine = mni(2)
    f_img, f_aff = flip_x(image, affine)
    f_lab, _ = flip_x(labels, affine)
    # The 2009 template is symmetric; the hemisphere labels are not.
    assert f_aff[0, 0] < 0 and not np.array_equal(f_lab, labels)
    canon = imaging.canonical(_vol(f_img, f_aff, f_lab))
    np.testing.assert_allclose(canon.affine, affine)
    np.testing.assert_array_equal(canon.image, image.astype(np.float32))
    np.testing.assert_array_equal(canon.label_map, labels)


def test_canonical_of_permuted_lps_axes():
    rng = np.random.default_rng(0)
    data = rng.random((4, 5, 6)).astype(np.float32)
    affine = np.diag([1.0, 2.0, 3.0, 1.0])
    # Store as (z, y, x) with x and y reversed: LPS-like axis codes (S, P, L).
    stored = np.ascontiguousarray(data[::-1, ::-1, :].transpose(2, 1, 0))
    stored_aff = np.zeros((4, 4))
    stored_aff[0, 2] = -1.0            # voxel axis 2 runs right -> left
    stored_aff[1, 1] = -2.0            # voxel axis 1 runs anterior -> posterior
    stored_aff[2, 0] = 3.0
    stored_aff[:3, 3] = [3.0, 8.0, 0.0]
    stored_aff[3, 3] = 1
    canon = imaging.canonical(_vol(stored, stored_aff))
    np.testing.assert_allclose(canon.image, data)
    np.testing.assert_allclose(canon.affine, affine)


def _blob_volume(shape=(40, 50, 30), spacing=(1.0, 1.0, 1.0)):
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-(shape[i] - 1) * spacing[i] / 2 for i in range(3)]   # world origin at the centre
    return np.zeros(shape, np.int32), affine


@pytest.mark.parametrize("plane", ["axial", "coronal"])
def test_patient_left_appears_on_the_image_right(plane):
    labels, affine = _blob_volume()
    i, j, k = _world_to_voxel(affine, (-12.0, 0.0, 0.0))     # RAS x < 0: the patient's left
    labels[i - 1:i + 2, j - 1:j + 2, k - 1:k + 2] = 1
    index = {"axial": k, "coronal": j}[plane]
    sl = imaging.display_slice(labels, plane, index)
    cols = np.flatnonzero(sl.any(axis=0))
    assert cols.min() > sl.shape[1] / 2, "patient-left blob must be on the image's right half"
    geom = imaging.slice_geometry(affine, labels.shape, plane, index)
    rows = np.flatnonzero(sl.any(axis=1))
    assert geom.world_x(rows.mean(), cols.mean()) == pytest.approx((affine @ [i, j, k, 1])[0])


def test_axial_anterior_is_up_coronal_and_sagittal_superior_is_up_sagittal_anterior_is_left():
    labels, affine = _blob_volume()
    i, j, k = _world_to_voxel(affine, (0.0, 15.0, 10.0))     # anterior and superior
    labels[i, j, k] = 1
    axial = imaging.display_slice(labels, "axial", k)
    assert np.argwhere(axial)[0][0] < axial.shape[0] / 2          # anterior: top half
    coronal = imaging.display_slice(labels, "coronal", j)
    assert np.argwhere(coronal)[0][0] < coronal.shape[0] / 2      # superior: top half
    sagittal = imaging.display_slice(labels, "sagittal", i)
    r, c = np.argwhere(sagittal)[0]
    assert r < sagittal.shape[0] / 2 and c < sagittal.shape[1] / 2  # superior top, anterior left


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_pixel_to_world_hits_the_voxel_centre(plane):
    labels, affine = _blob_volume(spacing=(0.8, 1.2, 2.5))
    labels[7, 31, 11] = 1
    expected = affine @ np.array([7, 31, 11, 1.0])
    index = {"axial": 11, "coronal": 31, "sagittal": 7}[plane]
    sl = imaging.display_slice(labels, plane, index)
    geom = imaging.slice_geometry(affine, labels.shape, plane, index, spacing_mm=None)
    lab = imaging.resample(sl, geom.shape, labels=True)
    pts = np.argwhere(lab == 1).mean(axis=0)
    world = geom.pixel_to_world @ np.array([pts[0], pts[1], 1.0])
    tolerance = max(geom.spacing_mm)  # nearest-neighbour upsampling spreads the voxel over several pixels
    np.testing.assert_allclose(world, expected[:3], atol=tolerance)
    assert geom.position_mm == pytest.approx(expected[{"axial": 2, "coronal": 1, "sagittal": 0}[plane]])
    assert geom.spacing_mm[0] == pytest.approx(geom.spacing_mm[1], rel=0.02)


def test_resampling_to_square_pixels_keeps_extent_and_label_values():
    labels, affine = _blob_volume(shape=(20, 10, 8), spacing=(1.0, 3.0, 1.0))
    labels[5:10, 2:4, 4] = 7                          # 5 voxels (5 mm) wide, 2 voxels (6 mm) high
    geom = imaging.slice_geometry(affine, labels.shape, "axial", 4)
    assert geom.shape == (30, 20) and geom.spacing_mm == (1.0, 1.0)
    lab = imaging.resample(imaging.display_slice(labels, "axial", 4), geom.shape, labels=True)
    assert set(np.unique(lab)) == {0, 7}
    rows, cols = np.nonzero(lab)
    assert rows.max() - rows.min() + 1 == 6 and cols.max() - cols.min() + 1 == 5
    x = geom.world_x(rows, cols)
    voxel_x = (affine @ np.array([[5, 9], [0, 0], [0, 0], [1, 1]]))[0]
    assert x.min() == pytest.approx(voxel_x.min()) and x.max() == pytest.approx(voxel_x.max())


def test_ct_windows_and_percentile_clipping():
    assert imaging.ct_window("brain") == (0.0, 80.0)
    assert imaging.ct_window("lung") == (-1350.0, 150.0)
    assert imaging.auto_ct_preset("Chest") == "lung"
    assert imaging.auto_ct_preset("abdomen") == "abdomen"
    assert imaging.auto_ct_preset("head and neck") == "brain"
    hu = np.linspace(-1000, 1000, 2001).reshape(1, 1, -1)
    assert imaging.window_bounds(hu, "CT", "brain", "auto", [1, 99]) == (0.0, 80.0)
    assert imaging.window_bounds(hu, "CT", "x", [40, 400], [1, 99]) == (-160.0, 240.0)
    lo, hi = imaging.window_bounds(hu, "MRI", "brain", "auto", [1, 99])
    assert lo == pytest.approx(-980.0) and hi == pytest.approx(980.0)
    out = imaging.to_uint8(np.array([-5.0, 0.0, 40.0, 80.0, 1e4, np.nan]), 0.0, 80.0)
    assert out.tolist() == [0, 0, 128, 255, 255, 0]
    with_nan = hu.astype(np.float32).copy()
    with_nan[0, 0, :100] = np.nan
    lo, hi = imaging.window_bounds(with_nan, "PET", "", "auto", [0, 100])
    assert (lo, hi) == (-900.0, 1000.0)


def _png_chunks(data: bytes) -> list[str]:
    chunks, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunks.append(kind.decode())
        pos += 12 + length
    return chunks


def test_png_has_no_metadata_and_is_written_atomically(tmp_path):
    pixels = (np.arange(30 * 20) % 256).astype(np.uint8).reshape(30, 20)
    data = imaging.encode_png(pixels)
    assert set(_png_chunks(data)) == {"IHDR", "IDAT", "IEND"}
    path = tmp_path / "a" / "x.png"
    sha = imaging.write_atomic(path, data)
    assert len(sha) == 64 and list(path.parent.iterdir()) == [path]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(path.read_bytes()))), pixels)
    with pytest.raises(ValueError):
        imaging.encode_png(pixels.astype(np.float32))


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ([np.nan, np.inf, -np.inf], "no finite intensity"),
        ([np.nan, 3.0, np.inf, 3.0], "no contrast (every finite value is 3)"),
        ([1.0, np.nan, 2.0], None),
        ([-np.inf, 1.0, 2.0], None),
        ([], "no finite intensity"),
    ],
)
def test_contrast_problem_ignores_nan_and_infinity(values, problem):
    found = imaging.contrast_problem(np.array(values, dtype=np.float32))
    assert found is None if problem is None else found.startswith(problem)


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_contrast_problem_copies_nothing_of_a_fortran_volume(dtype):
    """The 6x ingest slowdown: a flattened copy of every Fortran-ordered volume. The check reads in place."""
    import tracemalloc

    volume = np.asfortranarray(np.arange(64 * 64 * 40, dtype=dtype).reshape(64, 64, 40))
    tracemalloc.start()
    assert imaging.contrast_problem(volume) is None
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < volume.nbytes / 10, f"{peak} bytes allocated for a {volume.nbytes}-byte volume"
    assert imaging.contrast_problem(np.zeros((4, 4, 2), dtype)) == "no contrast (every finite value is 0)"
