"""Catalog writer's ms per item and the per-item ingest cost at two sizes (SA-Med2D layout, 64 px, --workers 1)."""
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic_source import make_samed2d  # noqa: E402

import vgmed_build.ingest.run as run  # noqa: E402
from vgmed_build import api  # noqa: E402

base = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/vgmed-bench-writer")
shutil.rmtree(base, ignore_errors=True)
spent = [0.0]
real = run.store_result


def timed(*args):
    t = time.process_time()
    real(*args)
    spent[0] += time.process_time() - t


run.store_result = timed
for n in (300, 2400):
    src = make_samed2d(base / f"s{n}", n, size=64)
    spent[0] = 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    api.ingest(base / f"b{n}", source=[f"samed2d:{src}"], modality="Dermoscopy")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"n={n}: ingest {1000 * cpu / n:.2f} ms CPU/item ({1000 * wall / n:.2f} ms wall), "
          f"catalog writer {1000 * spent[0] / n:.3f} ms CPU/item")
