"""Data-parallel `vgmed-eval grounding`: questions per second with 1 and with N processes, same run.

Both runs are the real command line on the same release and model: (a) one plain process, (b)
``torchrun --standalone --nproc-per-node N -m vgmed_eval grounding`` (gloo, rank 0 merges). Each
run is timed from launch to exit (process start, model load, the work, the merge), and the rate
counts the questions of the release. The script checks that both write the same per-layer table
and prints both rates and their ratio; exit status 1 if the tables differ.

CPU, tiny model (threads per process pinned to 1 so that N processes use N cores):
    .venv/bin/python benchmarks/bench_distributed.py --images 48 --per-image 3 --nproc 2
GPU node (one process per GPU; --device cuda becomes cuda:LOCAL_RANK in each rank):
    python benchmarks/bench_distributed.py --model llava-hf/llava-1.5-7b-hf --device cuda --dtype float16 --nproc 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

QUESTIONS = ["Is there a mass in the image?", "Where is the lesion?", "What is the shape of the nodule?"]


def make_release(root: Path, n_images: int, per_image: int, side: int) -> int:
    """Random images of a few sizes, ``per_image`` localization questions each; returns the count."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    lines = []
    for i in range(n_images):
        w, h = side + 37 * (i % 3), side - 23 * (i % 2)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"img{i}.png")
        for j in range(per_image):
            x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
            lines.append(json.dumps({"id": f"q{i}-{j}", "image": f"images/img{i}.png", "question": QUESTIONS[j % 3],
                                     "bbox": [[x0, y0, x0 + w // 3, y0 + h // 3]],
                                     "bbox_convention": "xyxy_exclusive", "q_type": "localization",
                                     "modality": "CT", "source": {"dataset": "bench"}}))
    (root / "VGMED_localization.jsonl").write_text("\n".join(lines) + "\n")
    return len(lines)


def run(cmd: list[str], threads: int) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:tiny-llava")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--per-image", type=int, default=3)
    ap.add_argument("--side", type=int, default=336)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="OMP threads per process")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n = make_release(root / "release", args.images, args.per_image, args.side)
        common = ["grounding", "--release", str(root / "release"), "--model", args.model, "--device", args.device,
                  "--dtype", args.dtype, "--batch-size", str(args.batch_size), "--bootstrap", "100", "--no-progress"]
        one = run([sys.executable, "-m", "vgmed_eval", *common, "--out", str(root / "one")], args.threads)
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        many = run([torchrun, "--standalone", f"--nproc-per-node={args.nproc}", "-m", "vgmed_eval", *common,
                    "--out", str(root / "many")], args.threads)
        a = pd.read_parquet(root / "one" / "per_layer.parquet")
        b = pd.read_parquet(root / "many" / "per_layer.parquet")
        same = a.shape == b.shape and a["id"].tolist() == b["id"].tolist() and np.allclose(
            a["attention_ratio"], b["attention_ratio"], rtol=1e-5)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; model {args.model} "
          f"on {args.device}; {n} questions on {args.images} images, batch {args.batch_size}, "
          f"{args.threads} thread(s) per process")
    print("launch to exit (process start, imports, model load, the work, merge):")
    print(f"  1 process:   {one:7.2f} s  {n / one:7.2f} questions/s")
    print(f"  {args.nproc} processes: {many:7.2f} s  {n / many:7.2f} questions/s  (ratio {one / many:.2f}x)")
    print(f"same per-layer results: {same}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
