"""DICOM series with DICOM SEG and/or RTSTRUCT annotations, and single-file 2D DICOM images.

The source root is walked recursively; every file is opened with pydicom and classified by its SOP
Class (or Modality), never by its name: image slices are grouped by series, SEG and RTSTRUCT files
are attached to the series they reference. Slices are sorted by their position along the slice
normal (``ImagePositionPatient . normal``), not by file name. A series becomes one
:class:`~vgmed_build.sources.base.Volume` with a voxel -> RAS affine (DICOM geometry is LPS; x and y
are flipped). Single-file projection / ultrasound images (CR, DX, MG, US, ...) become 2D items and
pair with mask files exactly like the ``images2d`` source (``options.masks``, default
``masks/{stem}_{label}.png`` relative to the source root, ``{stem}`` = the DICOM file's stem).

Nothing read from a header other than geometry, pixels, Modality and segment / ROI names leaves
this module: item keys are folder paths, messages name files, never patients or UIDs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import highdicom as hd
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from skimage.draw import polygon
from tqdm import tqdm

from vgmed_build import modality as modalities
from vgmed_build.imaging import to_uint8
from vgmed_build.sources import SOURCE_KINDS
from vgmed_build.sources.base import Image2D, SourceError, SourceItem, SourceSpec, Volume, safe_message
from vgmed_build.sources.files import rel
from vgmed_build.sources.masks import (
    IMAGE_EXTS,
    MASK_OPTION_TYPES,
    MaskLayout,
    load_masks,
    wanted_tags,
)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
PROJECTION_MODALITIES = {"CR", "DX", "MG", "US", "XA", "RF", "IO", "PX", "ES", "XC", "OP"}
# Mask images and side files that may sit under a DICOM root; never opened as DICOM.
NOT_DICOM = (*IMAGE_EXTS, ".json", ".toml", ".yaml", ".yml", ".txt", ".md", ".csv")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class _Slice:
    """What listing keeps of one image file (kept in memory only, never stored)."""

    path: Path
    series: str = field(repr=False)
    instance: str = field(repr=False)
    modality: str
    orientation: np.ndarray | None
    position: np.ndarray | None

    @property
    def planar_2d(self) -> bool:
        return self.modality in PROJECTION_MODALITIES or self.orientation is None or self.position is None


@dataclass
class _Annotation:
    path: Path
    kind: Literal["seg", "rtstruct"]
    # What the header references; used for matching only, kept out of reprs and never stored.
    series: str | None = field(default=None, repr=False)
    instances: set[str] = field(default_factory=set, repr=False)


def _floats(ds: pydicom.Dataset, keyword: str, n: int) -> np.ndarray | None:
    value = ds.get(keyword)
    if value is None or len(value) != n:
        return None
    return np.array([float(v) for v in value], dtype=np.float64)


def _check_pixel_length(ds: pydicom.Dataset) -> None:
    """Truncated files often still parse; compare the stored pixel bytes with what the header needs."""
    if "PixelData" not in ds:
        raise ValueError("no pixel data (truncated file?)")
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and syntax.is_compressed:
        return
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1))
    bits = int(ds.get("BitsAllocated", 8))
    expected = math.ceil(ds.Rows * ds.Columns * frames * samples * bits / 8)
    if len(ds.PixelData) < expected:
        raise ValueError(
            f"pixel data is {len(ds.PixelData)} bytes, the header needs {expected} (truncated file?)"
        )


def _referenced_series(ds: pydicom.Dataset, kind: str) -> tuple[str | None, set[str]]:
    """The series a SEG / RTSTRUCT points at, and the image instances it names."""
    series, instances = None, set()
    if kind == "seg":
        for ref in ds.get("ReferencedSeriesSequence", []):
            series = series or ref.get("SeriesInstanceUID")
            instances |= {i.ReferencedSOPInstanceUID for i in ref.get("ReferencedInstanceSequence", [])}
        for frame in ds.get("PerFrameFunctionalGroupsSequence", []):
            for der in frame.get("DerivationImageSequence", []):
                instances |= {s.ReferencedSOPInstanceUID for s in der.get("SourceImageSequence", [])}
        return series, instances
    for frame_ref in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame_ref.get("RTReferencedStudySequence", []):
            for ref in study.get("RTReferencedSeriesSequence", []):
                series = series or ref.get("SeriesInstanceUID")
                instances |= {i.ReferencedSOPInstanceUID for i in ref.get("ContourImageSequence", [])}
    for roi in ds.get("ROIContourSequence", []):
        for contour in roi.get("ContourSequence", []):
            instances |= {i.ReferencedSOPInstanceUID for i in contour.get("ContourImageSequence", [])}
    return series, instances


def _scan(root: Path) -> tuple[list[_Slice], list[_Annotation], list[SourceError]]:
    """Open every file under the root once and sort it into image slices and annotations."""
    slices: list[_Slice] = []
    annotations: list[_Annotation] = []
    errors: list[SourceError] = []
    paths = [p for p in sorted(root.rglob("*")) if p.is_file()]
    # Opening every file is the slow part of listing a large DICOM tree: show it (TTY only).
    for path in tqdm(paths, desc=f"scan {root.name}", unit="file", disable=None, leave=False):
        name = rel(path, root)
        if any(part.startswith(".") for part in Path(name).parts) or path.suffix.lower() in NOT_DICOM:
            continue
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            errors.append(SourceError("not a DICOM file (no DICM preamble); skipped", path=name))
            continue
        except Exception as exc:  # pydicom raises many types on damaged files
            errors.append(SourceError(f"unreadable DICOM file ({safe_message(exc)}); skipped", path=name))
            continue
        sop_class = str(ds.get("SOPClassUID", ""))
        modality = str(ds.get("Modality", "")).upper()
        if sop_class == DICOMDIR_SOP_CLASS or name.upper().endswith("DICOMDIR"):
            continue
        if sop_class == SEG_SOP_CLASS or modality == "SEG":
            annotations.append(_Annotation(path, "seg", *_referenced_series(ds, "seg")))
            continue
        if sop_class == RTSTRUCT_SOP_CLASS or modality == "RTSTRUCT":
            annotations.append(_Annotation(path, "rtstruct", *_referenced_series(ds, "rtstruct")))
            continue
        try:
            if "Rows" not in ds or "Columns" not in ds:
                raise ValueError("no image size (Rows / Columns); not an image")
            _check_pixel_length(ds)
            if int(ds.get("NumberOfFrames", 1) or 1) > 1:
                raise ValueError("multi-frame images are not supported; store one slice per file")
            slices.append(
                _Slice(
                    path=path,
                    series=str(ds.get("SeriesInstanceUID", "")),
                    instance=str(ds.get("SOPInstanceUID", "")),
                    modality=modality,
                    orientation=_floats(ds, "ImageOrientationPatient", 6),
                    position=_floats(ds, "ImagePositionPatient", 3),
                )
            )
        except (ValueError, AttributeError, TypeError) as exc:
            errors.append(SourceError(f"{safe_message(exc, typed=False)}; skipped", path=name))
    return slices, annotations, errors


def _series_keys(groups: dict[str, list[_Slice]], root: Path) -> dict[str, str]:
    """Key per series: its folder relative to the root (the root's name for the root itself)."""
    keys: dict[str, str] = {}
    by_folder: dict[str, list[str]] = defaultdict(list)
    for uid, members in sorted(groups.items(), key=lambda kv: min(s.path for s in kv[1])):
        folders = {s.path.parent for s in members}
        common = Path(*_common_parts([f.parts for f in folders]))
        folder = rel(common, root) if common != root else root.name
        by_folder[folder].append(uid)
    for folder, uids in by_folder.items():
        for n, uid in enumerate(uids, start=1):
            keys[uid] = folder if len(uids) == 1 else f"{folder}#series{n}"
    return keys


def _common_parts(parts: list[tuple[str, ...]]) -> tuple[str, ...]:
    out = []
    for column in zip(*parts, strict=False):
        if len(set(column)) != 1:
            break
        out.append(column[0])
    return tuple(out)


class DicomAdapter:
    """``kind = "dicom"``: one item per annotated series (and per 2D DICOM image with masks)."""

    kind = "dicom"
    option_types = MASK_OPTION_TYPES

    def items(self, spec: SourceSpec) -> Iterator[SourceItem | SourceError]:
        root = Path(spec.path)
        if not root.is_dir():
            yield SourceError("source folder not found or not a folder", path=root.name)
            return
        slices, annotations, errors = _scan(root)
        yield from errors
        yield from self._planar_items(spec, root, [s for s in slices if s.planar_2d])
        groups: dict[str, list[_Slice]] = defaultdict(list)
        for s in slices:
            if not s.planar_2d:
                groups[s.series].append(s)
        keys = _series_keys(groups, root)
        instance_series = {s.instance: s.series for members in groups.values() for s in members}
        attached: dict[str, list[_Annotation]] = defaultdict(list)
        for ann in annotations:
            series = ann.series if ann.series in groups else None
            if series is None:  # no (matching) series reference: try the referenced instances
                hits = {instance_series[i] for i in ann.instances if i in instance_series}
                series = hits.pop() if len(hits) == 1 else None
            if series is None:
                yield SourceError(
                    f"the image series this {ann.kind.upper()} references "
                    "is not under the source root",
                    path=rel(ann.path, root),
                )
                continue
            attached[series].append(ann)
        for uid, members in sorted(groups.items(), key=lambda kv: keys[kv[0]]):
            key = keys[uid]
            if not attached.get(uid):
                yield SourceError("image series without a SEG or RTSTRUCT; nothing to ingest", path=key)
                continue
            anns = sorted(attached[uid], key=lambda a: a.path)
            yield SourceItem(
                key=key,
                files=sorted(s.path for s in members) + [a.path for a in anns],
                load=partial(_load_series, spec, root, key, sorted(s.path for s in members), anns),
            )

    def _planar_items(
        self, spec: SourceSpec, root: Path, planar: list[_Slice]
    ) -> Iterator[SourceItem | SourceError]:
        if not planar:
            return
        try:
            layout = MaskLayout.from_options(spec.options)
        except SourceError as exc:
            yield exc
            return
        find = layout.finder(root, (s.path.stem for s in planar), wanted_tags(spec, layout))
        for s in planar:
            name = rel(s.path, root)
            files = find(s.path.stem)
            if not files:
                looked = layout.describe()
                yield SourceError(f"2D DICOM image without mask files (looked for {looked})", path=name)
                continue
            yield SourceItem(
                key=name,
                files=[s.path, *sorted(files.values())],
                load=partial(_load_planar, spec, root, s.path, files, layout),
            )


# ----------------------------------------------------------------------------------------------
# Series -> volume


@dataclass
class _Stack:
    """A sorted series: geometry plus where each image instance landed along the slice axis."""

    image: np.ndarray              # (I = column, J = row, K = slice) float32
    affine_lps: np.ndarray         # voxel -> LPS mm
    instance_k: dict[str, int]     # SOP instance -> k
    modality: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.image.shape  # type: ignore[return-value]


def _read_slices(root: Path, paths: list[Path]) -> list[tuple[pydicom.Dataset, np.ndarray]]:
    out = []
    for path in paths:
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array.astype(np.float32)
        except Exception as exc:
            raise SourceError(f"cannot decode pixels ({safe_message(exc)})", path=rel(path, root)) from None
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        out.append((ds, pixels * slope + intercept))
    return out


def _stack(root: Path, key: str, paths: list[Path]) -> _Stack:
    """Sort by position along the normal, check the geometry, fill whole-slice gaps with blanks."""
    read = _read_slices(root, paths)
    first = read[0][0]
    iop = _floats(first, "ImageOrientationPatient", 6)
    spacing = _floats(first, "PixelSpacing", 2)
    if iop is None or spacing is None:
        raise SourceError("slices lack ImageOrientationPatient or PixelSpacing", path=key)
    if not all(np.isfinite(v) and v > 0 for v in spacing):
        raise SourceError(f"PixelSpacing {spacing.tolist()} is not two positive sizes in mm; the slices cannot be "
                          "placed", path=key)
    if not np.isclose(np.linalg.norm(np.cross(iop[:3], iop[3:])), 1.0, atol=1e-3):
        raise SourceError("ImageOrientationPatient is not two perpendicular unit directions; the slices cannot be "
                          "placed", path=key)
    for ds, _ in read[1:]:
        other_iop = _floats(ds, "ImageOrientationPatient", 6)
        other_spacing = _floats(ds, "PixelSpacing", 2)
        if (
            other_iop is None or other_spacing is None
            or not np.allclose(other_iop, iop, atol=1e-4)
            or not np.allclose(other_spacing, spacing, atol=1e-4)
            or (ds.Rows, ds.Columns) != (first.Rows, first.Columns)
        ):
            raise SourceError(
                f"inconsistent slice geometry ({rel(Path(ds.filename), root)} differs in "
                "orientation, pixel spacing or size from the other slices)",
                path=key,
            )
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.array([_floats(ds, "ImagePositionPatient", 3) for ds, _ in read])
    order = np.argsort(positions @ normal, kind="stable")
    read = [read[i] for i in order]
    positions = positions[order]
    along = positions @ normal
    in_plane = positions - positions[:1] - np.outer(along - along[0], normal)
    if np.abs(in_plane).max(initial=0.0) > 0.1 * float(min(spacing)):
        raise SourceError("inconsistent slice geometry (slices are not stacked along their normal)", path=key)
    steps = np.diff(along)
    if steps.size and steps.min() < 1e-3:
        raise SourceError("inconsistent slice geometry (two slices at the same position)", path=key)
    if steps.size:
        dz = float(steps.min())
        ratios = steps / dz
        if np.abs(ratios - np.rint(ratios)).max() > 0.05:
            raise SourceError("inconsistent slice geometry (uneven slice spacing)", path=key)
        index = np.concatenate([[0], np.cumsum(np.rint(ratios).astype(int))])
    else:
        dz = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
        index = np.array([0])
    n_k = int(index[-1]) + 1
    cols, rows = int(first.Columns), int(first.Rows)
    image = np.empty((cols, rows, n_k), dtype=np.float32)
    image[...] = min(float(px.min()) for _, px in read)  # whole missing slices stay blank
    instance_k = {}
    for (ds, px), k in zip(read, index, strict=True):
        image[:, :, k] = px.T
        instance_k[str(ds.get("SOPInstanceUID", ""))] = int(k)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * spacing[1]   # i: along a row, one column step
    affine[:3, 1] = col_dir * spacing[0]   # j: down a column, one row step
    affine[:3, 2] = normal * dz
    affine[:3, 3] = positions[0]
    modality = str(first.get("Modality", "")).upper()
    return _Stack(image=image, affine_lps=affine, instance_k=instance_k, modality=modality)


def _load_series(
    spec: SourceSpec, root: Path, key: str, paths: list[Path], anns: list[_Annotation]
) -> Volume:
    stack = _stack(root, key, paths)
    masks: dict[str, np.ndarray] = {}
    for ann in anns:
        reader, what = (_seg_masks, "segment") if ann.kind == "seg" else (_rtstruct_masks, "ROI")
        for raw_name, mask in reader(root, ann.path, stack):
            name = spec.labels.get(raw_name, raw_name)
            if not name:  # mapped to "": dropped
                continue
            if not mask.any():
                if spec.options.get("skip_empty", False):
                    continue
                raise SourceError(
                    f"{what} {raw_name!r} is empty on this series "
                    "(set options.skip_empty to drop empty structures)",
                    path=rel(ann.path, root),
                )
            masks[name] = masks[name] | mask if name in masks else mask
    if not masks:
        raise SourceError("no non-empty segment or ROI", path=key)
    modality = spec.modality or modalities.from_dicom(stack.modality)
    return Volume(image=stack.image, affine=LPS_TO_RAS @ stack.affine_lps, modality=modality, masks=masks)


# ----------------------------------------------------------------------------------------------
# DICOM SEG


def _seg_masks(root: Path, path: Path, stack: _Stack) -> list[tuple[str, np.ndarray]]:
    """One boolean volume per segment (segments may overlap), aligned with the stack."""
    name = rel(path, root)
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:
        raise SourceError(f"cannot read DICOM SEG ({safe_message(exc)})", path=name) from None
    if (int(seg.Rows), int(seg.Columns)) != (stack.shape[1], stack.shape[0]):
        raise SourceError("SEG frame size differs from the referenced series' slice size", path=name)
    segments = [(int(d.SegmentNumber), str(d.SegmentLabel)) for d in seg.SegmentSequence]
    numbers = [n for n, _ in segments]
    volume = np.zeros((*stack.shape, len(segments)), dtype=bool)
    referenced = [uid for uid in stack.instance_k if uid]
    try:  # source-instance references: the robust way
        frames = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=referenced,
            segment_numbers=numbers,
            combine_segments=False,
            ignore_spatial_locations=True,
            assert_missing_frames_are_empty=True,
        )  # (instances, rows, cols, segments)
        for n_uid, uid in enumerate(referenced):
            volume[:, :, stack.instance_k[uid], :] = np.transpose(frames[n_uid], (1, 0, 2)) > 0.5
    except Exception:  # no usable references: place each frame by its plane position
        _place_seg_frames_by_position(seg, name, stack, numbers, volume)
    return [(label, volume[..., s]) for s, (_, label) in enumerate(segments)]


def _place_seg_frames_by_position(
    seg: pydicom.Dataset, name: str, stack: _Stack, numbers: list[int], volume: np.ndarray
) -> None:
    try:
        pixels = seg.pixel_array
    except Exception as exc:
        raise SourceError(f"cannot decode SEG frames ({safe_message(exc)})", path=name) from None
    pixels = pixels.reshape(-1, seg.Rows, seg.Columns)
    fractional = str(seg.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL"
    scale = float(seg.get("MaximumFractionalValue", 1)) if fractional else 1.0
    inverse = np.linalg.inv(stack.affine_lps)
    shared = seg.get("SharedFunctionalGroupsSequence", [None])[0]
    for n_frame, frame in enumerate(seg.get("PerFrameFunctionalGroupsSequence", [])):
        try:
            position = np.array(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
            segment = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        except (AttributeError, IndexError) as exc:
            raise SourceError(
                f"SEG frames carry neither source references nor plane positions ({safe_message(exc)})",
                path=name,
            ) from None
        orient_holder = frame if "PlaneOrientationSequence" in frame else shared
        if orient_holder is not None and "PlaneOrientationSequence" in orient_holder:
            iop = np.array(orient_holder.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
            expected = np.concatenate([stack.affine_lps[:3, 0], stack.affine_lps[:3, 1]])
            expected = expected / np.repeat(np.linalg.norm(expected.reshape(2, 3), axis=1), 3)
            if not np.allclose(iop, expected, atol=1e-4):
                raise SourceError("SEG frame orientation differs from the series' slices", path=name)
        ijk = (inverse @ np.append(position, 1.0))[:3]
        k = int(round(ijk[2]))
        if np.abs(ijk - [0, 0, k]).max() > 0.1 or not 0 <= k < stack.shape[2]:
            raise SourceError(f"SEG frame {n_frame + 1} lies off the referenced series' slices", path=name)
        if segment in numbers:
            values = pixels[n_frame].T.astype(np.float32) / scale
            volume[:, :, k, numbers.index(segment)] |= values > 0.5


# ----------------------------------------------------------------------------------------------
# RTSTRUCT


def _rtstruct_masks(root: Path, path: Path, stack: _Stack) -> list[tuple[str, np.ndarray]]:
    """Rasterise each ROI's closed planar contours (even-odd, so inner contours are holes)."""
    name = rel(path, root)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise SourceError(f"cannot read RTSTRUCT ({safe_message(exc)})", path=name) from None
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.get("StructureSetROISequence", [])}
    inverse = np.linalg.inv(stack.affine_lps)
    n_i, n_j, n_k = stack.shape
    out = []
    for roi in ds.get("ROIContourSequence", []):
        number = int(roi.ReferencedROINumber)
        label = names.get(number, f"ROI {number}")
        mask = np.zeros(stack.shape, dtype=bool)
        for contour in roi.get("ContourSequence", []):
            if str(contour.get("ContourGeometricType", "CLOSED_PLANAR")).upper() != "CLOSED_PLANAR":
                continue  # points and open polylines enclose no area
            points = np.asarray([float(v) for v in contour.ContourData], dtype=np.float64).reshape(-1, 3)
            if not np.isfinite(points).all():
                raise SourceError(f"a contour of ROI {label!r} has a coordinate that is not a finite number", path=name)
            ijk = (inverse @ np.c_[points, np.ones(len(points))].T)[:3]
            k = int(round(float(ijk[2].mean())))
            if np.abs(ijk[2] - k).max() > 0.25 or not 0 <= k < n_k:
                raise SourceError(
                    f"a contour of ROI {label!r} lies off the referenced series' slices",
                    path=name,
                )
            rr, cc = polygon(ijk[0], ijk[1], shape=(n_i, n_j))
            filled = np.zeros((n_i, n_j), dtype=bool)
            filled[rr, cc] = True
            mask[:, :, k] ^= filled
        out.append((label, mask))
    return out


# ----------------------------------------------------------------------------------------------
# Single-file 2D DICOM images


def _load_planar(
    spec: SourceSpec, root: Path, path: Path, files: dict[str, Path], layout: MaskLayout
) -> Image2D:
    name = rel(path, root)
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as exc:
        raise SourceError(f"cannot decode pixels ({safe_message(exc)})", path=name) from None
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        rgb = pixels if pixels.dtype == np.uint8 else to_uint8(pixels.astype(np.float64))
        image = np.ascontiguousarray(rgb)
    elif pixels.ndim == 2:
        image = _display_grey(ds, pixels.astype(np.float64))
    else:
        raise SourceError(f"unsupported 2D DICOM pixel layout {pixels.shape}", path=name)
    modality_code = str(ds.get("Modality", "")).upper()
    modality = spec.modality or modalities.from_dicom(modality_code)
    labels = load_masks(layout, files, image.shape[:2], spec, root, name)
    return Image2D(pixels=image, modality=modality, **labels)


def _display_grey(ds: pydicom.Dataset, values: np.ndarray) -> np.ndarray:
    """Rescale, then the header's first window if any, else the 0.5-99.5 percentile range."""
    values = values * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        c = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        w = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        lo, hi = c - w / 2, c + w / 2
    else:
        lo, hi = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    image = to_uint8(values, lo, hi)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        image = 255 - image  # MONOCHROME1 shows low values bright
    return image


SOURCE_KINDS.register("dicom", DicomAdapter())
