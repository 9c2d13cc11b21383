"""Real ingest inputs for the tests: the MNI152 template (nilearn) with hemisphere-split tissue labels.

The label map comes from scripts/make_sample.py (the same code that builds the bundled sample), so
the tests check the sample's recipe on nilearn's own masks, at 2 mm to stay fast.
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "vgmed_build" / "sample"
SAMPLE_SOURCES = SAMPLE_DIR / "sources.toml"


def _make_sample_module():
    spec = importlib.util.spec_from_file_location("make_sample", REPO / "scripts" / "make_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_sample = _make_sample_module()
LABELS = make_sample.LABELS            # 1, 3: left hemisphere; 2, 4: right hemisphere


@lru_cache(maxsize=2)
def mni(resolution: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T1 image uint8, label map uint8, affine) of the MNI152 template; RAS, x = 0 is the midline."""
    image, labels = make_sample.mni_label_map(resolution)
    return np.asarray(image.dataobj), np.asarray(labels.dataobj), image.affine.copy()


def flip_x(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same anatomy stored with the first voxel axis reversed (an LAS file instead of RAS)."""
    flipped = np.ascontiguousarray(data[::-1])
    new = affine.copy()
    new[:, 0] = -affine[:, 0]
    new[:3, 3] = affine[:3, 3] + affine[:3, 0] * (data.shape[0] - 1)
    return flipped, new


def save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def write_pair(folder: Path, case: str, image: np.ndarray, labels: np.ndarray, affine: np.ndarray,
               label_affine: np.ndarray | None = None) -> None:
    """``<case>.nii.gz`` + ``<case>_seg.nii.gz`` (the ``nifti`` kind's folder-of-pairs layout)."""
    save(folder / f"{case}.nii.gz", image, affine)
    save(folder / f"{case}_seg.nii.gz", labels, affine if label_affine is None else label_affine)


def write_msd(folder: Path, cases: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
              nnunet: bool = False) -> Path:
    """An MSD (``{"1": "name"}``, same file names) or nnU-Net v2 (``{"name": 1}``, ``_0000``) dataset."""
    if nnunet:
        labels = {"background": 0, **{name: value for value, name in LABELS.items()}}
        meta = {"channel_names": {"0": "T1"}, "labels": labels, "numTraining": len(cases),
                "file_ending": ".nii.gz"}
    else:
        labels = {"0": "background", **{str(value): name for value, name in LABELS.items()}}
        training = [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases]
        meta = {"name": "MNI", "modality": {"0": "MRI"}, "labels": labels, "training": training}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    for case, (image, labels, affine) in cases.items():
        save(folder / "imagesTr" / f"{case}{'_0000' if nnunet else ''}.nii.gz", image, affine)
        save(folder / "labelsTr" / f"{case}.nii.gz", labels, affine)
    return folder


def sources_toml(path: Path, entries: list[dict]) -> Path:
    """Write a TOML sources file from simple dicts (options and mappings as nested tables)."""
    lines: list[str] = []
    for entry in entries:
        lines.append("[[source]]")
        nested = {k: v for k, v in entry.items() if isinstance(v, dict)}
        for key, value in entry.items():
            if key not in nested:
                lines.append(f"{key} = {json.dumps(value)}")
        for key, table in nested.items():
            lines.append(f"[source.{key}]")
            lines.extend(f"{json.dumps(str(k))} = {json.dumps(v)}" for k, v in table.items())
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def ingest(build: Path, *args: str) -> int:
    from vgmed_build.cli import main

    return main(["ingest", "--build", str(build), "--no-progress", *args])


def facts(build: Path) -> dict[str, dict[tuple, tuple]]:
    """Per item: (label, plane, slice) -> (side, boxes, centroid, area ratio, slice position, PNG sha256)."""
    with sqlite3.connect(build / "catalog.sqlite") as conn:
        sha = dict(conn.execute("SELECT id, sha256 FROM images"))
        rows = [json.loads(r) for (r,) in conn.execute("SELECT record_json FROM regions")]
    out: dict[str, dict[tuple, tuple]] = {}
    for r in rows:
        out.setdefault(r["source"]["item"], {})[(r["label"], r["plane"], r["slice_index"])] = (
            r["side"], r["boxes"], r["centroid"], r["area_ratio"], r["slice_position_mm"], sha[r["image_id"]])
    return out
