"""Report overlays mark the patient's directions at the image edges, and the marks agree with the anatomy.

Real chain on real data: the MNI template (nilearn, left/right grey and white matter) ingested as an
axial and a coronal MSD source -> templates -> preview release -> grounding (tiny random model,
--save-maps) -> report. The expected letters come from the display convention as docs/ingest.md states
it; the check that matters is that the boxes of left-hemisphere structures lie on the edge marked "L".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ingest_fixtures import mni, write_msd

from vgmed_build.cli import main

pytest.importorskip("torch")
pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("orientation")
    write_msd(root / "Task", {"mni": mni(2)})
    (root / "sources.toml").write_text(
        "".join(f'[[source]]\nname = "mni_{plane}"\nkind = "msd"\npath = "Task"\nmodality = "MRI"\n'
                f'[source.options]\nplane = "{plane}"\n\n' for plane in ("axial", "coronal")),
        encoding="utf-8")
    build = root / "build"
    assert main(["ingest", "--build", str(build), "--no-progress", "--sources", str(root / "sources.toml")]) == 0
    # --unbalanced keep: the axial and coronal slices hold every structure (no "no" to balance a "yes"),
    # and the sides are checked on the localization records.
    assert main(["generate", "--build", str(build), "--drafter", "templates", "--unbalanced", "keep"]) == 0
    out = root / "release"
    assert main(["release", "--build", str(build), "--out", str(out), "--include-unreviewed"]) == 0
    return out


def records(release: Path) -> list[dict]:
    path = release / "VGMED_localization.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_left_structures_lie_on_the_edge_marked_L(release):
    from vgmed_build.directions import edge_directions

    recs = records(release)
    assert {r["plane"] for r in recs} == {"axial", "coronal"}
    sided = [r for r in recs if r["side"] in ("left", "right")]
    assert {r["side"] for r in sided} == {"left", "right"}
    for r in sided:
        centre = np.mean([(b[0] + b[2]) / 2 for b in r["bbox"]])
        edge = "right" if centre > r["width"] / 2 else "left"
        assert edge_directions(r["plane"])[edge] == {"left": "L", "right": "R"}[r["side"]], r
    assert edge_directions("sagittal") == {"left": "A", "right": "P", "top": "S", "bottom": "I"}
    assert edge_directions("2d") is None and edge_directions("") is None  # no guess without a plane


def test_report_overlays_carry_the_marks(release, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from vgmed_eval.cli import main as eval_main
    from vgmed_eval.report import plot_overlays

    out = tmp_path / "results"
    assert eval_main(["grounding", "--release", str(release), "--model", "builtin:tiny-llava", "--out", str(out),
                      "--layers", "1", "--limit", "4", "--save-maps", "--no-progress", "--bootstrap", "10"]) == 0
    maps = sorted((out / "maps").glob("*.npz"))
    assert maps and {str(np.load(m)["plane"]) for m in maps} <= {"axial", "coronal"}
    drawn = {}
    real_savefig = plt.Figure.savefig

    def capture(fig, *args, **kwargs):  # read the letters off the figure the report saves
        drawn[len(drawn)] = {t.get_gid(): t.get_text() for t in fig.axes[0].texts if t.get_gid()}
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", capture)
    assert plot_overlays([(maps[0], release, "overlay")], 1, tmp_path) == [(tmp_path / "overlay.png",
                                                                              str(np.load(maps[0])["question"]))]
    plane = str(np.load(maps[0])["plane"])
    assert drawn[0] == {"edge-left": "R", "edge-right": "L", "edge-top": "A" if plane == "axial" else "S",
                        "edge-bottom": "P" if plane == "axial" else "I"}
    assert (tmp_path / "overlay.png").stat().st_size > 0
    assert main(["validate", str(release)]) == 0
