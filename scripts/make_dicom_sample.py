"""Regenerate the bundled DICOM sample (vgmed_build/sample/dicom/): a real CT + DICOM SEG pair.

pydicom's CT_small.dcm (a real 128 x 128 axial CT slice through a thoracic vertebra) is stacked into
a 3-slice series (5 mm apart, file names out of z order on purpose) and segmented with a real DICOM
SEG (highdicom) holding two segments found by Hounsfield thresholds on each slice:

* ``vertebra``: the largest connected component above 250 HU (vertebral body and arch);
* ``aorta``: the contrast-filled descending aorta, the component above 150 HU that lies anterior
  and to the patient's left of the vertebra (top right of the stored image).

CT_small's header keeps pydicom's public test values (PatientName "CompressedSamples^CT1",
InstitutionName, dates) on purpose: ingesting the sample must not carry any of them into the build.

    .venv/bin/python scripts/make_dicom_sample.py [--out vgmed_build/sample/dicom]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from pydicom.sr.codedict import codes
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the DICOM builders are shared with the tests

from dicom_fixtures import ct_series, hu, make_seg  # noqa: E402


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = ndi.sum(mask, labels, range(1, n + 1))
    return labels == int(np.argmax(sizes)) + 1


def vertebra_and_aorta(hu_slice: np.ndarray) -> np.ndarray:
    """(rows, cols, 2) masks of one slice: vertebra, aorta."""
    vertebra = largest_component(hu_slice > 250)
    labels, n = ndi.label(hu_slice > 150)
    rows, cols = np.nonzero(vertebra)
    aorta = np.zeros_like(vertebra)
    for component in range(1, n + 1):
        r, c = np.nonzero(labels == component)
        # anterior to the vertebral body (smaller row) and on the patient's left (larger column)
        if r.size >= 100 and r.mean() < rows.min() + 10 and c.mean() > cols.max() - 10:
            aorta |= labels == component
    return np.stack([vertebra, aorta], axis=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "vgmed_build" / "sample" / "dicom",
                        help="sample folder to (re)write")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    series = ct_series(args.out / "ct", n=3, brighten_hu=0)
    masks = np.stack([vertebra_and_aorta(hu(ds)) for ds in series])
    assert masks[..., 0].any() and masks[..., 1].any(), "threshold segmentation found nothing"
    make_seg(series, masks, ["vertebra", "aorta"], args.out / "seg" / "ct_seg.dcm",
             kinds=[codes.SCT.Vertebra, codes.SCT.DescendingAorta])
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({size / 1024:.0f} KiB): 3 CT slices + SEG (vertebra, aorta)")


if __name__ == "__main__":
    main()
