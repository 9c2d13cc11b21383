"""`vgmed-eval causal` (issue 25 item 4) on a tiny LLaVA whose answer is planted to depend on one region.

The plant (a real checkpoint, loaded as any other): on the last LLM layer, queries are zero (every position
attends uniformly to the keys it may see), values are one direction ``v`` of the layer's input and the
output projection writes ``1e5 x`` that value into hidden dimension 0; the MLP is off, and the LM head
reads dimension 0 as +50 for "yes" and -50 for "no". So the first answer token is "yes" exactly when the
sum of ``s_j = v . x_j`` over the keys the last token may see is positive. ``v`` is found by a linear
programme on the real hidden states: ``s_j <= 0`` for every token outside the white square, the square's
``s_j`` sum to at least 2, all of them to 1. Knocking the square out must turn "yes" into "no"; knocking
out any cells outside it can only raise the sum, so never flips. The test recomputes each draw's outcome
from ``s`` with numpy, independently of the knockout machinery.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.optimize import linprog

from vgmed_eval.adapters import load_adapter
from vgmed_eval.attention import llm_layers
from vgmed_eval.causal import random_cells, summarise
from vgmed_eval.cli import main
from vgmed_eval.prompts import short_answer

SQUARE = [42, 28, 70, 56]  # exclusive xyxy: cells rows 2-3, cols 3-4 of LLaVA-tiny's 8 x 8 grid of 14 px
ELSEWHERE = [0, 70, 28, 98]  # rows 5-6, cols 0-1: black
QUESTIONS = [  # id, question, box, answer
    ("q-right", "Is there a lesion in the image?", SQUARE, "yes"),
    ("q-wrong", "Is there a mass in the image?", SQUARE, "no"),  # the model says yes: attends, answers wrong
    ("q-elsewhere", "Is there a cyst in the image?", ELSEWHERE, "yes"),
]


def _image() -> Image.Image:
    pixels = np.zeros((112, 112, 3), np.uint8)
    x0, y0, x1, y1 = SQUARE
    pixels[y0:y1, x0:x1] = 255
    return Image.fromarray(pixels)


def _plant(adapter, image: Image.Image) -> dict[str, np.ndarray]:
    """Plant the dependency on the white square; returns each question's s_j over its prompt's tokens."""
    model, tok = adapter.model, adapter.tokenizer
    layer = llm_layers(model)[-1]
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    attn = layer.self_attn
    with torch.no_grad():
        model.lm_head.weight[:, 0] = 0
        model.lm_head.weight[yes, 0], model.lm_head.weight[no, 0] = 50.0, -50.0
        attn.q_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    square = np.zeros((8, 8), bool)
    square[2:4, 3:5] = True
    states, inside = {}, {}
    for qid, question, _, _ in QUESTIONS:
        batch = adapter.build_inputs([image], [short_answer(question)])
        seen = {}
        hook = layer.input_layernorm.register_forward_hook(lambda m, i, o, seen=seen: seen.setdefault("x", o))
        with torch.no_grad():
            model(**batch.inputs)
        hook.remove()
        states[qid] = seen["x"][0].double().numpy()
        inside[qid] = batch.grid_positions[0].numpy()[square.reshape(-1)]
    a_ub, b_ub, a_eq = [], [], []
    for qid, x in states.items():
        outside = np.setdiff1d(np.arange(len(x)), inside[qid])
        a_ub += [x[outside], -x[inside[qid]].sum(0, keepdims=True)]
        b_ub += [np.zeros(len(outside)), [-2.0]]
        a_eq.append(x.sum(0, keepdims=True))
    d = next(iter(states.values())).shape[1]
    lp = linprog(np.zeros(d), A_ub=np.vstack(a_ub), b_ub=np.concatenate(b_ub), A_eq=np.vstack(a_eq),
                 b_eq=np.ones(len(a_eq)), bounds=[(-50, 50)] * d)
    assert lp.status == 0, lp.message
    with torch.no_grad():
        attn.v_proj.weight.zero_()
        attn.v_proj.weight[0] = torch.tensor(lp.x, dtype=attn.v_proj.weight.dtype)
        attn.o_proj.weight.zero_()
        attn.o_proj.weight[0, 0] = 1e5
    return {qid: x @ lp.x for qid, x in states.items()}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("causal")
    adapter = load_adapter("builtin:tiny-llava")
    image = _image()
    s = _plant(adapter, image)
    ckpt = root / "planted-llava"
    adapter.model.save_pretrained(ckpt)
    adapter.processor.save_pretrained(ckpt)
    release = root / "release"
    (release / "images").mkdir(parents=True)
    image.save(release / "images" / "square.png")
    records = [{"id": qid, "image": "images/square.png", "question": q, "q_type": "localization", "modality": "CT",
                "bbox": [box], "bbox_convention": "xyxy_exclusive", "answer": answer, "label": "lesion"}
               for qid, q, box, answer in QUESTIONS]
    (release / "VGMED_localization.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    heads = root / "heads.json"
    heads.write_text(json.dumps({"model": str(ckpt), "knockout_layer": 3, "heads": [[3, 0]]}))
    grounding = root / "grounding"  # attention ratios at the knockout layer, as a grounding run writes them
    grounding.mkdir()
    pd.DataFrame({"id": ["q-right", "q-wrong", "q-elsewhere"], "layer": [3, 3, 3],
                  "attention_ratio": [2.0, 3.0, 0.5], "attention_ratio_random": [1.1, 1.2, np.nan]}
                 ).to_parquet(grounding / "per_layer.parquet", index=False)
    out = root / "out"
    assert main(["causal", "--release", str(release), "--model", str(ckpt), "--heads", str(heads), "--out",
                 str(out), "--grounding", str(grounding), "--draws", "6", "--seed", "3", "--max-new-tokens", "1",
                 "--bootstrap", "50"]) == 0
    rows = {r["id"]: r for r in map(json.loads, (out / "causal.jsonl").read_text().splitlines())}
    adapter_grid = adapter.build_inputs([image], [short_answer(QUESTIONS[0][1])]).grid_positions[0].numpy()
    return out, rows, s, ckpt, adapter_grid


def test_planted_region_flips_the_answer(planted):
    _, rows, _, _, _ = planted
    for qid in ("q-right", "q-wrong"):
        r = rows[qid]
        assert r["answer"] == "yes" and r["answer_gt_knocked"] == "no" and r["flip_gt"]
        assert r["gt_cells"] == 4 and r["grid_cells"] == 64
        assert r["dlogprob_gt"] < -10 and r["dlogit_gt"] < -10 and r["first_token_changed_gt"]
        assert len(r["random"]) == 6 and not any(d["flip"] for d in r["random"])  # cells outside never matter
        assert all(d["answer"] == "yes" for d in r["random"])
    assert rows["q-right"]["correct"] is True and rows["q-wrong"]["correct"] is False
    assert rows["q-elsewhere"]["flip_gt"] is False and rows["q-elsewhere"]["answer_gt_knocked"] == "yes"


def test_every_draw_matches_the_planted_rule(planted):
    """Each random set's outcome as the plant's linear rule says, computed from s_j with numpy."""
    _, rows, s, _, grid = planted
    flips = 0
    for qid, r in rows.items():
        for d in r["random"]:
            assert len(d["cells"]) == r["gt_cells"]
            remaining = s[qid].sum() - s[qid][grid[d["cells"]]].sum()
            assert d["flip"] == (remaining < 0), (qid, d)
            flips += d["flip"]
    # the black region's random sets sometimes take a cell of the white square: then the answer flips
    assert any(d["flip"] for d in rows["q-elsewhere"]["random"]) == (flips > 0)


def test_summary_and_join(planted):
    out, rows, _, ckpt, _ = planted
    summary = json.loads((out / "summary.json").read_text())
    o = summary["overall"]
    assert summary["knockout_layers"] == [3] and summary["n_ok"] == 3 and summary["n_errors"] == 0
    assert o["flip_gt"] == pytest.approx(2 / 3, abs=1e-6)
    expected_random = np.mean([d["flip"] for r in rows.values() for d in r["random"]])
    assert o["flip_random"] == pytest.approx(expected_random, abs=1e-6)
    specific = [r["flip_gt"] and not any(d["flip"] for d in r["random"]) for r in rows.values()]
    assert o["region_specific"] == pytest.approx(np.mean(specific), abs=1e-6)
    join = summary["grounding"]
    assert join["table"] == {"attends_right": 1, "attends_wrong": 1, "does_not_attend_right": 1,
                             "does_not_attend_wrong": 0}  # q-elsewhere: ratio 0.5 < chance 1, answer right
    assert [r["id"] for r in join["attends_but_wrong"]] == ["q-wrong"]
    assert rows["q-elsewhere"]["attends"] is False and rows["q-elsewhere"]["chance"] == 1.0
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "causal" and run["seeds"]["seed"] == 3
    assert run["model"]["weights"] == {"model.safetensors":
                                       hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()}


def test_report_section(planted, tmp_path):
    out, _, _, _, _ = planted
    grounding = tmp_path / "g"
    release = json.loads((out / "summary.json").read_text())["release"]
    assert main(["grounding", "--release", release, "--model", "builtin:tiny-llava", "--out", str(grounding),
                 "--bootstrap", "10", "--chance-draws", "1", "--no-progress"]) == 0
    assert main(["report", "--results", str(grounding), "--out", str(tmp_path / "r"), "--causal", str(out)]) == 0
    index = (tmp_path / "r" / "index.md").read_text()
    assert "## Causal check" in index and "| all | 3 | 66.7% |" in index
    assert "Attends to the right place but answers wrong: `q-wrong`." in index


def test_random_cells_and_summary_by_hand():
    gt = np.zeros(10, bool)
    gt[[1, 2, 3]] = True
    draws = random_cells(gt, np.random.default_rng(0), 50)
    assert len(draws) == 50 and all(d.sum() == 3 and not (d & gt).any() for d in draws)
    assert [d.tolist() for d in random_cells(gt, np.random.default_rng(0), 5)] == \
        [d.tolist() for d in draws[:5]]  # seeded
    assert random_cells(np.ones(10, bool), np.random.default_rng(0), 3) == []  # no room outside
    big = np.zeros(10, bool)
    big[:6] = True
    assert random_cells(big, np.random.default_rng(0), 3) == []  # 4 cells outside, 6 needed
    rows = [{"modality": "CT", "flip_gt": True, "dlogprob_gt": -2.0, "dlogit_gt": -1.0, "dlogprob_random": -0.5,
             "dlogit_random": 0.0, "correct": True, "random": [{"flip": False}, {"flip": True}]},
            {"modality": "MRI", "flip_gt": False, "dlogprob_gt": -1.0, "dlogit_gt": 0.0, "dlogprob_random": -1.0,
             "dlogit_random": 0.0, "correct": None, "random": [{"flip": False}, {"flip": False}]}]
    s = summarise(rows, n_boot=200)
    assert s["overall"]["flip_gt"] == 0.5 and s["overall"]["flip_random"] == 0.25
    assert s["overall"]["region_specific"] == 0.0  # the CT question also flips with a random set
    assert s["overall"]["dlogprob_gt_minus_random"]["mean"] == pytest.approx(((-2 + 0.5) + 0) / 2)
    assert s["by_modality"]["CT"]["flip_gt"] == 1.0 and s["correct"] == 1.0 and s["grounding"] is None
