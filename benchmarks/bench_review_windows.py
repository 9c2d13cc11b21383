"""What the review screen's CT window views cost `review push` (issue 22): per CT draft, the marked copy
alone (what every slice gets) against the marked copy plus the soft-tissue, lung and bone views rendered
from the slice's Hounsfield units (vgmed_build/review/images.py), cold (nothing rendered yet) and on a
second push (all reused). The build is the bundled sample's CT source, ingested and drafted as the demo
does; its 512 x 512 slice is the size of most CT.

    .venv/bin/python benchmarks/bench_review_windows.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from vgmed_build.catalog import open_catalog
from vgmed_build.cli import main
from vgmed_build.review.images import MARKED_DIR, review_image, review_images
from vgmed_build.review.state import load_drafts

SAMPLE = Path(__file__).resolve().parents[1] / "vgmed_build" / "sample" / "sources.toml"


def _timed(render, rows, build: Path, cold: bool) -> tuple[float, int]:
    if cold:
        shutil.rmtree(build / "images" / MARKED_DIR, ignore_errors=True)
    start = time.perf_counter()
    for row in rows:
        render(build, row)
    seconds = time.perf_counter() - start
    return seconds, len(list((build / "images" / MARKED_DIR).rglob("*.png")))


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds of each variant (best is reported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        build = Path(tmp) / "b"
        assert main(["ingest", "--build", str(build), "--sources", str(SAMPLE), "--no-progress"]) == 0
        assert main(["generate", "--build", str(build), "--position-questions", "--no-progress"]) == 0
        rows = [r for r in load_drafts(open_catalog(build)) if r.draft["modality"] == "CT"]
        _timed(review_images, rows, build, cold=True)  # imports (PIL, scipy) out of the timings
        for name, render in (("marked copy only", review_image), ("with the CT window views", review_images)):
            cold = min(_timed(render, rows, build, cold=True) for _ in range(args.repeats))
            warm = min(_timed(render, rows, build, cold=False)[0] for _ in range(args.repeats))
            print(f"{name}: {len(rows)} CT drafts, {cold[1]} files: cold {1000 * cold[0]:.0f} ms "
                  f"({1000 * cold[0] / cold[1]:.1f} ms per file), second push {1000 * warm:.1f} ms")


if __name__ == "__main__":
    main_bench()
