"""Reading volume files of every format the 3D kinds accept, into one convention.

NIfTI (``.nii``, ``.nii.gz``) is read with nibabel, whose affine already maps voxels to RAS
millimetres. The ITK formats of grand-challenge.org, 3D Slicer and nnU-Net v2 (``.mha``, ``.mhd`` +
its data file, ``.nrrd``) are read with SimpleITK, whose geometry (origin, spacing, direction) is in
LPS; it is converted to a RAS affine here, once, so every later step (canonical orientation, sides,
boxes) is the same whatever the format. Data always comes out indexed ``[i, j, k]`` like nibabel's
(SimpleITK's arrays are ``[k, j, i]``). 3D Slicer segmentations (``<case>.seg.nrrd``) also give
their segment names from the ``Segment<N>_Name`` / ``_LabelValue`` / ``_Layer`` header fields.
"""

from __future__ import annotations

import gzip
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vgmed_build.sources.base import SourceError
from vgmed_build.sources.files import rel

# Longest first: '.nii.gz' must win over '.gz'-less matches.
VOLUME_EXTS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")
ITK_EXTS = (".mha", ".mhd", ".nrrd")
SLICER_SEG = ".seg"  # <case>.seg.nrrd: a 3D Slicer segmentation of <case>.nrrd
# LPS (ITK) <-> RAS (NIfTI, vgmed): x and y change sign.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_SEGMENT_KEY = re.compile(r"^Segment(?P<n>\d+)_(?P<field>Name|LabelValue|Layer)$")


@dataclass(frozen=True)
class Segment:
    """One segment of a 3D Slicer segmentation: its voxels are ``data[..., layer] == value``."""

    name: str
    value: int
    layer: int = 0


@dataclass
class VolumeFile:
    """One read volume: data indexed [i, j, k] (a 4th axis for several volumes or layers), RAS affine."""

    data: np.ndarray
    affine: np.ndarray
    label_names: dict[int, str] = field(default_factory=dict)  # from a TotalSegmentator header
    segments: list[Segment] = field(default_factory=list)     # from a 3D Slicer header


def split_name(name: str, exts: tuple[str, ...] = VOLUME_EXTS) -> tuple[str, str] | None:
    """``("case", ".nii.gz")`` for ``case.nii.gz``; None when the name has none of the extensions."""
    lower = name.lower()
    for ext in exts:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], ext
    return None


def case_of(path: Path, exts: tuple[str, ...] = VOLUME_EXTS) -> str | None:
    parts = split_name(path.name, exts)
    return parts[0] if parts else None


def volume_files(folder: Path, exts: tuple[str, ...] = VOLUME_EXTS) -> list[Path]:
    """Volume files of a folder, sorted; hidden files (macOS ``._case.nii.gz`` forks) are skipped."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and case_of(p, exts))


def mhd_data_file(path: Path) -> tuple[str, Path | None]:
    """An ``.mhd`` header's ElementDataFile as written, and its path when it lies in the header's
    folder (None when it leaves it, through ``..``, an absolute path or a symlink: never read)."""
    try:
        text = path.read_text(encoding="latin-1")
    except OSError:
        return "", None
    m = re.search(r"^\s*ElementDataFile\s*=\s*(.+?)\s*$", text, re.MULTILINE)
    value = m.group(1) if m else ""
    if not value or value == "LOCAL" or value.startswith("LIST") or "%" in value:
        return value, None
    data = (path.parent / value).resolve()
    return value, data if data.is_relative_to(path.parent.resolve()) else None


def companion_files(path: Path) -> list[Path]:
    """The file itself and, for an ``.mhd`` header, its data file (both feed the resume fingerprint)."""
    if not path.name.lower().endswith(".mhd") or not path.is_file():
        return [path]
    _, data = mhd_data_file(path)
    return [path, data] if data is not None and data.is_file() else [path]


def drop_trailing_singletons(data: np.ndarray) -> np.ndarray:
    """(I, J, K, 1, ...) -> (I, J, K): NIfTI and ITK writers often keep empty time or component axes."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    return data


def read_volume(path: Path, root: Path, what: str) -> VolumeFile:
    """Read a NIfTI or ITK volume, turning every low-level failure into a SourceError naming the file."""
    name = rel(path, root)
    if not path.is_file():
        raise SourceError(f"{what} file not found", path=name)
    if split_name(path.name, ITK_EXTS):
        return _read_itk(path, name, what)
    try:
        img, data = _load_nifti(path)
    except gzip.BadGzipFile as exc:  # the trailer's CRC or length does not match what was decoded
        raise SourceError(f"damaged gzip file ({exc}); the data cannot be trusted", path=name) from exc
    except Exception as exc:  # nibabel raises many types for truncated / foreign files
        raise SourceError(f"cannot read {what} as NIfTI ({type(exc).__name__}: {exc})", path=name) from exc
    problem = _complex_problem(data, what)
    if problem:
        raise SourceError(problem, path=name)
    names = caret_label_names(img, name) if hasattr(img, "header") else {}
    return VolumeFile(data=data, affine=np.asarray(img.affine, dtype=np.float64), label_names=names)


def _load_nifti(path: Path):
    """(image, voxels) of a NIfTI file. A ``.gz`` file is decompressed once, through Python's gzip,
    which checks the trailer's CRC and length when the stream is read to its end: nibabel alone stops
    before the trailer, so a damaged file would render without a word (and a second read to check it
    would double the decoding time)."""
    import nibabel as nib

    if not path.name.lower().endswith(".gz"):
        img = nib.load(str(path))
        return img, np.asanyarray(img.dataobj)
    from nibabel.fileholders import FileHolder

    with gzip.open(path, "rb") as fh:
        sizeof_hdr = fh.read(4)
        fh.seek(0)
        nifti2 = sizeof_hdr in ((540).to_bytes(4, "little"), (540).to_bytes(4, "big"))
        holder = FileHolder(fileobj=fh)
        img = (nib.Nifti2Image if nifti2 else nib.Nifti1Image).from_file_map({"image": holder, "header": holder})
        data = np.asanyarray(img.dataobj)
        while fh.read(1 << 22):  # to the trailer: gzip checks the CRC and the length here
            pass
    return img, data


def _complex_problem(data: np.ndarray, what: str) -> str | None:
    if np.iscomplexobj(data):
        return (f"{what} holds complex values ({data.dtype}: MR phase or k-space data?); vgmed renders real "
                "intensities: save the magnitude")
    return None


def _read_itk(path: Path, name: str, what: str) -> VolumeFile:
    import SimpleITK as sitk

    if path.name.lower().endswith(".mhd"):
        value, data = mhd_data_file(path)
        if data is None and value and value != "LOCAL":
            raise SourceError(
                f"ElementDataFile {value!r} is not one data file inside the header's folder; refused (nothing outside "
                "the source is read)",
                path=name,
            )
    try:
        img = sitk.ReadImage(str(path))
        arr = sitk.GetArrayFromImage(img)
    except RuntimeError as exc:  # ITK reports unreadable, truncated and foreign files this way
        first = str(exc).strip().splitlines()
        raise SourceError(f"cannot read {what} with SimpleITK ({first[-1] if first else exc})", path=name) from None
    problem = _complex_problem(arr, what)
    if problem:
        raise SourceError(problem, path=name)
    dim = img.GetDimension()
    if dim not in (3, 4):
        raise SourceError(f"{what} must be a 3D volume, got a {dim}D image", path=name)
    n_comp = img.GetNumberOfComponentsPerPixel()
    # [k, j, i] (+ components last) -> [i, j, k] (+ components or time last)
    spatial = arr.ndim - (1 if n_comp > 1 else 0)
    order = tuple(range(spatial))[::-1] + tuple(range(spatial, arr.ndim))
    data = np.ascontiguousarray(np.transpose(arr, order))
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)[:3]
    origin = np.asarray(img.GetOrigin(), dtype=np.float64)[:3]
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = _LPS_TO_RAS @ origin
    header = {k: img.GetMetaData(k) for k in img.GetMetaDataKeys()}
    return VolumeFile(data=data, affine=affine, segments=slicer_segments(header, name))


def slicer_segments(header: dict[str, str], name: str) -> list[Segment]:
    """The segments a 3D Slicer ``.seg.nrrd`` header describes (empty for any other file).

    Slicer writes ``Segment0_Name``, ``Segment0_LabelValue`` and ``Segment0_Layer`` per segment;
    overlapping segments lie in different layers (the file's 4th axis).
    """
    fields: dict[int, dict[str, str]] = {}
    for key, value in header.items():
        m = _SEGMENT_KEY.match(key)
        if m:
            fields.setdefault(int(m["n"]), {})[m["field"]] = value.strip()
    segments: list[Segment] = []
    for n, seg in sorted(fields.items()):
        try:
            value, layer = int(seg.get("LabelValue", n + 1)), int(seg.get("Layer", 0))
        except ValueError:
            raise SourceError(
                f"Segment{n}_LabelValue / _Layer ({seg.get('LabelValue')!r} / {seg.get('Layer')!r}) "
                "is not an integer",
                path=name,
            ) from None
        segments.append(Segment(name=seg.get("Name") or f"Segment{n}", value=value, layer=layer))
    return segments


def caret_label_names(img, name: str) -> dict[int, str]:
    """Label names TotalSegmentator (``--ml``) stores in a NIfTI extension (a Caret XML label table)."""
    out: dict[int, str] = {}
    for ext in getattr(img.header, "extensions", []):
        content = ext.get_content()
        if not isinstance(content, bytes) or b"<CaretExtension" not in content:
            continue
        try:
            tree = ET.fromstring(content.decode("utf-8", errors="replace").strip())
        except ET.ParseError as exc:
            problem = f"label table in the NIfTI header extension is not valid XML ({exc})"
            raise SourceError(problem, path=name) from None
        for label in tree.iter("Label"):
            try:
                out[int(label.get("Key", ""))] = (label.text or "").strip()
            except ValueError:
                raise SourceError(f"label table entry Key={label.get('Key')!r} is not an integer", path=name) from None
    out.pop(0, None)
    return {k: v for k, v in out.items() if v}


def on_grid(data: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], target: np.ndarray, name: str,
            image: str) -> np.ndarray:
    """Place a label volume on an image's voxel grid when it is a crop of it (Slicer's extent crop).

    Same grid: returned as is. Same axes and spacing with a whole-voxel offset: padded / cropped
    into the image's grid (voxels outside the image must be background). Anything else is an error.
    """
    if data.shape[:3] == tuple(shape[:3]) and np.allclose(affine, target, atol=1e-3):
        return data
    rot_ok = np.allclose(affine[:3, :3], target[:3, :3], atol=1e-4 * max(1.0, np.abs(target[:3, :3]).max()))
    offset = np.linalg.solve(target[:3, :3], affine[:3, 3] - target[:3, 3]) if rot_ok else None
    if offset is None or not np.allclose(offset, np.rint(offset), atol=1e-3):
        raise SourceError(
            f"label map affine differs from image {image} affine (they are not on the same voxel grid)",
            path=name,
        )
    off = np.rint(offset).astype(int)
    out = np.zeros(tuple(shape[:3]) + data.shape[3:], dtype=data.dtype)
    src = tuple(slice(max(0, -o), min(n, s - o)) for o, n, s in zip(off, data.shape[:3], shape[:3], strict=True))
    if any(sl.stop <= sl.start for sl in src):
        raise SourceError(f"label map lies wholly outside image {image}", path=name)
    dst = tuple(slice(sl.start + o, sl.stop + o) for o, sl in zip(off, src, strict=True))
    kept = data[src]
    if np.count_nonzero(kept) != np.count_nonzero(data):
        raise SourceError(f"label map has labelled voxels outside image {image}", path=name)
    out[dst] = kept
    return out
