"""The report's figures read at a glance: one colour per meaning, a / g centred on 1.0 on one range for every
overlay, legends without repeats, titles neither clipped nor running into the colour bar, overlays spread
over the modalities and the natural control, the VQA table and chart linked from index.md.

Grounding outputs are written here as `vgmed-eval grounding` writes them (summary.json, parquet files,
maps/*.npz, real PNGs), so the test needs no model; the figures are read back from the matplotlib
figures the report saves.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("matplotlib")
from vgmed_eval import plotting  # noqa: E402
from vgmed_eval.cli import main  # noqa: E402
from vgmed_eval.vqa import figures  # noqa: E402
from vgmed_eval.vqa.stats import compare  # noqa: E402

LAYERS = [0, 1, 2]


def _table(means):
    return {str(layer): {"mean": m, "ci_low": m - 0.1, "ci_high": m + 0.1, "n": 4}
            for layer, m in zip(LAYERS, means, strict=True)}


def _grounding(root: Path, questions: list[tuple[str, str, str]], scale: float) -> Path:
    """A grounding output with saved maps for (id, modality, plane) questions; a / g spans about 1 +- scale."""
    release = root / "release"
    (release / "images").mkdir(parents=True)
    (root / "maps").mkdir()
    rows, head_rows = [], []
    rng = np.random.default_rng(len(questions))
    for n, (qid, modality, plane) in enumerate(questions):
        image = release / "images" / f"{qid}.png"
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(image)
        cells = np.array([[(c * 20, r * 20, c * 20 + 20, r * 20 + 20) for c in range(4)] for r in range(3)], float)
        spread = scale * (n + 1) / len(questions)
        attn = np.full((len(LAYERS), 3, 4), 1.0) + spread * np.linspace(-1, 1, 12).reshape(3, 4)
        np.savez_compressed(root / "maps" / f"{qid}.npz", attn=attn, general=np.ones_like(attn), gt=np.zeros((3, 4)),
                            layers=np.array(LAYERS), boxes=np.array([[10.0, 10.0, 40.0, 30.0]]),
                            image=f"images/{qid}.png", image_path=str(image), question=f"Is there a {qid}?",
                            box_convention="xyxy", plane=plane, cells=cells)
        rows += [{"id": qid, "modality": modality, "layer": layer, "attention_ratio": 1.0} for layer in LAYERS]
        head_rows += [{"id": qid, "layer": layer, "head": h, "attention_ratio": 0.6 + 0.1 * h + 0.05 * layer}
                      for layer in LAYERS for h in range(6)]
    pd.DataFrame(rows).to_parquet(root / "per_layer.parquet")
    pd.DataFrame(head_rows).to_parquet(root / "per_head.parquet")
    modalities = sorted({m for _, m, _ in questions})
    summary = {"model": "builtin:tiny-llava-with-a-long-name-that-would-not-fit", "release": str(release),
               "n_ok": len(questions), "n_errors": 0, "most_sensitive_layer": 1,
               "overall": {"attention_ratio": _table([1.0, 1.1, 0.9])},
               "by_modality": {m: {"n": 2, "attention_ratio": _table([1.0 + i / 10, 1.0, 1.0])}
                               for i, m in enumerate(modalities)}}
    (root / "summary.json").write_text(json.dumps(summary))
    return root


def _vqa_run(path: Path, benchmark: str, base: list[bool], refined: list[bool]) -> dict:
    rows = [[{"id": str(i), "correct": c, "score": float(c)} for i, c in enumerate(run)] for run in (base, refined)]
    results = {"benchmark": benchmark, "model": "m", "n_questions": len(base),
               "systems": {s: {"overall": {"n": len(r), "accuracy": sum(x["correct"] for x in r) / len(r),
                                           "mean_score": sum(x["score"] for x in r) / len(r)}}
                           for s, r in zip(("baseline", "vgrefine"), rows, strict=True)},
               "comparison": {"a": "baseline", "b": "vgrefine", **compare(*rows, n_resamples=200)}}
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(results))
    return results


@pytest.fixture
def saved(monkeypatch):
    """Every figure the report saves, drawn (so text extents are final), by file name."""
    from matplotlib.figure import Figure

    figures_by_name: dict[str, Figure] = {}
    real = Figure.savefig

    def capture(fig, path, *args, **kwargs):
        real(fig, path, *args, **kwargs)
        figures_by_name[Path(path).name] = fig

    monkeypatch.setattr(Figure, "savefig", capture)
    monkeypatch.setattr("matplotlib.pyplot.close", lambda fig=None: None)
    monkeypatch.setitem(__import__("matplotlib").rcParams, "figure.max_open_warning", 0)
    return figures_by_name


@pytest.fixture
def report(tmp_path, saved):
    medical = _grounding(tmp_path / "g", [("brain1", "MRI", "axial"), ("brain2", "MRI", "axial"),
                                          ("brain3", "MRI", "coronal"), ("liver", "CT", "axial")], scale=0.5)
    _grounding(medical / "control", [("cup", "Natural", "2d"), ("rocket", "Natural", "2d")], scale=1.5)
    vqa = tmp_path / "vqa"
    runs = [_vqa_run(vqa / "slake", "slake", [True] * 30 + [False] * 10, [True] * 38 + [False] * 2),
            _vqa_run(vqa / "vqa-rad", "vqa-rad", [True, False] * 10, [True, False] * 10)]
    out = tmp_path / "report"
    assert main(["report", "--results", str(medical), "--out", str(out), "--samples", "4", "--vqa", str(vqa)]) == 0
    return out, runs


def _legend(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def _lines(fig) -> dict[str, str]:
    return {line.get_label().split(" (")[0]: line.get_color() for line in fig.axes[0].get_lines()
            if not line.get_label().startswith("_")}


def test_colours_mean_one_thing_and_legends_do_not_repeat(report, saved):
    by_layer, by_modality = saved["attention_ratio_by_layer.png"], saved["attention_ratio_by_modality.png"]
    assert _lines(by_layer) == {"medical": plotting.colour("medical"), "natural control": plotting.colour("Natural")}
    assert _lines(by_modality) == {"CT": plotting.colour("CT"), "MRI": plotting.colour("MRI"),
                                   "natural control": plotting.colour("Natural")}
    colours = [plotting.colour(n) for n in ("medical", "Natural", "CT", "MRI", "PET", "X-ray", "baseline", "vgrefine")]
    assert len(set(colours)) == len(colours)
    assert plotting.colour("Mammography") == plotting.colour("Mammography") not in colours
    for fig in (by_layer, by_modality, saved["vqa_by_benchmark.png"]):
        labels = _legend(fig)
        assert len(labels) == len(set(labels)), labels
    assert _legend(by_layer).count("shaded: 95% bootstrap CI") == 1


def _extent(artist, fig):
    """Where ``artist`` lies in display pixels of the figure at its own dpi (savefig drew it at another)."""
    fig.canvas.draw()
    return artist.get_window_extent(fig.canvas.get_renderer())


def test_head_heatmap_is_centred_on_one_and_its_title_fits(report, saved):
    fig = saved["head_heatmap.png"]
    norm = fig.axes[0].images[0].norm
    assert norm.vcenter == 1.0 and norm.vmin == pytest.approx(0.6) and norm.vmax == pytest.approx(1.2)
    for text in (fig.axes[0].title, fig.axes[1].yaxis.label):  # neither the title nor the colour bar's label cut
        box = _extent(text, fig)
        assert box.x0 >= 0 and box.x1 <= fig.bbox.width and box.y0 >= 0 and box.y1 <= fig.bbox.height, text


def test_overlays_share_one_range_and_titles_clear_the_colour_bar(report, saved):
    out, _ = report
    drawn = sorted(p.name for p in (out / "overlays").glob("*.png"))
    # one per modality before any gets a second, and a second plane of MRI before a second axial MRI
    assert drawn == ["brain1.png", "brain3.png", "control_cup.png", "liver.png"]
    norms = [saved[name].axes[0].images[1].norm for name in drawn]
    assert {(n.vmin, n.vmax, n.vcenter) for n in norms} == {(norms[0].vmin, norms[0].vmax, 1.0)}
    assert norms[0].vmin == pytest.approx(1 - 0.75) and norms[0].vmax == pytest.approx(1 + 0.75)  # the cup spans most
    for name in drawn:
        fig = saved[name]
        image_ax, bar_ax = fig.axes
        title, label, bar = _extent(image_ax.title, fig), _extent(bar_ax.yaxis.label, fig), _extent(bar_ax, fig)
        assert not title.overlaps(label) and not title.overlaps(bar), name
        assert title.x1 <= bar.x0 + 1 or title.y0 >= max(bar.y1, label.y1), name


def test_index_links_every_figure_and_the_vqa_table(report):
    out, runs = report
    index = (out / "index.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", index)
    assert {"attention_ratio_by_layer.png", "attention_ratio_by_modality.png", "head_heatmap.png",
            "vqa_by_benchmark.png"} <= set(links)
    assert sum(link.startswith("overlays/") for link in links) == 4
    assert all((out / link).is_file() for link in links)
    slake = next(line for line in index.splitlines() if line.startswith("| slake |"))
    cells = [c.strip() for c in slake.strip("|").split("|")]
    c = runs[0]["comparison"]
    # 30 vs 38 right of 40, 8 discordant pairs all in VGRefine's favour: exact p = 2 / 2^8
    assert cells[:4] == ["slake", "40", "75.0", "95.0"] and cells[7:9] == ["0", "8"]
    assert float(cells[9]) == pytest.approx(2 / 2**8, rel=0.01) == pytest.approx(c["mcnemar"]["p_value"], rel=0.01)
    assert cells[6].startswith("+20.0 [")
    vqa_rad = next(line for line in index.splitlines() if line.startswith("| vqa-rad |"))
    assert vqa_rad.rstrip(" |").endswith("| 0 | 0 | 1")


def test_figures_of_one_vqa_run(tmp_path):
    run = _vqa_run(tmp_path / "r", "pmc-vqa", [True, False, False], [True, True, False])
    figures.write([run], tmp_path / "r" / "results.md", tmp_path / "r" / "results.png", "# VQA: pmc-vqa")
    text = (tmp_path / "r" / "results.md").read_text()
    assert "![VQA: baseline vs VGRefine](results.png)" in text and "| pmc-vqa | 3 | 33.3 | 66.7 |" in text
    with Image.open(tmp_path / "r" / "results.png") as im:
        assert im.width > 400 and np.asarray(im.convert("L")).std() > 5


def test_report_refuses_a_vqa_folder_without_results(tmp_path, capsys):
    medical = _grounding(tmp_path / "g", [("brain1", "MRI", "axial")], scale=0.5)
    assert main(["report", "--results", str(medical), "--out", str(tmp_path / "o"), "--vqa", str(tmp_path)]) == 2
    assert f"--vqa {tmp_path}: no results.json" in capsys.readouterr().err
