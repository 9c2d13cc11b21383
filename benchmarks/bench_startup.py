"""Start-up benchmark: how long the programs take to answer `--help` and a mistyped command.

Each command runs ``--repeats`` times as a fresh process; the best wall time and the CPU time of that
run are printed beside the bare interpreter's (``python -c pass``, measured in the same run) and the
targets of issue 21 (``vgmed-build --help`` <= 0.5 s, ``vgmed-eval --help`` <= 1.0 s on an idle machine).

    .venv/bin/python benchmarks/bench_startup.py
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

TARGETS = {"vgmed-build --help": 0.5, "vgmed-eval --help": 1.0}


def timed(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of ``argv`` as a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="runs per command; the best is reported")
    args = parser.parse_args()
    bindir = os.path.dirname(sys.executable)
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "python -c pass (interpreter floor)": [sys.executable, "-c", "pass"],
            "vgmed-build --help": [os.path.join(bindir, "vgmed-build"), "--help"],
            "vgmed-eval --help": [os.path.join(bindir, "vgmed-eval"), "--help"],
            "vgmed-build ingest, mistyped source kind": [os.path.join(bindir, "vgmed-build"), "ingest", "--build",
                                                        os.path.join(tmp, "b"), "--source", "nifit:/data"],
            "vgmed-eval grounding --help": [os.path.join(bindir, "vgmed-eval"), "grounding", "--help"],
        }
        failed = False
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, best of {args.repeats}")
        for name, argv in cases.items():
            wall, cpu = min(timed(argv) for _ in range(args.repeats))
            target = TARGETS.get(name)
            verdict = "" if target is None else f"  target <= {target} s: {'PASS' if wall <= target else 'FAIL'}"
            failed |= target is not None and wall > target
            print(f"{name:45s} {wall:6.3f} s wall {cpu:6.3f} s CPU{verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
