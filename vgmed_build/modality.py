"""The benchmark's modality names, and every spelling and code the source formats use for them.

One table for all adapters and for ingest: a sources file's ``modality``, a DICOM Modality code, an
MSD ``dataset.json`` channel name and an SA-Med2D file-name prefix all end up as the same names.
"""

from __future__ import annotations

CT = "CT"
MRI = "MRI"
PET = "PET"
ULTRASOUND = "Ultrasound"
XRAY = "X-ray"
ENDOSCOPY = "Endoscopy"
DERMOSCOPY = "Dermoscopy"
FUNDUS = "Fundus"
# Natural (non-medical) photographs, e.g. the COCO control set: drafting gives them their own
# templates and prompts, and a release puts them into the control files.
NATURAL = "Natural"

# Spellings and DICOM codes (upper case) -> the benchmark's name.
_NAMES = {
    "CT": CT,
    "MR": MRI,
    "MRI": MRI,
    "PT": PET,
    "PET": PET,
    "US": ULTRASOUND,
    "ULTRASOUND": ULTRASOUND,
    "CR": XRAY,
    "DX": XRAY,
    "XR": XRAY,
    "X-RAY": XRAY,
    "XRAY": XRAY,
    "ES": ENDOSCOPY,
    "ENDOSCOPY": ENDOSCOPY,
    "DERMOSCOPY": DERMOSCOPY,
    "FUNDUS": FUNDUS,
    "OP": FUNDUS,
    "NATURAL": NATURAL,
}
# DICOM codes of modalities outside the benchmark's own set, named as they are read from headers
# only (a sources file's "MG" stays "MG").
_DICOM_ONLY = {"MG": "Mammography", "XA": "X-ray angiography", "RF": "Fluoroscopy", "NM": "Nuclear medicine"}
# MSD / nnU-Net channel names that are MR sequences (upper case, without spaces, '-' and '_'): the MSD's
# own (FLAIR, T1w, t1gd, T2w, T2, ADC, MRI) and those of common nnU-Net datasets (BraTS, ACDC, ...).
_MR_SEQUENCES = {
    "MRI", "MR", "T1", "T1W", "T1GD", "T1CE", "T1C", "T1POST", "T1PRE", "T2", "T2W", "FLAIR", "T2FLAIR",
    "ADC", "DWI", "PD", "PDW", "SWI", "DCE", "CINE", "CINEMRI", "MPRAGE", "T2STAR", "HBV",
}


def normalise(name: str | None) -> str:
    """A spelling or DICOM code (MR, PT, CR, x-ray, ...) -> the benchmark's name; others as given."""
    if not name:
        return ""
    return _NAMES.get(name.strip().upper(), name.strip())


def modality_problem(name: str) -> str | None:
    """Why a modality a user gave (sources file, ``--modality``) is not one vgmed knows, or None.

    A typo ("MIR") would otherwise become a modality of its own, with no templates and no file in
    the release; a spelling, DICOM code or a name of the DICOM-only set (Mammography, ...) is fine.
    """
    known = {*_NAMES.values(), *_DICOM_ONLY.values()}
    if normalise(name) in known or name.strip().upper() in _DICOM_ONLY:
        return None
    return f"unknown modality {name!r}; use one of {', '.join(sorted(known))} (or a DICOM code: CT, MR, PT, US, ...)"


def from_dicom(code: str) -> str:
    """A DICOM Modality code (0008,0060) -> a name ("unknown" when the header gives none)."""
    return _DICOM_ONLY.get(code) or normalise(code) or "unknown"


def from_msd_channel(channel: str) -> str:
    """An MSD / nnU-Net ``dataset.json`` channel name -> a name; "" when the name does not say.

    nnU-Net reads these names only to choose a normalisation, so many say nothing about the
    modality (``zscore``, ``noNorm``, ``rescale_to_0_1``, ``rgb_to_0_1``, ``R``): those give "".
    """
    key = "".join(c for c in channel.upper() if c not in " -_*")
    if key in _MR_SEQUENCES:
        return MRI
    return _NAMES.get(key, "")


def from_samed2d(code: str) -> str:
    """SA-Med2D-20M's file-name modality (``ct_00``, ``mr_t1``, ``x_ray``, ...) -> a name (else the code)."""
    prefix = code.split("_")[0].upper()
    return XRAY if prefix == "X" else _NAMES.get(prefix, code)


# CT windows as (level, width) in Hounsfield units.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (40.0, 400.0),
    "liver": (80.0, 150.0),
    "bone": (400.0, 1800.0),
    "soft_tissue": (50.0, 400.0),
}
