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
}
# DICOM codes of modalities outside the benchmark's own set, named as they are read from headers
# only (a sources file's "MG" stays "MG").
_DICOM_ONLY = {"MG": "Mammography", "XA": "X-ray angiography", "RF": "Fluoroscopy", "NM": "Nuclear medicine"}
# The channel names of an MSD / nnU-Net dataset.json that are not MRI sequences (T1, T2, FLAIR, ADC, ...).
_MSD_NOT_MRI = {"CT", "PET", "PT", "US"}


def normalise(name: str | None) -> str:
    """A spelling or DICOM code (MR, PT, CR, x-ray, ...) -> the benchmark's name; others as given."""
    if not name:
        return ""
    return _NAMES.get(name.strip().upper(), name.strip())


def from_dicom(code: str) -> str:
    """A DICOM Modality code (0008,0060) -> a name ("unknown" when the header gives none)."""
    return _DICOM_ONLY.get(code) or normalise(code) or "unknown"


def from_msd_channel(channel: str) -> str:
    """The first channel name of an MSD / nnU-Net dataset.json -> a name ("" when there is none)."""
    if not channel:
        return ""
    return normalise(channel) if channel.upper() in _MSD_NOT_MRI else MRI


def from_samed2d(code: str) -> str:
    """SA-Med2D-20M's file-name modality (``ct_00``, ``mr_t1``, ``x_ray``, ...) -> a name (else the code)."""
    prefix = code.split("_")[0].upper()
    return XRAY if prefix == "X" else _NAMES.get(prefix, code)
