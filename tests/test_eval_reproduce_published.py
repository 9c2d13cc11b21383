"""`vgmed-eval reproduce --protocol published` compares like with like: on a tiny HuatuoGPT-Vision converted from
its original layout, with the benchmarks in their real layouts, the report says per benchmark which
questions (population), which metric, which VGRefine configuration and how many questions were loaded,
scored and failed; the published heads are used for the published model and refused clearly on a model
that does not have their layers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_fixtures import make_release
from llava_originals import HUATUO_7B, make_original

from vgmed_eval.cli import main
from vgmed_eval.convert import convert
from vgmed_eval.reproduce import Options, plan_steps, vgrefine_heads

FIX = Path(__file__).parent / "fixtures" / "vqa"
BENCH = ["vqa-rad", "slake", "pmc-vqa", "omnimedvqa"]


def _closed_open(name: str) -> tuple[int, int]:
    """(closed, open) test questions as the benchmark's own file marks them."""
    if name == "slake":
        recs = [r for r in json.loads((FIX / "slake" / "test.json").read_text()) if r["q_lang"] == "en"]
    else:
        recs = [r for r in json.loads((FIX / "vqa-rad" / "VQA_RAD Dataset Public.json").read_text())
                if r["phrase_type"].startswith("test")]
    kinds = [r["answer_type"].strip() for r in recs]
    return kinds.count("CLOSED"), kinds.count("OPEN")


@pytest.fixture(scope="module")
def huatuo(tmp_path_factory):
    base = tmp_path_factory.mktemp("huatuo")
    dst = base / "HuatuoGPT-Vision-7B-tiny-hf"  # the name says which published model it stands for
    convert(make_original(base / "orig", HUATUO_7B), dst, progress=False)
    make_release(base / "release", errors=False)
    return base, dst


def _argv(base: Path, model: Path, out: Path, *extra: str) -> list[str]:
    argv = ["reproduce", "--model", str(model), "--vgmed", str(base / "release"), "--out", str(out),
            "--top-k", "3", "--bootstrap", "30", "--batch-size", "4", "--device", "cpu", "--protocol", "published",
            *extra]
    for name in BENCH:
        argv += ["--benchmark", f"{name}={FIX / ('mmmu' if name == 'mmmu-med' else name)}"]
    return argv


def test_published_heads_on_a_smaller_model_are_refused_by_name(huatuo, capsys):
    base, model = huatuo
    out = base / "published-heads"
    assert main(_argv(base, model, out)) == 1
    text = json.loads((model / "config.json").read_text())["text_config"]
    size = f"has {text['num_hidden_layers']} layers of {text['num_attention_heads']} attention heads"
    report = json.loads((out / "report.json").read_text())
    assert report["vqa_heads"] == {"used": "published", "vgrefine": "published:huatuogpt-vision-7b"}
    for name in BENCH:
        step = report["steps"][f"vqa {name}"]
        assert step["status"] == "failed"
        assert size in step["message"], step["message"]
        assert "(15,4)" in step["message"] and "knockout layer(s) 16" in step["message"]
        assert not list((out / "vqa" / name).glob("predictions_*.jsonl"))  # nothing half written


def test_report_names_population_metric_configuration_and_counts(huatuo):
    base, model = huatuo
    out = base / "measured"
    assert main(_argv(base, model, out, "--heads", "measured")) == 0
    report = json.loads((out / "report.json").read_text())
    heads = json.loads((out / "heads.json").read_text())
    rows = {v["benchmark"]: v for v in report["vqa"]}
    for name, v in rows.items():
        results = json.loads((out / "vqa" / name / "results.json").read_text())
        assert v["population"] == "closed-mc"
        assert v["metric"] == ("accuracy over closed questions as multiple choice (open skipped); "
                               "HuatuoGPT-Vision's letter match (score_mix_llava)")
        assert v["configuration"] == (f"measured heads: knockout layer {heads['knockout_layer']}, 3 heads, "
                                      "percentile 80, knockout prefill; greedy, 1 token(s) at most, at least 1")
        assert v["counts"]["failed"] == 0
        rows_b = (out / "vqa" / name / "predictions_baseline.jsonl").read_text().splitlines()
        assert v["counts"]["scored"] == {"baseline": len(rows_b), "vgrefine": len(rows_b)}
        assert v["counts"]["loaded"] == results["counts"]["loaded"]
        assert all(json.loads(r)["options"] for r in rows_b)  # every question asked as multiple choice
    for name in ("vqa-rad", "slake"):
        closed, open_ = _closed_open(name)
        c = rows[name]["counts"]
        assert c["loaded"] == closed + open_ and c["skipped"]["skipped_open"] == open_
        assert c["scored"]["baseline"] + c["skipped"]["skipped_no_options"] == closed
    # published figures, each with its source: the authors' table, or HuatuoGPT-Vision's README where only it has one
    assert rows["slake"]["published"]["baseline"] == 76.5 and "VGRefine authors" in rows["slake"]["published"]["source"]
    assert rows["omnimedvqa"]["published"]["baseline"] == 74.0
    assert rows["omnimedvqa"]["published"]["source"].startswith("HuatuoGPT-Vision README")
    assert rows["omnimedvqa"]["published"]["vgrefine"] is None
    md = (out / "report.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| slake |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1].startswith("accuracy over closed questions as multiple choice")
    assert cells[2].startswith("measured heads: knockout layer")
    assert cells[3:6] == [str(rows["slake"]["counts"]["loaded"]), "baseline 1 / vgrefine 1", "0"]
    assert cells[-3:] == ["76.5", "76.9", "[P]"]
    omni = next(x for x in md.splitlines() if x.startswith("| omnimedvqa |"))
    assert omni.rstrip().endswith("| 74.0 | — | [H] |")
    assert "MMMU H&M" in md and "| 74.0 | 50.6 |" in md


def test_the_published_heads_are_chosen_for_the_published_model(tmp_path):
    o = Options(model="/models/HuatuoGPT-Vision-7B", vgmed=tmp_path, out=tmp_path / "o",
                benchmarks={"slake": FIX / "slake"}, protocol="published")
    vqa = plan_steps(o)[-1]
    assert vqa.argv[vqa.argv.index("--vgrefine") + 1] == "published:huatuogpt-vision-7b"
    for changed in ({"heads": "measured"}, {"protocol": "vgmed"}, {"model": "some/other-model"}):
        vqa = plan_steps(Options(**{**o.__dict__, **changed}))[-1]
        assert vqa.argv[vqa.argv.index("--vgrefine") + 1] == str(tmp_path / "o" / "heads.json")
    with pytest.raises(ValueError, match="no published heads for some/other-model.*huatuogpt-vision-7b"):
        vgrefine_heads(Options(**{**o.__dict__, "model": "some/other-model", "heads": "published"}))
