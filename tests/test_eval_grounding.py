"""`vgmed-eval grounding` end to end on a tiny model: outputs, per-question errors, the general map
computed once per image, agreement with the published recipe, and both release formats."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from eval_fixtures import QUESTIONS, make_release
from PIL import Image

from vgmed_build.release_format import record_boxes
from vgmed_eval.adapters import load_adapter
from vgmed_eval.attention import install
from vgmed_eval.cli import main as cli_main
from vgmed_eval.grounding import evaluate_release, parse_layers
from vgmed_eval.heads import select_heads
from vgmed_eval.metrics import grounding_metrics
from vgmed_eval.prompts import GENERAL_PROMPT
from vgmed_eval.prompts import short_answer as question_prompt
from vgmed_eval.release_io import read_release
from vgmed_eval.report import paint_cells


@pytest.fixture(scope="module")
def adapter():
    return load_adapter("builtin:tiny-llava")


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_release(tmp_path_factory.mktemp("rel") / "release")


@pytest.fixture(scope="module")
def run(adapter, release, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    calls = []
    original = adapter.build_inputs

    def spy(images, texts):
        calls.append(list(texts))
        return original(images, texts)

    adapter.build_inputs = spy
    try:
        summary = evaluate_release(adapter, release, out, layers=[0, 2, 3], batch_size=3, rows="last",
                                   save_maps=True, limit=None, q_types=("localization", "attribute"), n_boot=200,
                                   progress=False)
    finally:
        del adapter.build_inputs
    return out, summary, calls


def test_outputs_and_error_counts(run):
    out, summary, _ = run
    per_layer = pd.read_parquet(out / "per_layer.parquet")
    per_head = pd.read_parquet(out / "per_head.parquet")
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    kinds = {e["id"]: e["kind"] for e in errors}
    assert kinds["q-missing"] == "missing_image"
    assert kinds["q-outside"] == "box_outside_image"
    assert kinds["q-wide-2"] == "box_covers_no_cell"  # the right edge of a wide image is cropped by CLIP
    assert kinds["VGMED_attribute:4"] == "bad_record"
    assert summary["n_errors"] == 4 and summary["errors_by_kind"]["missing_image"] == 1
    ok = {q[0] for q in QUESTIONS} - {"q-wide-2"}
    assert set(per_layer["id"]) == ok and summary["n_ok"] == len(ok)
    assert summary["n_questions"] == len(QUESTIONS) + 3
    assert len(per_layer) == len(ok) * 3 and sorted(per_layer["layer"].unique()) == [0, 2, 3]
    assert len(per_head) == len(ok) * 3 * 4
    assert np.isfinite(per_layer[["attention_ratio", "kl", "js"]].to_numpy()).all()
    # summary tables: every group, every layer, a CI around the mean
    for group in ("by_q_type", "by_modality", "by_source"):
        assert summary[group]
    cell = summary["overall"]["attention_ratio"]["2"]
    assert cell["ci_low"] <= cell["mean"] <= cell["ci_high"] and cell["n"] == len(ok)
    assert summary["by_source"]["camera-set"]["n"] == 2
    assert set(summary["by_q_type"]) == {"localization", "attribute"}
    assert (out / "maps" / "q-square-1.npz").exists()


def test_general_map_computed_once_per_image(run):
    _, _, calls = run
    general = [t for call in calls for t in call if t == GENERAL_PROMPT]
    assert len(general) == 4  # square, wide, tall, tiny (missing image never reaches the model)
    asked = [t for call in calls for t in call if t != GENERAL_PROMPT]
    assert len(asked) == 6 and max(len(c) for c in calls) == 3


def test_matches_published_recipe(adapter, release, run):
    """Eager attention with all attentions returned, batch 1, general prompt recomputed: same numbers."""
    out, _, _ = run
    per_layer = pd.read_parquet(out / "per_layer.parquet").set_index(["id", "layer"])
    per_head = pd.read_parquet(out / "per_head.parquet").set_index(["id", "layer", "head"])
    questions = {q.id: q for q in read_release(release)[0]}
    adapter.model.set_attn_implementation("eager")
    try:
        for qid in ("q-square-2", "q-tall-1", "q-tiny-1"):
            q = questions[qid]
            image = Image.open(q.image).convert("RGB")
            maps = []
            for text in (question_prompt(q.question), GENERAL_PROMPT):
                batch = adapter.build_inputs([image], [text])
                with torch.no_grad():
                    att = adapter.model(**batch.inputs, output_attentions=True).attentions
                pos = batch.grid_positions[0]
                maps.append(np.stack([att[layer][0, :, -1, pos].numpy() for layer in (0, 2, 3)]))
            gt = adapter.geometry(image.width, image.height).boxes_to_cells(q.boxes).reshape(-1)
            layer_level = grounding_metrics(maps[0].mean(1), maps[1].mean(1), gt)
            head_level = grounding_metrics(maps[0], maps[1], gt)
            for i, layer in enumerate((0, 2, 3)):
                row = per_layer.loc[(qid, layer)]
                for metric in ("attention_ratio", "kl", "js"):
                    assert row[metric] == pytest.approx(layer_level[metric][i], rel=1e-4, abs=1e-6)
                    for head in range(4):
                        assert per_head.loc[(qid, layer, head), metric] == pytest.approx(
                            head_level[metric][i, head], rel=1e-4, abs=1e-6)
    finally:
        install(adapter.model)


def test_published_format_reads_the_same_boxes(tmp_path, release):
    published = make_release(tmp_path / "pub", errors=False, published=True)
    ours = {q.image_rel + q.question: q.boxes for q in read_release(release)[0]}
    theirs = read_release(published)[0]
    assert len(theirs) == len(QUESTIONS)
    for q in theirs:
        assert q.boxes == ours[q.image_rel + q.question]
    assert {q.source for q in theirs} >= {"SLAKE", "camera-set"}


def convert_boxes(record: dict) -> list:
    return record_boxes(record)[0]


def test_box_conventions():
    assert convert_boxes({"bbox": [1, 2, 3, 4]}) == [(1, 2, 4, 5)]  # published: inclusive
    assert convert_boxes({"original_bboxes": [[1, 2, 3, 4]]}) == [(1, 2, 4, 5)]
    assert convert_boxes({"bbox": [[1, 2, 3, 4]], "image": "SLAKE/xmlab1/source.jpg"}) == [(1, 2, 4, 6)]
    assert convert_boxes({"bbox": [1, 2, 3, 4], "bbox_format": "xywh"}) == [(1, 2, 4, 6)]
    assert convert_boxes({"bbox": [[1, 2, 3, 4]], "bbox_convention": "xyxy_exclusive"}) == [(1, 2, 3, 4)]
    assert convert_boxes({"bbox": [[1, 2, 3, 4]], "bbox_convention": "xyxy_inclusive"}) == [(1, 2, 4, 5)]
    with pytest.raises(ValueError, match="empty box"):
        convert_boxes({"bbox": [[5, 2, 3, 4]], "bbox_convention": "xyxy_exclusive"})
    with pytest.raises(ValueError, match="no 'bbox'"):
        convert_boxes({})


def test_parse_layers():
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("0,2-3,-1", 4) == [0, 2, 3]
    with pytest.raises(ValueError, match="out of range"):
        parse_layers("7", 4)


def test_cli_runs_with_control(tmp_path, release):
    control = make_release(tmp_path / "control", errors=False, published=True)
    out = tmp_path / "out"
    code = cli_main(["grounding", "--release", str(release), "--model", "builtin:tiny-qwen2_vl", "--out", str(out),
                     "--layers", "1-2", "--batch-size", "4", "--limit", "5", "--control-release", str(control),
                     "--bootstrap", "50", "--no-progress", "--rows", "question"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layers"] == [1, 2] and summary["n_questions"] == 5 + 1  # + the bad line
    assert summary["rows"] == "question" and summary["family"] == "qwen2_vl"
    control_summary = json.loads((out / "control" / "summary.json").read_text())
    assert control_summary["n_errors"] == 0 and control_summary["n_ok"] == 5  # --limit applies to both


def test_select_heads_known_answer():
    rng = np.random.default_rng(0)
    rows, head_rows = [], []
    for q in range(30):
        for layer in range(4):
            rows.append({"id": f"q{q}", "layer": layer, "attention_ratio": 1 + (layer == 2) + rng.normal(0, 0.1)})
            for head in range(3):
                score = 1 + 2 * ((layer, head) in ((1, 2), (3, 0))) + rng.normal(0, 0.05)
                head_rows.append({"id": f"q{q}", "layer": layer, "head": head, "attention_ratio": score,
                                  "kl": -score, "js": 0.0})
    chosen = select_heads(pd.DataFrame(rows), pd.DataFrame(head_rows), k=2)
    assert chosen["knockout_layer"] == 2
    assert sorted(map(tuple, chosen["heads"])) == [(1, 2), (3, 0)]
    assert chosen["n_questions"] == 30
    by_kl = select_heads(pd.DataFrame(rows).assign(kl=0.0), pd.DataFrame(head_rows), k=2, metric="kl")
    assert sorted(map(tuple, by_kl["heads"])) == [(1, 2), (3, 0)]  # lowest KL wins


def test_heads_and_report_cli(run, tmp_path, caplog, capsys):
    out, summary, _ = run
    heads = tmp_path / "heads.json"
    capsys.readouterr()
    assert cli_main(["heads", "--results", str(out), "--top-k", "5", "--out", str(heads)]) == 0
    body = json.loads(heads.read_text())
    assert capsys.readouterr().out == f"heads: knockout layer {body['knockout_layer']}, 5 heads -> {heads}\n"
    assert body["model"] == "builtin:tiny-llava" and body["metric"] == "attention_ratio"
    assert len(body["heads"]) == 5 and body["knockout_layer"] in (0, 2, 3)
    per_head = pd.read_parquet(out / "per_head.parquet")
    best = per_head.groupby(["layer", "head"])["attention_ratio"].mean().idxmax()
    assert body["heads"][0] == list(best)
    pairs = per_head.groupby(["layer", "head"]).ngroups
    assert "keeps all" not in caplog.text
    assert cli_main(["heads", "--results", str(out), "--top-k", str(pairs + 4),
                     "--out", str(tmp_path / "all.json")]) == 0
    assert f"--top-k {pairs + 4} keeps all {pairs} (layer, head) pairs" in caplog.text
    assert json.loads((tmp_path / "all.json").read_text())["k"] == pairs
    vgrefine = pytest.importorskip("vgmed_eval.vgrefine")
    loaded_heads, layer, _ = vgrefine.load_heads(heads)
    assert layer == body["knockout_layer"] and [list(h) for h in loaded_heads] == body["heads"]

    report = tmp_path / "report"
    assert cli_main(["report", "--results", str(out), "--out", str(report), "--samples", "3"]) == 0
    for name in ("attention_ratio_by_layer.png", "attention_ratio_by_modality.png", "head_heatmap.png"):
        with Image.open(report / name) as im:
            assert im.width > 200 and np.asarray(im.convert("L")).std() > 5
    assert len(list((report / "overlays").glob("*.png"))) == 3
    index = (report / "index.md").read_text()
    assert "Most visually sensitive layer" in index and "random weights" in index  # builtin:tiny-llava
    # Overlays are captioned by their question (which names the structure), never by a file hash.
    questions = [str(np.load(out / "maps" / f"{p.stem}.npz")["question"]) for p in (report / "overlays").glob("*.png")]
    assert all(f"*{q}*" in index for q in questions) and "attention to each image patch for this question" in index


def test_paint_cells_follows_geometry():
    """Overlay cells land on the cells' real footprints: padding rows of a wide image stay empty."""
    from vgmed_eval.geometry import clip_geometry

    geom = clip_geometry(300, 120, resize=336, crop=(336, 336), patch=14, pad_to_square=True)
    cells = np.array([[geom.cell_to_image(r, c) for c in range(geom.cols)] for r in range(geom.rows)])
    values = np.arange(geom.rows * geom.cols, dtype=float).reshape(geom.rows, geom.cols)
    canvas = paint_cells(values, cells, 300, 120)
    assert not np.isnan(canvas).any()
    # pixel (x=0, y=0) of the image lies in the first row of cells below the padding (offset 90 px of 300)
    r = int(90 * 336 / 300 // 14)
    assert canvas[0, 0] == values[r, 0] and canvas[119, 299] == values[geom.rows - 1 - r, geom.cols - 1]


def test_cli_bad_inputs_are_named(tmp_path, capsys, caplog):
    caplog.set_level("INFO")
    assert cli_main(["grounding", "--release", str(tmp_path / "nope"), "--model", "builtin:tiny-llava",
                     "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["grounding", "--release", str(tmp_path), "--model", str(tmp_path / "nomodel"),
                     "--out", str(tmp_path / "o")]) == 2
    assert "nomodel: cannot load" in capsys.readouterr().err
    assert f"loading {tmp_path / 'nomodel'} (cpu, auto) ..." in caplog.messages  # said before the slow load
    assert cli_main(["grounding", "--release", str(tmp_path), "--model", "builtin:tiny-llava",
                     "--out", str(tmp_path / "o")]) == 2
    assert "none of VGMED_localization.jsonl" in capsys.readouterr().err
    assert cli_main(["heads", "--results", str(tmp_path), "--out", str(tmp_path / "h.json")]) == 2
    assert "run `vgmed-eval grounding` first" in capsys.readouterr().err


def test_record_images_outside_the_release_are_refused(tmp_path):
    """Issue 12.10: `../other/x.png` (it exists) and absolute paths are per-record errors, never read."""
    release = make_release(tmp_path / "rel", errors=False, published=True)
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.full((32, 32), 200, np.uint8)).save(other / "x.png")
    path = release / "VGMED_localization.jsonl"
    bad = [{"image": "../other/x.png", "question": "Is there a lesion?", "bbox": [1, 1, 5, 5]},
           {"image": str(other / "x.png"), "question": "Is there a mass?", "bbox": [1, 1, 5, 5]},
           {"image": "images/../../other/x.png", "question": "Is there a cyst?", "bbox": [1, 1, 5, 5]}]
    n_good = len(path.read_text().splitlines())
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in bad))
    questions, errors = read_release(release)
    assert len(questions) == len(QUESTIONS)
    assert [e.line for e in errors] == [n_good + 1, n_good + 2, n_good + 3]
    assert all("leaves the release directory" in e.error for e in errors)
    assert all(not q.image.is_relative_to(other) for q in questions)
    # with --images the same rule holds for that folder
    _, errors = read_release(release, images=release / "images")
    assert sum("leaves the --images folder" in e.error for e in errors) == 3
