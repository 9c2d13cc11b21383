"""Peak Python memory (tracemalloc) and peak Arrow memory (a fresh `pyarrow.proxy_memory_pool` made the
default for the export: Arrow's buffers are outside tracemalloc) of `vgmed-build export` in each format,
and a hash of what it wrote,
on an existing release (issue 27): run it with two checkouts on the same release to compare their memory
and check their outputs are the same bytes. Each format is exported twice, the second run counts (the
first imports pyarrow / datasets, which tracemalloc would count). The lmms-eval task YAMLs name the
output folder, so their hash differs between output folders.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_export_memory.py RELEASE OUT_FOLDER
"""

from __future__ import annotations

import argparse
import hashlib
import tracemalloc
from pathlib import Path

import pyarrow as pa

from vgmed_build.export import FORMATS, ExportOptions, export

CASES = [(fmt, False) for fmt in FORMATS] + [("parquet", True)]  # (format, --embed-images)


def digest(out: Path) -> str:
    """SHA-256 over the output's files (names and bytes, in name order)."""
    h = hashlib.sha256()
    for path in [out] if out.is_file() else sorted(p for p in out.rglob("*") if p.is_file()):
        h.update(path.relative_to(out.parent).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("release", type=Path, help="a release made by `vgmed-build release`")
    parser.add_argument("out", type=Path, help="an empty folder for the exports")
    args = parser.parse_args()
    default = pa.default_memory_pool()
    for fmt, embed in CASES:
        for attempt in range(2):
            out = args.out / f"{fmt}{'-embedded' if embed else ''}-{attempt}"
            arrow = pa.proxy_memory_pool(default)
            pa.set_memory_pool(arrow)
            tracemalloc.start()
            try:
                export(args.release, FORMATS[fmt], out, ExportOptions(embed_images=embed))
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
                pa.set_memory_pool(default)
        print(f"{fmt}{' --embed-images' if embed else ''}: peak {peak / 1e6:.2f} MB, Arrow peak "
              f"{arrow.max_memory() / 1e6:.2f} MB, output {digest(out)}")


if __name__ == "__main__":
    main()
