"""Regenerate the bundled sample (vgmed_build/sample/): the real MNI152 template at 2 mm.

Writes an nnU-Net-style dataset folder ``mni152/`` (dataset.json, imagesTr/mni152_0000.nii.gz,
labelsTr/mni152.nii.gz) whose label map holds left/right grey matter and left/right white matter:
nilearn's grey- and white-matter masks split at world x = 0 (RAS: x < 0 is the patient's left; the
x = 0 plane itself is left unlabelled). Needs nilearn (a test extra); runs offline in seconds.

    .venv/bin/python scripts/make_sample.py [--out vgmed_build/sample]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np

LABELS = {1: "left grey matter", 2: "right grey matter", 3: "left white matter", 4: "right white matter"}


def mni_label_map(resolution: int = 2) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """The MNI152 T1 template and a hemisphere-split grey/white matter label map on its grid."""
    from nilearn import datasets

    template = datasets.load_mni152_template(resolution=resolution)
    gm = np.asarray(datasets.load_mni152_gm_mask(resolution=resolution).dataobj) > 0
    wm = np.asarray(datasets.load_mni152_wm_mask(resolution=resolution).dataobj) > 0
    affine = template.affine
    i = np.arange(template.shape[0])
    x = (affine @ np.stack([i, np.zeros_like(i), np.zeros_like(i), np.ones_like(i)]))[0]
    left = (x < 0)[:, None, None]
    right = (x > 0)[:, None, None]
    labels = np.zeros(template.shape, dtype=np.uint8)
    labels[wm & left] = 3
    labels[wm & right] = 4
    labels[gm & ~wm & left] = 1
    labels[gm & ~wm & right] = 2
    # nilearn scales the template to [0, 1); store it as 8-bit intensities.
    t1 = np.asarray(template.dataobj, dtype=np.float32)
    image = nib.Nifti1Image(np.rint(t1 / max(float(t1.max()), 1e-6) * 255).astype(np.uint8), affine)
    return image, nib.Nifti1Image(labels, affine)


def write_dataset(
    folder: Path, image: nib.Nifti1Image, labels: nib.Nifti1Image, case: str = "mni152"
) -> None:
    """Write an nnU-Net v2 dataset folder with one case."""
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    for img in (image, labels):
        img.header.set_xyzt_units("mm")
        img.set_qform(img.affine, code=4)  # MNI space
        img.set_sform(img.affine, code=4)
    nib.save(image, folder / "imagesTr" / f"{case}_0000.nii.gz")
    nib.save(labels, folder / "labelsTr" / f"{case}.nii.gz")
    meta = {
        "name": "MNI152 hemispheres",
        "description": "MNI152 ICBM 2009 T1 template (nilearn) at 2 mm with grey/white matter split at x = 0",
        "channel_names": {"0": "T1"},
        "labels": {"background": 0, **{name: value for value, name in LABELS.items()}},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "vgmed_build" / "sample",
        help="sample folder (the sources.toml there is not touched)",
    )
    args = parser.parse_args()
    image, labels = mni_label_map()
    write_dataset(args.out / "mni152", image, labels)
    print(f"wrote {args.out / 'mni152'}")


if __name__ == "__main__":
    main()
