"""Ingest on a local Dask cluster vs `--workers N`: items per second on the same source, same run (issue 27).

For each size, a synthetic source in SA-Med2D's layout (``tests/synthetic_source.make_samed2d``: 64 px
grey pictures with 1-2 instance masks, enlarged to 512 px by the default ``min_side_px``) is ingested by
the real command line twice: (a) ``vgmed-build ingest --workers N``; (b) a Dask scheduler and N worker
processes on this machine (``dask scheduler``, ``dask worker --nthreads 1``: the local cluster
tests/test_ingest_dask.py runs, started once per size and not timed) and ``vgmed-build ingest
--dask-scheduler ADDRESS`` (items in batches sized by timing, its default). Each ingest is timed from
launch to exit (start-up, listing, rendering, the catalog writes) into a fresh build; the order
alternates between repeats (a b, then b a) and the best of ``--repeats`` counts. Both builds must hold
the same regions and the same PNG bytes: exit status 1 otherwise. Prints items per second of each and
their ratio, and the CPU seconds per item each spent (ingest, its --workers processes; ingest, the
scheduler and the Dask workers), which a shared machine's load does not inflate as it does wall time,
and the scheduler's own CPU per item beyond what it uses idle (its rate during the --workers runs): one
scheduler serves every machine.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_dask.py                  # sizes 100 and 800, N = 2
    .venv/bin/python benchmarks/bench_dask.py --sizes 100 --repeats 1            # a quick look
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic_source import make_samed2d  # noqa: E402

BIN = Path(sys.executable).parent


def children_cpu() -> float:
    """CPU seconds of the processes this one has waited for (with those they waited for: the pool)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ingest(build: Path, source: Path, *flags: str, cluster: Cluster | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one `vgmed-build ingest` into a fresh ``build``: its own CPU,
    its `--workers` processes', and the cluster's (scheduler and workers) while it ran."""
    shutil.rmtree(build, ignore_errors=True)
    cpu = children_cpu() + (cluster.cpu() if cluster else 0.0)
    started = time.perf_counter()
    proc = subprocess.run([str(BIN / "vgmed-build"), "ingest", "--build", str(build), "--no-progress",
                           "--source", f"samed2d:{source}", "--modality", "Dermoscopy", *flags],
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"ingest {' '.join(flags)} failed:\n{proc.stderr[-3000:]}")
    return elapsed, children_cpu() + (cluster.cpu() if cluster else 0.0) - cpu


def content(build: Path) -> tuple[str, dict[str, str]]:
    """What a build holds: its regions export and its PNGs by hash."""
    regions = build.with_name(build.name + "-regions.jsonl")
    subprocess.run([str(BIN / "vgmed-build"), "regions", "--build", str(build), "--out", str(regions)],
                   check=True, capture_output=True)
    images = {p.relative_to(build).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
              for p in (build / "images").rglob("*.png")}
    return regions.read_text(), images


class Cluster:
    """A scheduler and ``workers`` single-threaded worker processes on this machine."""

    def __init__(self, folder: Path):
        self.folder, self.procs, self.address = folder, [], ""

    def start(self, workers: int) -> None:
        folder = self.folder
        scheduler_file = folder / "scheduler.json"
        self._start("scheduler", "--scheduler-file", str(scheduler_file), "--port", "0", "--no-dashboard",
                    log="scheduler.log")
        self._wait(lambda: scheduler_file.exists() and scheduler_file.read_text().endswith("}"), "the scheduler")
        self.address = json.loads(scheduler_file.read_text())["address"]
        for i in range(workers):
            self._start("worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1", "--no-nanny",
                        "--no-dashboard", "--name", f"w{i}", log=f"worker{i}.log")
        for i in range(workers):
            self._wait(lambda i=i: "Registered to" in (folder / f"worker{i}.log").read_text(), f"worker {i}")

    def _start(self, *args: str, log: str) -> None:
        with open(self.folder / log, "wb") as fh:
            self.procs.append(subprocess.Popen([str(BIN / "dask"), *args], stdout=fh, stderr=subprocess.STDOUT,
                                               start_new_session=True))

    @staticmethod
    def _wait(check, what: str, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while not check():
            if time.monotonic() > end:
                sys.exit(f"timed out waiting for {what}")
            time.sleep(0.05)

    def cpu(self, scheduler_only: bool = False) -> float:
        """CPU seconds the scheduler and the workers (or the scheduler alone) have used so far."""
        import psutil  # comes with dask distributed

        return sum(sum(psutil.Process(p.pid).cpu_times()[:2]) for p in self.procs[:1 if scheduler_only else None])

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 800], help="items per source, one run each")
    parser.add_argument("--workers", type=int, default=2, help="--workers N, and N Dask worker processes")
    parser.add_argument("--repeats", type=int, default=2, help="timed ingests of each kind per size (best counts)")
    args = parser.parse_args()
    print(f"{platform.node()}: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    same = True
    with tempfile.TemporaryDirectory(prefix="vgmed-bench-dask-") as tmp:
        for n in args.sizes:
            folder = Path(tmp) / f"n{n}"
            folder.mkdir()
            source = make_samed2d(folder / "SAMed2Dv1", n, size=64)
            cluster = Cluster(folder)
            try:
                cluster.start(args.workers)
                kinds = {"workers": ("--workers", str(args.workers)), "dask": ("--dask-scheduler", cluster.address)}
                times: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
                scheduler = {k: 0.0 for k in kinds}  # the scheduler's CPU seconds during each kind's runs
                for repeat in range(args.repeats):
                    for kind in (kinds if repeat % 2 == 0 else reversed(kinds)):
                        before = cluster.cpu(scheduler_only=True)
                        times[kind].append(ingest(folder / kind, source, *kinds[kind],
                                                  cluster=cluster if kind == "dask" else None))
                        scheduler[kind] += cluster.cpu(scheduler_only=True) - before
            finally:
                cluster.close()
            equal = content(folder / "workers") == content(folder / "dask")
            same &= equal
            best = {k: min(wall for wall, _ in v) for k, v in times.items()}
            cpu = {k: 1000 * min(c for _, c in v) / n for k, v in times.items()}
            rates = {k: n / t for k, t in best.items()}
            print(f"{n} items: --workers {args.workers} {best['workers']:.2f} s ({rates['workers']:.1f} items/s, "
                  f"{cpu['workers']:.1f} ms CPU/item), Dask {args.workers} workers {best['dask']:.2f} s "
                  f"({rates['dask']:.1f} items/s, {cpu['dask']:.1f} ms CPU/item): Dask / --workers "
                  f"{rates['dask'] / rates['workers']:.2f}x items/s, {cpu['dask'] / cpu['workers']:.2f}x CPU/item; "
                  f"builds {'identical' if equal else 'DIFFER'}; all runs (wall s / CPU s): "
                  + ", ".join(f"{k} {' '.join(f'{w:.1f}/{c:.1f}' for w, c in v)}" for k, v in times.items()))
            idle = scheduler["workers"] / sum(wall for wall, _ in times["workers"])  # CPU s per s, no tasks
            busy = scheduler["dask"] - idle * sum(wall for wall, _ in times["dask"])
            print(f"  the scheduler's CPU: {1000 * busy / (args.repeats * n):.2f} ms per item, beyond its idle "
                  f"{1000 * idle:.1f} ms per second (measured during the --workers runs); load after: "
                  f"{os.getloadavg()[0]:.1f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
