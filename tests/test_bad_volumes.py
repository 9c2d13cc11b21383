"""Files that used to end in a traceback or an "internal error" line (issue 30): each is one item's
error saying what is wrong, the run goes on and the good item is stored. Files are written by nibabel,
pydicom and Pillow; the damaged ones are then damaged the way a disk or a transfer does."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from dicom_fixtures import contour, ct_series, make_rtstruct, square
from ingest_fixtures import ingest, mni, save, write_pair
from PIL import Image
from test_bad_input import catalog_rows
from test_source_images2d import disc_mask, retina, write


def save_sform_only(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """A NIfTI whose only orientation is its sform (nibabel refuses a singular qform, not an sform)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(data.dtype)
    header.set_data_shape(data.shape)
    header.set_sform(affine, code=1)
    header.set_qform(None, code=0)
    nib.save(nib.Nifti1Image(data, None, header=header), path)


def test_broken_nifti_volumes_are_each_one_clear_error(tmp_path, capsys):
    image, labels, affine = mni()
    src = tmp_path / "nifti"
    write_pair(src, "good", image, labels, affine)
    singular = affine.copy()
    singular[:, 0] = 0  # a zero voxel size along x
    save_sform_only(src / "singular.nii.gz", image, singular)
    save_sform_only(src / "singular_seg.nii.gz", labels, singular)
    huge = labels.astype(np.uint64)
    huge[huge == 1] = np.iinfo(np.uint64).max
    save(src / "uint64.nii.gz", image, affine)
    nib.save(nib.Nifti1Image(huge, affine, dtype=np.uint64), src / "uint64_seg.nii.gz")
    write_pair(src, "complex", image.astype(np.complex64) * (1 + 1j), labels, affine)
    write_pair(src, "crc", image, labels, affine)
    data = bytearray((src / "crc.nii.gz").read_bytes())
    data[-8] ^= 0xFF  # the gzip trailer's CRC-32: the voxels still decompress
    (src / "crc.nii.gz").write_bytes(bytes(data))
    build = tmp_path / "build"
    assert ingest(build, "--source", f"nifti:{src}", "--modality", "MRI", "--with-paths") == 1
    done, errors = catalog_rows(build)
    assert done == ["good.nii.gz"]
    assert errors["singular.nii.gz"] == ("image has a singular voxel-to-world affine (voxel sizes 0, 2, 2 mm, axes "
                                         "not independent): it cannot be placed; nothing to render")
    assert errors["uint64.nii.gz"] == ("label map holds the value 18446744073709551615, beyond any label table "
                                       "(labels go up to 2147483647); is it a label map?")
    assert errors["complex.nii.gz"].startswith("image holds complex values (complex64: MR phase or k-space data?)")
    assert errors["crc.nii.gz"].startswith("damaged gzip file (CRC check failed")
    err = capsys.readouterr().err
    assert "internal error" not in err and "Traceback" not in err
    assert (src / "crc.nii.gz").read_bytes() == bytes(data)  # the user's file as it was


def test_dicom_with_zero_pixel_spacing_is_one_clear_error(tmp_path, capsys):
    src = tmp_path / "dicom"
    good = ct_series(src / "good")
    make_rtstruct(good, {"tumour": [(2, contour(square(40, 30, 60, 50), good[2]))]}, src / "rt_good.dcm")
    zero = ct_series(src / "zero")
    for ds in zero:
        ds.PixelSpacing = [0, 0]
        ds.save_as(ds.filename)
    make_rtstruct(zero, {"tumour": [(2, contour(square(40, 30, 60, 50), good[2]))]}, src / "rt_zero.dcm")
    build = tmp_path / "build"
    assert ingest(build, "--source", f"dicom:{src}", "--with-paths") == 1
    done, errors = catalog_rows(build)
    assert done == ["good"]
    assert errors == {"zero": "PixelSpacing [0.0, 0.0] is not two positive sizes in mm; the slices cannot be placed"}
    assert "internal error" not in capsys.readouterr().err


def png_declaring(path: Path, width: int, height: int) -> None:
    """A small real PNG (Pillow) whose header then declares ``width`` x ``height`` (CRC recomputed):
    the few hundred bytes of a decompression bomb."""
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    start = data.index(b"IHDR")
    data[start + 4 : start + 12] = struct.pack(">II", width, height)
    data[start + 17 : start + 21] = struct.pack(">I", zlib.crc32(bytes(data[start : start + 17])))
    path.write_bytes(bytes(data))


def test_a_decompression_bomb_png_is_one_clear_error(tmp_path, capsys):
    src = tmp_path / "fundus"
    retina(src, "images/eye1.jpg")
    write(src / "masks" / "eye1_disc.png", disc_mask())
    png_declaring(src / "images" / "bomb.png", 20_000, 20_000)
    write(src / "masks" / "bomb_disc.png", disc_mask())
    build = tmp_path / "build"
    assert ingest(build, "--source", f"images2d:{src}", "--modality", "Fundus", "--with-paths") == 1
    done, errors = catalog_rows(build)
    assert done == ["images/eye1.jpg"]
    assert errors["images/bomb.png"].startswith("cannot read image (Image size (400000000 pixels) exceeds limit")
    assert "internal error" not in capsys.readouterr().err
