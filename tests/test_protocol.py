"""``--protocol published`` and each of its flags, against the authors' formulas written out here."""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from published_fixtures import (
    COCO_SIZES,
    SLAKE_SIZES,
    XYXY_IMAGES,
    XYXY_RECORDS,
    authors_boxes,
    authors_cells,
    make_hub,
    records,
)

from vgmed_eval.adapters import load_adapter
from vgmed_eval.adapters.qwen import set_pixel_bounds
from vgmed_eval.cli import build_parser
from vgmed_eval.cli import main as eval_main
from vgmed_eval.cli.vqa import _config
from vgmed_eval.geometry import clip_geometry, published_geometry
from vgmed_eval.ground_truth import Truths
from vgmed_eval.grounding import GroundingRun, _Item
from vgmed_eval.protocol import PUBLISHED, PUBLISHED_HEADS, VGMED, resolve
from vgmed_eval.release_io import Question
from vgmed_eval.vqa.scoring import score_published

FIX = Path(__file__).parent / "fixtures" / "vqa"


def cells_of(mask: np.ndarray) -> set[tuple[int, int]]:
    return {(int(c), int(r)) for r, c in zip(*np.nonzero(mask), strict=True)}


def test_one_flag_sets_every_choice_and_each_flag_wins():
    parser = build_parser()
    args = parser.parse_args(["grounding", "--release", "r", "--model", "m", "--out", "o", "--protocol", "published"])
    assert resolve(args.protocol, vars(args)) == PUBLISHED
    assert (PUBLISHED.box_mapping, PUBLISHED.xyxy_maxima, PUBLISHED.min_pixels, PUBLISHED.max_pixels,
            PUBLISHED.percentile, PUBLISHED.vgrefine_mode, PUBLISHED.mc_max_new_tokens, PUBLISHED.scorer) == (
        "resize", "edges", 784, 50176, 80.0, "prefill", 1, "published")
    args = parser.parse_args(["grounding", "--release", "r", "--model", "m", "--out", "o", "--protocol", "published",
                              "--box-mapping", "pad", "--max-pixels", "1000"])
    assert resolve(args.protocol, vars(args)) == replace(PUBLISHED, box_mapping="pad", max_pixels=1000)
    args = parser.parse_args(["vqa", "--benchmark", "pmc-vqa", "--data", "d", "--model", "m", "--out", "o",
                              "--percentile", "50"])
    assert resolve(args.protocol, vars(args)) == replace(VGMED, percentile=50.0)


def test_published_mapping_reproduces_the_published_gt_tokens():
    """On HuatuoGPT-Vision's real 24 x 24 grid: resize gives the SLAKE gt_tokens, pad the COCO ones."""
    for name, mapping, sizes in (("SLAKE_localization_questions.jsonl", "resize", SLAKE_SIZES),
                                 ("COCO_localization_questions.jsonl", "pad", COCO_SIZES)):
        for r in records(name):
            width, height = sizes[r["image"]]
            model = clip_geometry(width, height, resize=336, crop=(336, 336), patch=14, pad_to_square=True)
            geometry = published_geometry(model, mapping)
            edges = authors_boxes(r, xywh=True)
            assert cells_of(geometry.boxes_to_cells(edges)) == {tuple(c) for c in r["gt_tokens"]}
            assert cells_of(geometry.boxes_to_cells(edges)) == authors_cells(edges, width, height, mapping == "pad")
    # non-square xyxy pictures: both mappings equal the formula, and they differ from each other
    for r in XYXY_RECORDS:
        width, height = XYXY_IMAGES[r["image"]]
        model = clip_geometry(width, height, resize=336, crop=(336, 336), patch=14, pad_to_square=True)
        edges = authors_boxes(r, xywh=False)
        got = {m: cells_of(published_geometry(model, m).boxes_to_cells(edges)) for m in ("resize", "pad")}
        assert got == {m: authors_cells(edges, width, height, m == "pad") for m in ("resize", "pad")}
        assert got["resize"] != got["pad"]


@pytest.mark.parametrize("extra,mapping", [([], "resize"), (["--box-mapping", "pad"], "pad")])
def test_grounding_uses_the_authors_boxes_under_published(extra, mapping, tmp_path, capsys):
    """--save-maps shows the boxes and cells the evaluator used: the authors' reading exactly."""
    root = make_hub(tmp_path / "hub")
    out = tmp_path / "out"
    assert eval_main(["grounding", "--release", str(root), "--model", "builtin:tiny-llava", "--out", str(out),
                      "--layers", "0", "--save-maps", "--bootstrap", "20", "--no-progress", "--q-types",
                      "localization", "--protocol", "published", *extra]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"]["name"] == "published" and summary["protocol"]["box_mapping"] == mapping
    heads = tmp_path / "heads.json"
    assert eval_main(["heads", "--results", str(out), "--top-k", "2", "--out", str(heads), "--protocol",
                      "published"]) == 0
    assert json.loads(heads.read_text())["protocol"]["box_mapping"] == mapping
    capsys.readouterr()
    assert eval_main(["heads", "--results", str(out), "--out", str(heads), "--protocol", "vgmed"]) == 2
    assert "measured under --protocol published, not vgmed" in capsys.readouterr().err
    for number, r in ((6, XYXY_RECORDS[0]), (7, XYXY_RECORDS[1])):
        saved = np.load(out / "maps" / f"VGMED_localization_{number}.npz")
        assert saved["boxes"].tolist() == authors_boxes(r, xywh=False)  # no +1 on the maxima
        width, height = XYXY_IMAGES[r["image"]]
        grid = saved["gt"].shape[0]
        assert cells_of(saved["gt"]) == authors_cells(authors_boxes(r, xywh=False), width, height,
                                                      mapping == "pad", grid=grid)


def test_head_norm_by_the_head_mean(tmp_path):
    """--head-norm mean (submission notebook): each head's map over the layer's head-averaged general map."""
    rng = np.random.default_rng(0)
    a, g = rng.random((2, 3, 16)), rng.random((2, 3, 16)) + 0.1
    gt = np.zeros(16, bool)
    gt[[1, 2, 5]] = True
    geometry = clip_geometry(4, 4, resize=4, crop=None, patch=1, pad_to_square=False)
    q = Question("q", tmp_path / "x.png", "x.png", "?", [(1, 0, 3, 2)], "localization", "CT", "s")
    for norm in ("head", "mean"):
        run = GroundingRun(None, [0, 1], 1, protocol=replace(VGMED, head_norm=norm))
        cells = gt.reshape(4, 4)
        run._score(_Item(q, geometry, Truths("box", cells, {"box": cells}, [])), a, g)
        ratio = run.per_head()["attention_ratio"].to_numpy().reshape(2, 3)
        for layer in range(2):
            for head in range(3):
                ref = g[layer, head] if norm == "head" else g[layer].mean(0)
                n = a[layer, head] / ref
                assert ratio[layer, head] == pytest.approx(n[gt].mean() / n.mean())


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's own smart_resize, written out."""
    h_bar, w_bar = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar, w_bar = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def test_qwen_pixel_bounds():
    from PIL import Image

    adapter = load_adapter("builtin:tiny-qwen2_vl")
    factor = adapter.image_processor.patch_size * adapter.image_processor.merge_size
    for low, high in ((784, 3136), (784, 50176)):
        set_pixel_bounds(adapter, low, high)
        geometry = adapter.geometry(300, 200)
        h, w = smart_resize(200, 300, factor, low, high)
        assert (geometry.rows, geometry.cols) == (h // factor, w // factor)
        thw = adapter.image_processor(images=[Image.new("RGB", (300, 200))], return_tensors="pt")["image_grid_thw"]
        assert thw[0, 1:].tolist() == [h // adapter.image_processor.patch_size, w // adapter.image_processor.patch_size]
    with pytest.raises(ValueError, match="Qwen-VL models only"):
        set_pixel_bounds(load_adapter("builtin:tiny-llava"), 784, 50176)


def test_published_heads_and_vgrefine_settings():
    ns = argparse.Namespace(vgrefine="published:huatuogpt-vision-7b", model="m", top_k=None, knockout_layers=None,
                            threshold="percentile", minmax_cutoff=0.5, rows="last")
    config = _config(ns, PUBLISHED)
    assert config.knockout_layers == (16,) and len(config.heads) == 20
    assert config.heads[:3] == ((15, 4), (16, 5), (15, 1)) and config.heads[-1] == (17, 26)
    assert (config.percentile, config.mode) == (80.0, "prefill")
    assert [list(h) for h in config.heads] == PUBLISHED_HEADS["huatuogpt-vision-7b"]["heads"]
    with pytest.raises(ValueError, match="no published heads of that name"):
        _config(argparse.Namespace(**{**vars(ns), "vgrefine": "published:nope"}), PUBLISHED)


# HuatuoGPT-Vision's scorer.match_choice3 (FreedomIntelligence/HuatuoGPT-Vision, scorer.py of commit f699d88, read
# in the fork xk-huang/HuatuoGPT-Vision), stage 1, with every lead-in it lists: the start, "is ", the CJK copulas
# 是 / 为, "*", "(", "'", '"', "#", a space, or any other non-word character.
_THEIR_LEADS = ("^", "is ", "是", "为", r"\*", r"\(", "'", '"', "#", " ", r"\W")
_THEIR_LETTER = re.compile("(?:" + "|".join(_THEIR_LEADS) + r")(?![aA] )([a-nA-N])(?:\W|$)", re.S)


def theirs_letter(response: str, options: list[str]) -> str:
    """HuatuoGPT-Vision's choice extraction, written out: (1) the first standalone letter a-n / A-N as found,
    whatever the options (never the article "a " / "A "); (2) else the option whose lower-cased text occurs
    latest in the lower-cased response (their stable descending sort: the earlier option on a tie); (3) else the
    option with the highest difflib ratio of (option, response), the later option on a tie (their ``>=``)."""
    found = _THEIR_LETTER.search(response)
    if found:
        return found.group(1)
    letters, text = "ABCDEFGHIJK"[: len(options)], response.lower()
    placed = [(letter, text.rindex(o.lower())) for letter, o in zip(letters, options, strict=True) if o.lower() in text]
    if placed:
        return sorted(placed, key=lambda p: p[1], reverse=True)[0][0]
    best, highest = None, 0.0
    for letter, option in zip(letters, options, strict=True):
        ratio = difflib.SequenceMatcher(None, option.lower(), text).ratio()
        if ratio >= highest:
            best, highest = letter, ratio
    return best


def test_published_scorer():
    options = ["CT scan", "MRI", "Ultrasound", "X-ray"]
    # their reading where it is not the obvious one: "I" and a lower-case or out-of-range letter are taken as
    # found (and count as wrong); the article is skipped; an empty answer is the last option (every ratio 0).
    assert [theirs_letter(r, options) for r in ("I think B", "b", "Answer: K", "", "A B", "答案是B")] == [
        "I", "b", "K", "D", "B", "B"]
    responses = ["B", "The answer is C.", "it is a ct scan, not an MRI", "ultrasund", "x ray", "(D)", "I think B",
                 "b", "Answer: K", "", "A large mass", "答案是B", "**C**", "#A", "'d'", "mri or ct scan", "none",
                 "thisB", "MRI MRI", "is a"]
    for response in responses:
        want = theirs_letter(response, options)
        got = score_published(response, want, "closed", options)
        assert (got.parsed, got.correct) == (want, True), response
        assert score_published(response, "A" if want != "A" else "B", "closed", options).correct is False
    # two options found at the same place: the earlier one
    twins = ["scan", "SCAN"]
    assert theirs_letter("scan", twins) == score_published("scan", "A", "closed", twins).parsed == "A"
    for response, gold, ok in [("Yes, there is", "yes", True), ("left lung", "the left lung", True),
                               ("no", "yes", False), ("", "yes", False)]:
        assert score_published(response, gold, "open").correct is ok


def test_vqa_published_protocol_answers_multiple_choice_with_one_token(tmp_path):
    out = tmp_path / "out"
    assert eval_main(["vqa", "--benchmark", "pmc-vqa", "--data", str(FIX / "pmc-vqa"), "--model",
                      "builtin:tiny-llava", "--out", str(out), "--device", "cpu", "--protocol", "published"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["decoding"]["max_new_tokens"] == 1 and results["protocol"]["scorer"] == "published"
    adapter = load_adapter("builtin:tiny-llava")
    for row in map(json.loads, (out / "predictions_baseline.jsonl").read_text().splitlines()):
        assert len(adapter.tokenizer(row["response"], add_special_tokens=False)["input_ids"]) <= 1
        assert row["parsed"] == theirs_letter(row["response"], row["options"])
        assert row["correct"] == (row["parsed"] == row["gold"])
