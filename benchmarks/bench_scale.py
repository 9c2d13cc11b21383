"""Scale benchmark: does every stage cost the same per item on a dataset 8x bigger?

Synthesises a 2D ``images2d`` source (256 x 256 grey PNGs named ``case_<i>.png``, 1-3 binary masks
each under the default pattern ``masks/{stem}_{label}.png``) and a small NIfTI source (one 64 x 64 x
32 volume with two structures per 100 images) at N and 8N, then runs every stage as its own process:
ingest of the 2D source with --workers 1 and with --workers 2 (two fresh builds), the 3D source,
ingest rerun (nothing changed), stats, generate, generate rerun, release --include-unreviewed,
validate, export (parquet), regions, and ``vgmed-eval grounding`` on the built-in tiny model (N/50
questions, so it too scales with N). For each stage it prints the cost per item at both sizes (CPU
seconds of the stage's processes, the start-up of an empty command subtracted, and wall seconds),
the growth exponent k of the total (1 = linear), and peak RSS.

Beside it, in the same run, the work floor of 2D ingest: a plain loop that reads each image and its
masks, encodes the PNG as ingest does and writes it; and this machine's own 2-process ceiling (pure
CPU work in 2 processes vs 1, as benchmarks/bench_ingest.py measures it).

Exit code 1 when a stage's CPU per item grows more than 1.2x from N to 8N (stages whose total at 8N
stays under --min-cpu seconds are too small to judge and only printed), or when a stage's peak RSS
grows faster than the data (more than 8x).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scale.py --n 2000
    .venv/bin/python benchmarks/bench_scale.py --n 200 --keep /tmp/scale   # quick look, keep the builds
    .venv/bin/python benchmarks/bench_scale.py --n 200 --keep /tmp/scale --driver-only  # main vs workers
    .venv/bin/python benchmarks/bench_scale.py --quick   # its check of benchmarks/quick.py (ingest vs work floor)
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from bench_ingest import machine_scaling
from PIL import Image

from vgmed_build import imaging
from vgmed_build.config import DEFAULT_OPTIONS
from vgmed_build.sources.files import read_image, read_mask

SIZE = 256
FACTOR = 8
LABELS = ("cyst", "optic_disc", "nodule")  # "optic_disc": a label with "_" after a stem with "_"


@dataclass
class Run:
    """One stage process: wall and CPU seconds (its own and its reaped children's), peak RSS."""

    wall: float
    cpu: float
    rss_mb: float


def run(argv: list[str], env: dict[str, str]) -> Run:
    """Run one command; the rusage of os.wait4 is that process's own (with its reaped children)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{err[-3000:]}")
    # ru_maxrss is in KiB on Linux
    return Run(wall=wall, cpu=usage.ru_utime + usage.ru_stime, rss_mb=usage.ru_maxrss / 1024)


def make_2d(root: Path, n: int, seed: int = 0) -> dict[Path, list[Path]]:
    """``n`` images with 1-3 masks each under ``root``; returns each image's mask files."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    bases = []
    for _ in range(8):  # smooth X-ray-like backgrounds: a low-resolution field upsampled, plus noise
        low = rng.uniform(40, 200, size=(8, 8))
        base = np.kron(low, np.ones((SIZE // 8, SIZE // 8)))
        bases.append(base)
    pairs: dict[Path, list[Path]] = {}
    for i in range(n):
        stem = f"case_{i:06d}"
        img = np.roll(bases[i % len(bases)], i % SIZE, axis=1) + rng.normal(0, 6, (SIZE, SIZE))
        path = root / "images" / f"{stem}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
        pairs[path] = []
        for label in LABELS[: int(rng.integers(1, 4))]:
            cy, cx = rng.uniform(40, SIZE - 40, 2)
            ry, rx = rng.uniform(8, 35, 2)
            mask = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8) * 255
            pairs[path].append(root / "masks" / f"{stem}_{label}.png")
            Image.fromarray(mask).save(pairs[path][-1])
    return pairs


def make_3d(root: Path, n: int, seed: int = 1) -> None:
    """``n`` small CT-like volumes with two ellipsoid structures (label values 1 and 2)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    shape = (64, 64, 32)
    grid = np.mgrid[0 : shape[0], 0 : shape[1], 0 : shape[2]]
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    for i in range(n):
        labels = np.zeros(shape, np.uint8)
        for value in (1, 2):
            centre = rng.uniform([16, 16, 8], [48, 48, 24])
            radii = rng.uniform([5, 5, 3], [14, 14, 8])
            inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1
            labels[inside] = value
        image = (rng.normal(40, 20, shape) + 60 * labels).astype(np.int16)
        nib.save(nib.Nifti1Image(image, affine), root / f"vol{i:05d}.nii")
        nib.save(nib.Nifti1Image(labels, affine), root / f"vol{i:05d}_seg.nii")


def sources_file(path: Path, kind_root: dict[str, Path]) -> None:
    path.write_text(
        f"""[[source]]
name = "xray"
kind = "images2d"
path = "{kind_root['2d']}"
modality = "X-ray"
body_part = "chest"
dataset = "synthetic (bench_scale)"
licence = "CC0"

[[source]]
name = "ct"
kind = "nifti"
path = "{kind_root['3d']}"
modality = "CT"
body_part = "abdomen"
dataset = "synthetic (bench_scale)"
licence = "CC0"
[source.labels]
"1" = "liver"
"2" = "spleen"
""",
        encoding="utf-8",
    )


def work_floor(pairs: dict[Path, list[Path]], out: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of the plain loop: read each image + its masks, render them at the size ingest
    publishes (the default ``min_side_px`` enlargement of small images: pixels linear, masks nearest, as
    the boxes must be measured on the enlarged masks), encode the PNG, write it."""
    out.mkdir()
    min_side = DEFAULT_OPTIONS["min_side_px"]
    start, cpu = time.perf_counter(), time.process_time()
    for path, masks in pairs.items():
        pixels = read_image(path, path.name)
        factor = imaging.enlargement(pixels.shape[:2], min_side)
        shape = (pixels.shape[0] * factor, pixels.shape[1] * factor)
        for m in masks:
            mask = read_mask(m, m.name)
            if factor > 1:
                imaging.resample(mask.astype(np.uint8), shape, labels=True)
        if factor > 1:
            pixels = np.clip(np.rint(imaging.resample(pixels, shape, labels=False)), 0, 255).astype(np.uint8)
        imaging.write_atomic(out / path.name, imaging.encode_png(pixels))
    return time.perf_counter() - start, time.process_time() - cpu


def stages(n: int, tmp: Path, py: str, env: dict[str, str]) -> tuple[dict[str, tuple[int, Run]], dict]:
    """Synthesise the sources at size ``n`` and run every stage: {stage: (items, Run)}, extras."""
    data = tmp / f"data{n}"
    n_3d = max(1, n // 100)
    t0 = time.perf_counter()
    pairs = make_2d(data / "xray", n)
    make_3d(data / "ct", n_3d)
    print(f"  N={n}: synthesised {n} images + {n_3d} volumes in {time.perf_counter() - t0:.0f} s", flush=True)
    two_d = data / "sources-2d.toml"
    sources_file(data / "sources.toml", {"2d": data / "xray", "3d": data / "ct"})
    text = (data / "sources.toml").read_text()
    two_d.write_text(text.split("[[source]]\nname = \"ct\"")[0])
    three_d = data / "sources-3d.toml"
    three_d.write_text("[[source]]" + text.split("[[source]]")[2])

    build, build2, rel = tmp / f"build{n}", tmp / f"build{n}-w2", tmp / f"release{n}"
    vb = [py, "-m", "vgmed_build.cli"]
    ve = [py, "-m", "vgmed_eval.cli"]
    out: dict[str, tuple[int, Run]] = {}

    def stage(name: str, items: int, argv: list[str]) -> None:
        out[name] = (items, run(argv, env))
        r = out[name][1]
        print(f"  N={n}: {name:<28} {r.wall:8.2f} s wall {r.cpu:8.2f} s CPU {r.rss_mb:7.0f} MB", flush=True)

    floor_wall, floor_cpu = work_floor(pairs, tmp / f"floor{n}")
    stage("ingest 2D --workers 1", n, [*vb, "ingest", "--build", str(build), "--sources", str(two_d), "--no-progress"])
    stage(
        "ingest 2D --workers 2",
        n,
        [*vb, "ingest", "--build", str(build2), "--sources", str(two_d), "--no-progress", "--workers", "2"],
    )
    stage("ingest 3D", n_3d, [*vb, "ingest", "--build", str(build), "--sources", str(three_d), "--no-progress"])
    all_src = ["--sources", str(data / "sources.toml")]
    stage("ingest rerun (unchanged)", n + n_3d, [*vb, "ingest", "--build", str(build), *all_src, "--no-progress"])
    n_regions = _count(build, "regions")
    stage("stats", n_regions, [*vb, "stats", "--build", str(build)])
    stage("generate", n_regions, [*vb, "generate", "--build", str(build)])
    stage("generate rerun", n_regions, [*vb, "generate", "--build", str(build)])
    n_drafts = _count(build, "drafts")
    stage(
        "release --include-unreviewed",
        n_drafts,
        [*vb, "release", "--build", str(build), "--out", str(rel), "--include-unreviewed",
         "--created", "2026-01-01T00:00:00Z"],
    )
    stage("validate", n_drafts, [*vb, "validate", str(rel)])
    stage("export parquet", n_drafts, [*vb, "export", str(rel), "--format", "parquet", "--out", str(tmp / f"pq{n}")])
    stage("regions", n_regions, [*vb, "regions", "--build", str(build), "--out", str(tmp / f"regions{n}.jsonl")])
    questions = max(20, n // 50)
    stage(
        "vgmed-eval grounding (tiny)",
        questions,
        [*ve, "grounding", "--release", str(rel), "--model", "builtin:tiny-llava", "--out", str(tmp / f"eval{n}"),
         "--limit", str(questions), "--no-progress"],
    )
    extras = {"floor_wall": floor_wall, "floor_cpu": floor_cpu, "regions": n_regions, "drafts": n_drafts}
    return out, extras


def driver_cost(sources: Path, build: Path) -> None:
    """Split ingest --workers 2 into the main process's CPU per item (listing, taking results, the
    catalog transaction: what one writer must do for every item) and the workers' CPU per item."""
    import resource

    from vgmed_build.config import load_sources_file
    from vgmed_build.ingest import run as ingest

    spent = [0.0]
    store = ingest.store_result

    def timed_store(*args, **kwargs) -> None:
        start = time.process_time()
        store(*args, **kwargs)
        spent[0] += time.process_time() - start

    ingest.store_result = timed_store
    try:
        start = time.process_time()
        report = ingest.run_ingest(build, load_sources_file(sources), 2, False, False)
        main_cpu = time.process_time() - start
    finally:
        ingest.store_result = store
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    n = report.done
    print(f"ingest --workers 2 split, {n} items: main process {1e3 * main_cpu / n:.2f} ms CPU/item (of it the "
          f"catalog transaction {1e3 * spent[0] / n:.2f} ms), workers {1e3 * (kids.ru_utime + kids.ru_stime) / n:.2f}"
          " ms CPU/item")


QUICK_N = 40


def quick(only: str | None = None) -> list:
    """Check of benchmarks/quick.py: CPU of ``run_ingest`` (one process, in this one, as ``--workers 1``) over
    the work floor's CPU on the same images, best of 3 each (the first ingest also pays the imports)."""
    from quick import Ratio, best_cpu

    from vgmed_build.config import load_sources_file
    from vgmed_build.ingest.run import run_ingest

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        pairs = make_2d(tmp / "xray", QUICK_N)
        (tmp / "ct").mkdir()
        sources_file(tmp / "sources.toml", {"2d": tmp / "xray", "3d": tmp / "ct"})
        two_d = tmp / "sources-2d.toml"
        two_d.write_text((tmp / "sources.toml").read_text().split('[[source]]\nname = "ct"')[0])
        specs = load_sources_file(two_d)
        runs = itertools.count()
        c_floor, _ = best_cpu(lambda: work_floor(pairs, tmp / f"floor{next(runs)}"), 3)
        c_ingest, report = best_cpu(lambda: run_ingest(tmp / f"build{next(runs)}", specs, 1, False, False), 3)
    ok = report.done == QUICK_N and not report.errors
    return [Ratio("ingest 2D: end-to-end CPU / read+render floor CPU", c_ingest / c_floor,
                  f"{1e3 * c_ingest / QUICK_N:.1f} vs {1e3 * c_floor / QUICK_N:.1f} ms CPU/image, {QUICK_N} images, "
                  f"{'all ingested' if ok else f'{report.done} ingested, errors {report.errors[:3]}'}", same=ok)]


def _count(build: Path, table: str) -> int:
    import sqlite3

    with sqlite3.connect(build / "catalog.sqlite") as conn:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="2D images at the small size (the big one is 8x)")
    parser.add_argument("--min-cpu", type=float, default=2.0, help="stages under this many CPU seconds at 8N "
                        "(start-up subtracted) are printed but not judged: too small against timer noise")
    parser.add_argument("--keep", type=Path, help="keep the data and builds in this folder (default: a temp dir)")
    parser.add_argument("--driver-only", action="store_true", help="only split ingest --workers 2 into main-process "
                        "and worker CPU per item, on the 8N data a previous run left in --keep")
    parser.add_argument("--quick", action="store_true", help="only the quick guard's check: in-process ingest of "
                        f"{QUICK_N} images against the work floor (floor of benchmarks/quick.py; exit 1 above it)")
    args = parser.parse_args()
    if args.quick:
        from quick import run_checks

        return run_checks(["bench_scale"])
    if args.driver_only:
        if args.keep is None:
            parser.error("--driver-only needs --keep DIR from a previous run")
        build = args.keep / "driver-build"
        shutil.rmtree(build, ignore_errors=True)
        driver_cost(args.keep / f"data{FACTOR * args.n}" / "sources-2d.toml", build)
        return 0
    py = sys.executable
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH", "")]))
    print(f"bench_scale: N={args.n} and {FACTOR * args.n}; {os.cpu_count()} CPUs; load {os.getloadavg()}")
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="vgmed-scale-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        startup = {
            "build": min((run([py, "-m", "vgmed_build.cli", "--version"], env) for _ in range(3)), key=lambda r: r.cpu),
            "eval": min((run([py, "-m", "vgmed_eval.cli", "--version"], env) for _ in range(3)), key=lambda r: r.cpu),
        }
        print(f"start-up of an empty command: vgmed-build {startup['build'].cpu:.2f} s CPU, "
              f"vgmed-eval {startup['eval'].cpu:.2f} s CPU (subtracted below)")
        small, ex_small = stages(args.n, tmp, py, env)
        big, ex_big = stages(FACTOR * args.n, tmp, py, env)
        ceiling = machine_scaling(2)
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return report(args, small, big, ex_small, ex_big, startup, ceiling)


def report(args, small, big, ex_small, ex_big, startup, ceiling) -> int:
    n, n8 = args.n, FACTOR * args.n
    print(f"\nper item: CPU ms (start-up subtracted) and wall ms; k = growth exponent of the CPU total "
          f"(1 = linear); load now {os.getloadavg()}")
    print(f"{'stage':<30}{'items N':>9}{'items 8N':>10}{'CPU/item N':>12}{'CPU/item 8N':>13}{'growth':>8}"
          f"{'k':>6}{'wall/item N':>13}{'wall/item 8N':>14}{'RSS N MB':>10}{'RSS 8N MB':>11}  verdict")
    failed = []
    for name, (items_n, r_n) in small.items():
        items_8, r_8 = big[name]
        base = startup["eval" if "vgmed-eval" in name else "build"]
        cpu_n, cpu_8 = max(r_n.cpu - base.cpu, 1e-3), max(r_8.cpu - base.cpu, 1e-3)
        wall_n, wall_8 = max(r_n.wall - base.wall, 1e-3), max(r_8.wall - base.wall, 1e-3)
        per_n, per_8 = cpu_n / items_n, cpu_8 / items_8
        growth = per_8 / per_n
        k = math.log(cpu_8 / cpu_n) / math.log(items_8 / items_n)
        rss_growth = r_8.rss_mb / r_n.rss_mb
        verdict = "ok"
        if cpu_8 < args.min_cpu:
            verdict = f"too small to judge (< {args.min_cpu:g} s)"
        elif growth > 1.2:
            verdict = "FAIL: per-item cost grows"
            failed.append(name)
        if rss_growth > items_8 / items_n:
            verdict = "FAIL: memory grows faster than the data"
            failed.append(name)
        print(f"{name:<30}{items_n:>9}{items_8:>10}{1e3 * per_n:>12.2f}{1e3 * per_8:>13.2f}{growth:>7.2f}x"
              f"{k:>6.2f}{1e3 * wall_n / items_n:>13.2f}{1e3 * wall_8 / items_8:>14.2f}"
              f"{r_n.rss_mb:>10.0f}{r_8.rss_mb:>11.0f}  {verdict}")
    for label, size, ex, res in (("N", n, ex_small, small), ("8N", n8, ex_big, big)):
        w1, w2 = res["ingest 2D --workers 1"][1], res["ingest 2D --workers 2"][1]
        print(f"work floor at {label} ({size} images: read image + masks, encode + write PNG): "
              f"{1e3 * ex['floor_wall'] / size:.2f} ms wall, {1e3 * ex['floor_cpu'] / size:.2f} ms CPU per image; "
              f"ingest --workers 1 {1e3 * (w1.wall - startup['build'].wall) / size:.2f} ms wall/image = "
              f"{(w1.wall - startup['build'].wall) / ex['floor_wall']:.2f}x the floor "
              f"({(w1.cpu - startup['build'].cpu) / ex['floor_cpu']:.2f}x in CPU); "
              f"--workers 2 speed-up {(w1.wall - startup['build'].wall) / (w2.wall - startup['build'].wall):.2f}x")
    print(f"this machine's own 2-process ceiling (pure CPU work, 2 processes vs 1): {ceiling:.2f}x")
    if failed:
        print(f"FAILED: {', '.join(dict.fromkeys(failed))}")
        return 1
    print("every judged stage costs the same per item at 8x the data (within 1.2x) and memory grows no faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
