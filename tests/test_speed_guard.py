"""The quick benchmark guard (benchmarks/quick.py) fails on a deliberately slowed box extraction.

Its box check, at the guard's own size and floor, runs once with the real extraction (PASS) and once with a
copy that makes a widened copy of the whole volume for every slice, the kind of copy issue 21 found in ingest
(about 7x slower here: FAIL, with identical boxes, so only the speed differs)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_ingest  # noqa: E402
import quick  # noqa: E402

from vgmed_build.regions import extract_regions, slice_label_areas  # noqa: E402


def copying_boxes(labels: np.ndarray) -> dict[tuple[int, int], list[list[int]]]:
    """``bench_ingest.fast_boxes`` with an int32 copy of the whole volume (in its own memory order) per slice."""
    _, areas = slice_label_areas(labels, 2)
    out = {}
    for k in np.flatnonzero(areas.any(axis=1)).tolist():
        for value, region in extract_regions(labels.astype(np.int32)[:, :, k]).items():
            out[(k, value)] = region.boxes
    return out


@pytest.mark.slow
def test_box_check_passes_with_the_real_extraction_and_fails_with_a_slowed_copy():
    labels, _ = bench_ingest.make_volume(bench_ingest.QUICK_SHAPE, 20)
    real = bench_ingest.quick_boxes(labels)
    slowed = bench_ingest.quick_boxes(labels, extract=copying_boxes, repeats=1)
    floor = quick.FLOORS[real.name]
    assert real.same and slowed.same  # identical boxes both times
    assert quick.judge(real), real
    assert not quick.judge(slowed), slowed
    assert slowed.value < floor.value <= real.value


def test_a_check_whose_results_differ_fails_whatever_its_speed(capsys):
    name = "boxes: naive skimage CPU / vgmed CPU"
    assert not quick.judge(quick.Ratio(name, 1000.0, "boxes DIFFER", same=False))
    assert "FAIL (results differ)" in capsys.readouterr().out



def test_a_crashing_benchmark_fails_its_checks_and_the_others_still_run(monkeypatch, capsys):
    crashing, fine = types.ModuleType("bench_crashing"), types.ModuleType("bench_fine")
    crashing.quick = lambda only: [quick.Ratio("crash", 1 / 0, "")]
    fine.quick = lambda only: [quick.Ratio("fine", 3.0, "measured")]
    monkeypatch.setitem(sys.modules, "bench_crashing", crashing)
    monkeypatch.setitem(sys.modules, "bench_fine", fine)
    monkeypatch.setattr(quick, "FLOORS", {"crash": quick.Floor("bench_crashing", ">=", 1.0, ""),
                                          "fine": quick.Floor("bench_fine", ">=", 2.0, "")})
    assert quick.run_checks(["bench_crashing", "bench_fine"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "FAIL (error)" in lines[0] and "ZeroDivisionError" in lines[0]
    assert lines[1].startswith("fine") and "PASS" in lines[1]
    assert lines[2] == "FAILED: crash"
