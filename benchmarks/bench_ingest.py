"""Ingest benchmark: box extraction vs a per-slice, per-label skimage baseline; end-to-end ingest; workers.

A 512 x 512 x 300 label volume with 20 structures (ellipsoids, some in left/right pairs, some split
into several blobs) and a CT-like int16 image. Prints one figure per line and checks that the fast
extraction gives exactly the baseline's boxes.

    .venv/bin/python benchmarks/bench_ingest.py                # all parts, defaults as in RESULTS.md
    .venv/bin/python benchmarks/bench_ingest.py --volumes 4 --workers 2
    .venv/bin/python benchmarks/bench_ingest.py --quick            # its checks of benchmarks/quick.py
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from skimage import measure

from vgmed_build.config import normalise_options
from vgmed_build.ingest.run import run_ingest
from vgmed_build.regions import extract_regions, slice_label_areas
from vgmed_build.sources import get_adapter
from vgmed_build.sources.base import SourceSpec


def make_volume(shape: tuple[int, int, int], n_structures: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(label map uint8, CT-like int16 image): ellipsoid structures of varied size, some with 1-3 blobs."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    image = rng.normal(0, 20, size=shape).astype(np.int16)
    for value in range(1, n_structures + 1):
        for _ in range(int(rng.integers(1, 4))):
            radii = rng.uniform([8, 8, 6], [60, 60, 50])
            centre = rng.uniform(radii, np.array(shape) - radii)
            lo = np.maximum(np.floor(centre - radii).astype(int), 0)
            hi = np.minimum(np.ceil(centre + radii).astype(int) + 1, shape)
            grid = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1
            labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]][inside] = value
            image[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]][inside] += np.int16(10 * value)
    # Fortran order, as nibabel returns NIfTI data: axial slices are contiguous.
    return np.asfortranarray(labels), np.asfortranarray(image)


def baseline_boxes(labels: np.ndarray, n_structures: int) -> dict[tuple[int, int], list[list[int]]]:
    """The straightforward way: for every slice and every label, label the binary mask + regionprops."""
    out = {}
    for k in range(labels.shape[2]):
        sl = labels[:, :, k]
        for value in range(1, n_structures + 1):
            props = measure.regionprops(measure.label(sl == value, connectivity=2))
            if props:
                out[(k, value)] = sorted([p.bbox[1], p.bbox[0], p.bbox[3], p.bbox[2]] for p in props)
    return out


def fast_boxes(labels: np.ndarray) -> dict[tuple[int, int], list[list[int]]]:
    """vgmed: one bincount pass for per-slice areas, then one multi-label labelling per non-empty slice."""
    values, areas = slice_label_areas(labels, 2)
    out = {}
    for k in np.flatnonzero(areas.any(axis=1)).tolist():
        for value, region in extract_regions(labels[:, :, k]).items():
            out[(k, value)] = region.boxes
    return out


def timed(fn, *args):
    """(wall seconds, result)."""
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def timed_cpu(fn, *args):
    """(wall seconds, CPU seconds of this process, result): CPU time is robust on a shared machine."""
    start, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return time.perf_counter() - start, time.process_time() - cpu, result


def write_case(folder: Path, case: str, labels: np.ndarray, image: np.ndarray) -> None:
    affine = np.diag([0.8, 0.8, 1.5, 1.0])
    affine[:3, 3] = -np.array(labels.shape) * np.diag(affine)[:3] / 2
    nib.save(nib.Nifti1Image(image, affine), folder / f"{case}.nii")
    nib.save(nib.Nifti1Image(labels, affine), folder / f"{case}_seg.nii")


def spec_for(folder: Path) -> SourceSpec:
    return SourceSpec(name="bench", kind="nifti", path=folder, modality="CT", body_part="abdomen",
                      options=normalise_options({}, "bench", get_adapter("nifti").option_types))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300], help="volume shape (I J K)")
    parser.add_argument("--structures", type=int, default=20, help="number of labelled structures")
    parser.add_argument("--volumes", type=int, default=4, help="volumes for the --workers scaling run")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for the scaling run")
    parser.add_argument("--skip-baseline", action="store_true", help="skip the slow skimage baseline")
    parser.add_argument("--quick", action="store_true", help="only the quick guard's checks (small volume, ratios "
                        "against the floors of benchmarks/quick.py; exit 1 below a floor)")
    args = parser.parse_args()
    if args.quick:
        from quick import run_checks

        return run_checks(["bench_ingest"])
    shape = tuple(args.shape)

    t_make, (labels, image) = timed(make_volume, shape, args.structures)
    print(f"volume {shape} with {args.structures} structures, {int((labels > 0).sum())} labelled voxels "
          f"(built in {t_make:.1f} s); {os.cpu_count()} CPUs")

    t_fast, c_fast, fast = timed_cpu(fast_boxes, labels)
    print(f"box extraction, vgmed (one pass for areas + one labelling per slice): {t_fast:.2f} s wall, "
          f"{c_fast:.2f} s CPU, {len(fast)} (slice, structure) regions")
    if not args.skip_baseline:
        t_base, c_base, base = timed_cpu(baseline_boxes, labels, args.structures)
        if base != fast:
            print("MISMATCH: boxes differ from the baseline", file=sys.stderr)
            return 1
        print(f"box extraction, baseline (skimage label + regionprops per slice and label): {t_base:.2f} s wall, "
              f"{c_base:.2f} s CPU")
        print(f"speed-up: {t_base / t_fast:.1f}x wall, {c_base / c_fast:.1f}x CPU (identical boxes)")

    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp) / "one"
        one.mkdir()
        write_case(one, "vol0", labels, image)
        t_e2e, c_e2e, report = timed_cpu(run_ingest, Path(tmp) / "build1", [spec_for(one)], 1, False, False)
        assert report.done == 1 and not report.errors, report.errors
        print(f"end-to-end ingest, 1 volume, default policy (largest), 1 process: {t_e2e:.2f} s wall, "
              f"{c_e2e:.2f} s CPU")

        many = Path(tmp) / "many"
        many.mkdir()
        for i in range(args.volumes):
            vol_labels, vol_image = make_volume(shape, args.structures, seed=i + 1)
            write_case(many, f"vol{i}", vol_labels, vol_image)
        del labels, image
        t_serial, _ = timed(run_ingest, Path(tmp) / "serial", [spec_for(many)], 1, False, False)
        t_par, rep = timed(run_ingest, Path(tmp) / "parallel", [spec_for(many)], args.workers, False, False)
        assert rep.done == args.volumes and not rep.errors, rep.errors
        print(f"{args.volumes} volumes: 1 process {t_serial:.2f} s, --workers {args.workers} {t_par:.2f} s "
              f"(speed-up {t_serial / t_par:.2f}x)")
    ceiling = machine_scaling(args.workers)
    print(f"this machine's own ceiling: pure CPU work in {args.workers} processes runs {ceiling:.2f}x "
          f"one process (the most --workers can show here)")
    return 0


QUICK_SHAPE = (384, 384, 104)  # 512 x 512 slices would double the baseline's time; 104 >= twice the z radii
E2E_SHAPE = (512, 512, 300)  # issue 21's volume: ingest's whole-volume costs show at this size


def quick_boxes(labels: np.ndarray, extract=fast_boxes, repeats: int = 3):
    """The guard's box check on ``labels``: naive CPU / vgmed CPU, least of each over two rounds of ``repeats``
    extractions then one baseline run (so both sample the same stretch of a busy machine's load).
    ``extract`` is replaceable so a test can show a slowed copy fails."""
    from quick import Ratio, best_cpu

    c_fast = c_base = float("inf")
    for _ in range(2):
        cpu, fast = best_cpu(lambda: extract(labels), repeats)
        c_fast = min(c_fast, cpu)
        cpu, base = best_cpu(lambda: baseline_boxes(labels, int(labels.max())), 1)
        c_base = min(c_base, cpu)
    return Ratio("boxes: naive skimage CPU / vgmed CPU", c_base / c_fast,
                 f"{c_fast:.3f} s vs {c_base:.2f} s CPU, {len(fast)} regions of a {labels.shape} volume, "
                 f"boxes {'identical' if base == fast else 'DIFFER'}", same=base == fast)


def quick(only: str | None = None) -> list:
    """Checks of benchmarks/quick.py: box extraction vs the naive baseline (on a QUICK_SHAPE volume), and
    end-to-end ingest of issue 21's 512 x 512 x 300 volume against the box extraction over every slice of
    that volume: issue 21's regression (copies of the whole volume in ``imaging.contrast_problem``) takes
    that ratio from ~2x to ~6.7x, while at QUICK_SHAPE it hid in the noise (3.3x -> 4.4-6.5x)."""
    from quick import Ratio, best_cpu, wanted

    out = []
    if wanted("boxes: naive skimage CPU / vgmed CPU", only):
        out.append(quick_boxes(make_volume(QUICK_SHAPE, 20)[0]))
    name = "ingest 3D: end-to-end CPU / box extraction CPU"
    if wanted(name, only):
        labels, image = make_volume(E2E_SHAPE, 20)
        c_boxes, _ = best_cpu(lambda: fast_boxes(labels), 3)
        with tempfile.TemporaryDirectory() as tmp:
            one = Path(tmp) / "one"
            one.mkdir()
            write_case(one, "vol0", labels, image)
            del labels, image
            builds = itertools.count()
            c_e2e, report = best_cpu(
                lambda: run_ingest(Path(tmp) / f"build{next(builds)}", [spec_for(one)], 1, False, False), 3)
        ok = report.done == 1 and not report.errors
        out.append(Ratio(name, c_e2e / c_boxes, f"{c_e2e:.2f} s vs {c_boxes:.3f} s CPU, {E2E_SHAPE} .nii, "
                         f"{'ingested' if ok else f'NOT ingested: {report.errors}'}", same=ok))
    return out


def _burn(n: int) -> int:
    return sum(i * i for i in range(n))


def machine_scaling(workers: int, n: int = 5_000_000) -> float:
    """Speed-up of ``workers`` processes on pure CPU work: shared or throttled cores show up here."""
    from concurrent.futures import ProcessPoolExecutor

    t_serial, _ = timed(lambda: [_burn(n) for _ in range(workers)])
    with ProcessPoolExecutor(max_workers=workers) as pool:
        t_par, _ = timed(lambda: list(pool.map(_burn, [n] * workers)))
    return t_serial / t_par


if __name__ == "__main__":
    sys.exit(main())
