"""Real DICOM test data built from pydicom's CT_small.dcm: a multi-slice series, a SEG, an RTSTRUCT.

CT_small keeps its (fake but realistic) patient header: PatientName, PatientID, InstitutionName,
dates. Tests check that none of those strings ever reaches the catalog or a rendered image.
"""

from __future__ import annotations

import copy
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import Code, codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))
HEADER_STRINGS = ("CompressedSamples", "1CT1", "JFK IMAGING CENTER", "20040119")
SLICE_STEP = 5.0
# File names deliberately out of z order: IM0004 is the lowest slice.
FILE_ORDER = [4, 2, 0, 3, 1]


def ct_series(folder: Path, n: int = 5, step: float = SLICE_STEP, brighten_hu: int = 100) -> list[Dataset]:
    """n copies of CT_small stacked along z (slice k brighter by brighten_hu * k), under shuffled names.

    Returns the datasets in z order (index k = position k).
    """
    folder.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(CT_SMALL)
    series, frame = generate_uid(), generate_uid()
    out = []
    for k in range(n):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = frame
        ds.InstanceNumber = k + 1
        x, y, z = (float(v) for v in base.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + k * step]
        ds.SliceLocation = z + k * step
        ds.PixelData = (base.pixel_array + brighten_hu * k).astype(base.pixel_array.dtype).tobytes()
        name = f"IM{FILE_ORDER[k % len(FILE_ORDER)] + 10 * (k // len(FILE_ORDER)):04d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
        ds.filename = str(folder / name)
        out.append(ds)
    return out


def hu(ds: Dataset) -> np.ndarray:
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def body_and_bone(series: list[Dataset]) -> np.ndarray:
    """(n, rows, cols, 2) masks: 'body' (HU > -300) and 'bone' (HU > 600), overlapping by design."""
    h = np.stack([hu(ds) for ds in series])
    return np.stack([h > -300, h > 600], axis=-1)


def _segment(number: int, label: str, kind: Code) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label,
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=kind,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="HU threshold", version="1", family=codes.cid7162.HistogramAnalysis
        ),
    )


def make_seg(
    series: list[Dataset], masks: np.ndarray, labels: list[str], path: Path, kinds: list[Code] | None = None
) -> hd.seg.Segmentation:
    """A real DICOM SEG (highdicom) over ``series`` with one segment per last-axis channel of ``masks``."""
    kinds = kinds or [codes.SCT.BodyStructure, codes.SCT.Bone]
    seg = hd.seg.Segmentation(
        source_images=series,
        pixel_array=masks.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_segment(n + 1, label, kinds[n % len(kinds)]) for n, label in enumerate(labels)],
        series_instance_uid=generate_uid(),
        series_number=100,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="vgmed tests",
        manufacturer_model_name="fixture",
        software_versions="1",
        device_serial_number="1",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return seg


def contour(points_ij: list[tuple[float, float]], ds: Dataset) -> list[float]:
    """Voxel (column i, row j) corners on slice ``ds`` -> flat LPS ContourData in mm."""
    x0, y0, z = (float(v) for v in ds.ImagePositionPatient)
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    out: list[float] = []
    for i, j in points_ij:
        out += [x0 + i * col_spacing, y0 + j * row_spacing, z]
    return out


def make_rtstruct(
    series: list[Dataset], rois: dict[str, list[tuple[int, list[float]]]], path: Path
) -> Dataset:
    """An RTSTRUCT referencing ``series``; ``rois`` maps ROI name -> [(slice k, ContourData), ...]."""
    ref = series[0]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate"):
        setattr(ds, keyword, getattr(ref, keyword))
    ds.SeriesInstanceUID = generate_uid()
    ds.StructureSetLabel = "fixture"
    series_ref = Dataset()
    series_ref.SeriesInstanceUID = ref.SeriesInstanceUID
    series_ref.ContourImageSequence = Sequence([_image_ref(s) for s in series])
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study_ref.ReferencedSOPInstanceUID = ref.StudyInstanceUID
    study_ref.RTReferencedSeriesSequence = Sequence([series_ref])
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = ref.FrameOfReferenceUID
    frame_ref.RTReferencedStudySequence = Sequence([study_ref])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame_ref])
    ds.StructureSetROISequence = Sequence()
    ds.ROIContourSequence = Sequence()
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = ref.FrameOfReferenceUID
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "MANUAL"
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ROIDisplayColor = [255, 0, 0]
        item.ContourSequence = Sequence()
        for k, data in contours:
            c = Dataset()
            c.ContourImageSequence = Sequence([_image_ref(series[k])])
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(data) // 3
            c.ContourData = [round(v, 4) for v in data]
            item.ContourSequence.append(c)
        ds.ROIContourSequence.append(item)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


def _image_ref(ds: Dataset) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    return ref


def square(i0: int, j0: int, i1: int, j1: int) -> list[tuple[float, float]]:
    """Corners around pixels i0..i1-1 x j0..j1-1, on pixel edges (so the fill is unambiguous)."""
    return [(i0 - 0.5, j0 - 0.5), (i1 - 0.5, j0 - 0.5), (i1 - 0.5, j1 - 0.5), (i0 - 0.5, j1 - 0.5)]
