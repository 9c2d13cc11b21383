"""No patient data in a release: DICOM whose headers AND folder names identify a patient, through the
real ingest and generate stages, simulated review, release and validate.

The assertion is on raw bytes: none of the identifying strings (nor their parts) may occur in any file
of the release, in any case, nor in any file or folder name.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
from dicom_fixtures import body_and_bone, ct_series, make_seg
from release_fixtures import add_review_event

from vgmed_build.catalog import open_catalog
from vgmed_build.cli import main
from vgmed_build.config import load_sources_file
from vgmed_build.drafting.generate import GenerateOptions, run_generate
from vgmed_build.ingest.run import run_ingest

PATIENT = {
    "PatientName": "ZYXWVUT^QUORRA",
    "PatientID": "PID-QX77341",
    "PatientBirthDate": "19710305",
    "StudyDate": "20180922",
    "InstitutionName": "Halvorsen Memorial Clinic",
    "AccessionNumber": "ACCN55Y81Z",
}
# Parts a leak could show on their own (a name split at '^', a folder name with '_' for '^').
PARTS = ["ZYXWVUT", "QUORRA", "Halvorsen", "QX77341", "55Y81Z"]


def make_patient_source(root: Path) -> tuple[Path, set[str]]:
    """A DICOM CT series + SEG under folders named after the patient; returns the folder and its UIDs."""
    folder = root / "incoming" / PATIENT["PatientName"] / f"{PATIENT['PatientID']}_{PATIENT['StudyDate']}"
    series = ct_series(folder / f"acc_{PATIENT['AccessionNumber']}", n=3)
    for ds in series:
        for keyword, value in PATIENT.items():
            setattr(ds, keyword, value)
        ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = PATIENT["StudyDate"]
        ds.save_as(ds.filename, enforce_file_format=True)
    make_seg(series, body_and_bone(series), ["body", "bone"], folder / "seg" / "seg.dcm")
    uids = {series[0].StudyInstanceUID, series[0].SeriesInstanceUID, *(ds.SOPInstanceUID for ds in series)}
    return root / "incoming", uids


def test_no_patient_identifier_reaches_the_release(tmp_path):
    incoming, uids = make_patient_source(tmp_path)
    secrets = [*PATIENT.values(), *PARTS, *uids]
    # The inputs really carry them: in the headers (image and SEG) and in the paths.
    for path in incoming.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        assert str(ds.PatientName) == PATIENT["PatientName"] and ds.PatientID == PATIENT["PatientID"]
        assert PATIENT["PatientName"] in str(path)
    seg = pydicom.dcmread(next(incoming.rglob("seg.dcm")))
    assert (
        seg.AccessionNumber == PATIENT["AccessionNumber"]
        and seg.PatientBirthDate == PATIENT["PatientBirthDate"]
    )

    sources = tmp_path / "sources.toml"
    sources.write_text(
        f'[[source]]\nname = "hospital"\nkind = "dicom"\npath = "{incoming}"\nbody_part = "abdomen"\n'
        'dataset = "Hospital CT (test)"\nlicence = "CC-BY-4.0"\n[source.options]\nslice_policy = "all"\n'
    )
    build = tmp_path / "build"
    report = run_ingest(build, load_sources_file(sources), progress=False)
    assert report.errors == [] and report.done == 1
    with open_catalog(build, create=False) as catalog:
        stats = run_generate(catalog, GenerateOptions(position_questions=True, progress=False))
        assert stats.ok > 0
        drafts = [
            json.loads(r) for (r,) in catalog.conn.execute("SELECT record_json FROM drafts WHERE status='ok'")
        ]
        for n, draft in enumerate(drafts, 1):
            add_review_event(catalog, draft, "r-0000000a", "accept", n)

    out = tmp_path / "release"
    assert (
        main(["release", "--build", str(build), "--out", str(out), "--created", "2026-01-01T00:00:00Z"]) == 0
    )
    files = sorted(p for p in out.rglob("*"))
    assert sum(p.suffix == ".png" for p in files) > 0 and len(drafts) > 0
    for path in files:
        name = path.relative_to(out).as_posix().casefold()
        data = path.read_bytes().lower() if path.is_file() else b""
        for secret in secrets:
            assert secret.casefold() not in name, f"{name} contains a patient identifier"
            assert secret.lower().encode() not in data, f"{name} contains a patient identifier"

    forbid = tmp_path / "forbid.txt"
    forbid.write_text("\n".join(secrets) + "\n")
    assert main(["validate", str(out), "--forbid-file", str(forbid)]) == 0
