"""Quick benchmark guard: every speed ratio the benchmarks establish, at small sizes, against a floor.

Each check measures vgmed and its baseline in this same process, one after the other, so a loaded
machine slows both and the ratio holds; most use CPU seconds of this process (best of a few repeats),
which a shared machine inflates far less than wall time. Every check also keeps its benchmark's own
test of correctness (identical boxes, maps, answers): a mismatch fails the check whatever its speed.
One line per check; exit status 1 when any check fails (a benchmark that crashes fails its checks; the
others still run). About three minutes on the loaded 2-core build machine (~50 s of CPU).

    .venv/bin/python benchmarks/quick.py                 # every check
    .venv/bin/python benchmarks/quick.py --only boxes    # checks whose name contains "boxes"
    .venv/bin/python benchmarks/bench_ingest.py --quick  # one benchmark's checks, same floors
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy / torch: thread contention on a shared machine

import argparse  # noqa: E402
import importlib  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from dataclasses import dataclass  # noqa: E402


@dataclass(frozen=True)
class Floor:
    """``ratio op value``: ">=" for speed-ups over a baseline, "<=" for a cost over a floor of necessary work."""

    bench: str  # the benchmark module whose ``quick`` measures it
    op: str
    value: float
    measured: str  # what the quick runs measured when the floor was set (benchmarks/RESULTS.md, "quick guard")

    def holds(self, ratio: float) -> bool:
        return ratio >= self.value if self.op == ">=" else ratio <= self.value


# The one table of floors, set from 5-10 quick runs on the loaded 2-core build machine (load 6-9; the
# "measured" column, benchmarks/RESULTS.md "quick guard") with margin for noise: the worst run is at least
# 1.35x inside every floor. The ingest 3D floor also fails issue 21's regression (measured 6.7-8.4x).
FLOORS: dict[str, Floor] = {
    "boxes: naive skimage CPU / vgmed CPU": Floor("bench_ingest", ">=", 6.0, "8.9-18.4x"),
    "ingest 3D: end-to-end CPU / box extraction CPU": Floor("bench_ingest", "<=", 4.0, "1.6-2.0x"),
    "ingest 2D: end-to-end CPU / read+render floor CPU": Floor("bench_scale", "<=", 1.5, "1.03-1.11x"),
    # wall-clock rate: noisy under load (both loops are CPU-starved), so only a gross loss (e.g. requests no
    # longer concurrent: ~1/32) must fail it; generate's own cost is judged in CPU on the next line
    "generate: drafts/s / bare client loop req/s": Floor("bench_generate", ">=", 0.6, "0.87-1.37x"),
    "generate: bare loop CPU/request / generate CPU/draft": Floor("bench_generate", ">=", 0.7, "0.97-1.58x"),
    # the judge's loop as generate's (wall rate: gross losses only); its CPU per draft includes drawing and
    # encoding each draft's image, which the bare loop gets done beforehand (measured at load 3-6)
    "judge: drafts/s / bare client loop req/s": Floor("bench_judge", ">=", 0.6, "0.90-1.20x"),
    "judge: bare loop CPU/request / judge CPU/draft": Floor("bench_judge", ">=", 0.8, "1.08-1.20x"),
    "grounding: published CPU / vgmed-eval CPU": Floor("bench_grounding", ">=", 1.5, "2.3-3.0x"),
    "vgrefine: published CPU / VGRefiner CPU": Floor("bench_vqa", ">=", 2.0, "3.9-5.4x"),
}


@dataclass(frozen=True)
class Ratio:
    """One measured ratio; ``same`` is False when the benchmark's correctness check failed."""

    name: str
    value: float
    detail: str
    same: bool = True


def best_cpu(fn: Callable, repeats: int) -> tuple[float, object]:
    """(least CPU seconds of this process over ``repeats`` calls, the last result): the least is the run
    least disturbed by other processes (cache, frequency), which is what the code itself costs."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.process_time()
        result = fn()
        best = min(best, time.process_time() - start)
    return best, result


def judge(ratio: Ratio) -> bool:
    """Print the check's line; True when it passes (correct and on the right side of its floor)."""
    floor = FLOORS[ratio.name]
    ok = ratio.same and floor.holds(ratio.value)
    verdict = "PASS" if ok else ("FAIL (results differ)" if not ratio.same else "FAIL")
    print(f"{ratio.name:<54} {ratio.value:7.2f}x  floor {floor.op} {floor.value:g}x (set at {floor.measured})  "
          f"{verdict:<5}  {ratio.detail}", flush=True)
    return ok


def wanted(name: str, only: str | None) -> bool:
    """Whether the check ``name`` runs under ``--only``."""
    return only is None or only in name


def run_checks(benches: Iterable[str], only: str | None = None) -> int:
    """Run the ``quick(only)`` of each benchmark module named, judge each ratio; 0 when all pass, else 1.

    A module is imported only when one of its checks is wanted (the model benchmarks import torch)."""
    failed = []
    for bench in benches:
        names = [name for name, floor in FLOORS.items() if floor.bench == bench and wanted(name, only)]
        if not names:
            continue
        try:
            ratios = importlib.import_module(bench).quick(only)
        except Exception as exc:  # one broken benchmark must not hide the others' results
            for name in names:
                print(f"{name:<54} {'-':>8}  floor {FLOORS[name].op} {FLOORS[name].value:g}x  FAIL (error)  "
                      f"{bench}: {type(exc).__name__}: {exc}", flush=True)
            failed += names
            continue
        for ratio in ratios:
            if not judge(ratio):
                failed.append(ratio.name)
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="run only the checks whose name contains this text (e.g. boxes, ingest)")
    args = parser.parse_args()
    if not any(wanted(name, args.only) for name in FLOORS):
        parser.error(f"--only {args.only!r} matches no check; the checks are: {'; '.join(FLOORS)}")
    logging.basicConfig(level=logging.ERROR)  # the measured steps' warnings (e.g. no /models endpoint) are noise
    start = time.perf_counter()
    print(f"quick guard: {os.cpu_count()} CPUs, load {', '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    code = run_checks(dict.fromkeys(floor.bench for floor in FLOORS.values()), args.only)
    print(f"quick guard: {'FAIL' if code else 'PASS'} in {time.perf_counter() - start:.0f} s wall, "
          f"load {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return code


if __name__ == "__main__":
    sys.exit(main())
