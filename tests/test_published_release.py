"""The published VGMED release read as downloaded (both layouts), from real records.

Every expected box and cell set is computed in the test from the authors' formulas
(``published_fixtures.authors_boxes`` / ``authors_cells``), not with vgmed's own code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from published_fixtures import (
    COCO_SIZES,
    SLAKE_SIZES,
    XYXY_RECORDS,
    authors_boxes,
    authors_cells,
    make_hub,
    make_older,
    records,
)

from vgmed_build.cli import main as build_main
from vgmed_build.release_format import BoxReading
from vgmed_eval.cli import main as eval_main
from vgmed_eval.release_io import read_release


def size_of(record: dict) -> tuple[int, int]:
    return COCO_SIZES[record["image"]] if isinstance(record["image"], int) else SLAKE_SIZES[record["image"]]


@pytest.fixture
def older(tmp_path) -> tuple[Path, Path]:
    return make_older(tmp_path / "older", tmp_path / "pictures")


@pytest.fixture
def hub(tmp_path) -> Path:
    return make_hub(tmp_path / "hub")


def test_fixture_pictures_have_the_size_gt_tokens_imply():
    """The fixture's picture sizes reproduce every real record's gt_tokens under the authors' formula."""
    for name in ("SLAKE_localization_questions.jsonl", "COCO_attribute_questions.jsonl"):
        for r in records(name):
            want = {tuple(c) for c in r["gt_tokens"]}
            pad = isinstance(r["image"], int)  # the COCO gt_tokens were made with pad-to-square first
            assert authors_cells(authors_boxes(r, xywh=True), *size_of(r), pad=pad) == want


def test_validate_reads_both_layouts(older, hub, capsys):
    root, pictures = older
    assert build_main(["validate", "--published", str(root), "--images", str(pictures)]) == 0
    out = capsys.readouterr().out
    assert "16 records, 4 images: layout OK" in out
    assert ("gt_tokens: 16 of 16 records agree with their boxes under the published mapping "
            "(336 px, 24 x 24 grid, floor / ceil): 10 with the plain resize (later code), "
            "6 only with pad-to-square first (earliest notebook); 0 disagree") in out
    assert build_main(["validate", "--published", str(hub)]) == 0
    out = capsys.readouterr().out
    assert "18 records, 6 images: layout OK" in out and "gt_tokens: 16 of 16" in out
    # forcing the wrong convention: every inverted box is a problem naming file, line and box
    assert build_main(["validate", "--published", str(root), "--images", str(pictures), "--bbox-format", "xyxy"]) == 1
    out = capsys.readouterr().out
    assert "SLAKE_localization_questions.jsonl:1: box [228.0, 188.0, 26.0, 25.0] (xyxy) is empty or outside" in out


def test_older_and_hub_layouts_read_the_authors_boxes(older, hub):
    root, pictures = older
    old, errors = read_release(root, images=pictures)
    assert errors == []
    assert [q.id for q in old[:2]] == ["SLAKE_localization_questions:1", "SLAKE_localization_questions:2"]
    assert all(q.image.is_file() for q in old)
    expected = [authors_boxes(r, xywh=True) for t in ("localization", "attribute")
                for r in records(f"SLAKE_{t}_questions.jsonl")]
    assert [[list(b) for b in q.boxes] for q in old] == expected
    assert {q.box_convention for q in old} == {"xywh"} and old[0].source == "SLAKE"
    coco, errors = read_release(root, images=pictures, control=True)
    assert errors == [] and len(coco) == 6 and coco[0].image.name == "COCO_val2014_000000094871.jpg"
    assert coco[1].image.parent.name == "val2014"
    assert [[list(b) for b in q.boxes] for q in coco[:3]] == [
        authors_boxes(r, xywh=True) for r in records("COCO_localization_questions.jsonl")]
    # hub layout: the same SLAKE boxes, and the xyxy records read as edges (published) or +1 (vgmed)
    hub_q, errors = read_release(hub, ("localization",), reading=BoxReading(xyxy_maxima="edges"))
    assert errors == [] and [[list(b) for b in q.boxes] for q in hub_q[:5]] == expected[:5]
    assert [[list(b) for b in q.boxes] for q in hub_q[5:]] == [authors_boxes(r, xywh=False) for r in XYXY_RECORDS]
    ours = read_release(hub, ("localization",))[0]
    assert [list(b) for b in ours[5].boxes] == [[40, 30, 120, 90]]


def test_renamed_older_file_is_still_xywh(older, tmp_path):
    """The published files renamed to the hub names: a bare SLAKE id is SLAKE (xywh), never xyxy."""
    root, pictures = older
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    (renamed / "VGMED_localization.jsonl").write_bytes((root / "SLAKE_localization_questions.jsonl").read_bytes())
    qs, errors = read_release(renamed, images=pictures)
    assert errors == [] and {q.box_convention for q in qs} == {"xywh"}


def test_wrong_convention_is_an_error_never_a_score(older, tmp_path):
    """--bbox-format xyxy on xywh data: inverted boxes are read errors; the one box that is a valid
    xyxy box is caught by its gt_tokens, so nothing is scored on a box read in the wrong convention."""
    root, pictures = older
    out = tmp_path / "out"
    code = eval_main(["grounding", "--release", str(root), "--images", str(pictures), "--model", "builtin:tiny-llava",
                      "--out", str(out), "--layers", "0", "--bootstrap", "20", "--no-progress",
                      "--bbox-format", "xyxy", "--q-types", "localization"])
    assert code == 1
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    kinds = {e["id"]: e["kind"] for e in errors}
    valid_as_xyxy = [i for i, r in enumerate(records("SLAKE_localization_questions.jsonl"), 1)
                     if all(b[2] > b[0] and b[3] > b[1] for b in r["bbox"])]
    assert valid_as_xyxy == [4]
    assert kinds == {f"SLAKE_localization_questions:{i}": "bad_record" for i in (1, 2, 3, 5)} | {
        "SLAKE_localization_questions:4": "box_convention"}
    assert "SLAKE_localization_questions.jsonl:1: empty box" in next(e["error"] for e in errors
                                                                      if e["id"].endswith(":1"))
    assert any("SLAKE_localization_questions.jsonl:4: boxes read as xyxy_inclusive contradict the record's "
               "gt_tokens" in e["error"] for e in errors)


@pytest.mark.parametrize("layout", ["older", "hub"])
def test_grounding_heads_report_on_the_published_release(layout, older, hub, tmp_path):
    root, pictures = older if layout == "older" else (hub, None)
    args = ["--images", str(pictures)] if pictures else []
    out = tmp_path / "out"
    code = eval_main(["grounding", "--release", str(root), *args, "--control-release", str(root),
                      "--model", "builtin:tiny-llava", "--out", str(out), "--layers", "0-1", "--save-maps",
                      "--bootstrap", "20", "--no-progress"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    n_medical = 10 + (2 if layout == "hub" else 0)
    assert summary["n_errors"] == 0 and summary["n_ok"] == n_medical
    assert summary["gt_tokens"] == {"checked": 10, "agree": 10, "agree_by_mapping": {"resize": 10}, "disagree": []}
    control = json.loads((out / "control" / "summary.json").read_text())
    assert control["n_ok"] == 6 and control["gt_tokens"]["agree_by_mapping"] == {"pad": 6}
    first = records("SLAKE_localization_questions.jsonl")[1]  # two boxes
    saved = np.load(out / "maps" / "SLAKE_localization_questions_2.npz" if layout == "older"
                    else out / "maps" / "VGMED_localization_2.npz")
    assert saved["boxes"].tolist() == authors_boxes(first, xywh=True)
    cells = {(int(c), int(r)) for r, c in zip(*np.nonzero(saved["gt"]), strict=True)}
    grid = saved["gt"].shape[0]  # the tiny model's grid; a square CT picture maps the same in every recipe
    assert cells == authors_cells(authors_boxes(first, xywh=True), 512, 512, pad=False, grid=grid)
    assert eval_main(["heads", "--results", str(out), "--top-k", "3", "--out", str(tmp_path / "heads.json")]) == 0
    assert len(json.loads((tmp_path / "heads.json").read_text())["heads"]) == 3
    assert eval_main(["report", "--results", str(out), "--out", str(tmp_path / "report"), "--samples", "2",
                      "--layer", "1"]) == 0
    assert len(list((tmp_path / "report" / "overlays").glob("*.png"))) == 2  # pictures found via --images


@pytest.mark.parametrize("layout", ["older", "hub"])
def test_vqa_on_the_published_files(layout, tmp_path, capsys):
    root = make_older(tmp_path / "rel", tmp_path / "rel")[0] if layout == "older" else make_hub(tmp_path / "rel")
    out = tmp_path / "out"
    code = eval_main(["vqa", "--benchmark", "vgmed-localization", "--data", str(root), "--model",
                      "builtin:tiny-llava", "--out", str(out), "--device", "cpu", "--max-new-tokens", "2"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["n_questions"] == (5 if layout == "older" else 7) and results["load_errors"] == []
    name = "SLAKE_localization_questions.jsonl" if layout == "older" else "VGMED_localization.jsonl"
    assert results["files"] == [str(root / name)]
    rows = [json.loads(line) for line in (out / "predictions_baseline.jsonl").read_text().splitlines()]
    assert {r["gold"] for r in rows} == {"yes"} and rows[0]["id"] == f"{name.removesuffix('.jsonl')}:1"
    # the attribute file has no answers: refused, saying so
    code = eval_main(["vqa", "--benchmark", "vgmed-attribute", "--data", str(root), "--model",
                      "builtin:tiny-llava", "--out", str(tmp_path / "att"), "--device", "cpu"])
    assert code == 2 and "no record has an answer" in capsys.readouterr().err


def test_vqa_reads_pictures_from_images(tmp_path, capsys):
    """A published download with its pictures elsewhere (a SLAKE folder): --images says where."""
    root, images = make_older(tmp_path / "rel", tmp_path / "slake-download")
    argv = ["vqa", "--benchmark", "vgmed-localization", "--data", str(root), "--model", "builtin:tiny-llava",
            "--device", "cpu", "--max-new-tokens", "2"]
    assert eval_main([*argv, "--out", str(tmp_path / "no-images")]) == 1  # nothing found under --data
    assert "no question loaded" in capsys.readouterr().err
    assert eval_main([*argv, "--out", str(tmp_path / "out"), "--images", str(images)]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["n_questions"] == 5 and results["load_errors"] == []
    # a benchmark with its own picture layout refuses --images instead of ignoring it
    code = eval_main(["vqa", "--benchmark", "slake", "--data", str(root), "--images", str(images), "--model",
                      "builtin:tiny-llava", "--out", str(tmp_path / "slake"), "--device", "cpu"])
    assert code == 2 and "--images applies to the VGMED benchmarks only" in capsys.readouterr().err
    assert not (tmp_path / "slake").exists()  # refused before anything is written
    missing = tmp_path / "no-such-folder"
    assert eval_main([*argv, "--out", str(tmp_path / "missing"), "--images", str(missing)]) == 2
    assert f"{missing}: --images folder not found" in capsys.readouterr().err
    assert not (tmp_path / "missing").exists()


def test_vqa_with_nothing_loaded_exits_nonzero(tmp_path, caplog, capsys):
    root = make_hub(tmp_path / "rel", pictures_under_root=False)
    code = eval_main(["vqa", "--benchmark", "vgmed-localization", "--data", str(root), "--model",
                      "builtin:tiny-llava", "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 1
    err = capsys.readouterr().err
    assert "no question loaded" in err and "7 records rejected" in err
    assert "VGMED_localization.jsonl:1: image 'Slake1.0/imgs/xmlab428/source.jpg' not found" in caplog.text
