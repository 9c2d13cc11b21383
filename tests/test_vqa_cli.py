"""`vgmed-eval vqa` end to end on fixture benchmarks with tiny random models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vgmed_eval.cli import main

FIX = Path(__file__).parent / "fixtures" / "vqa"


def _heads(tmp_path: Path) -> Path:
    path = tmp_path / "heads.json"
    path.write_text(json.dumps({"model": "builtin:tiny-llava", "knockout_layer": 2,
                                "heads": [[1, 0], [2, 1], [3, 2]], "k": 3}))
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_compare_writes_predictions_results_and_stats(tmp_path):
    out = tmp_path / "out"
    rc = main(["vqa", "--benchmark", "pmc-vqa", "--data", str(FIX / "pmc-vqa"), "--model", "builtin:tiny-llava",
               "--vgrefine", str(_heads(tmp_path)), "--compare", "--max-new-tokens", "3", "--batch-size", "2",
               "--bootstrap", "100", "--out", str(out)])
    assert rc == 0
    base, refined = _rows(out / "predictions_baseline.jsonl"), _rows(out / "predictions_vgrefine.jsonl")
    assert [r["id"] for r in base] == [r["id"] for r in refined] == ["0", "1"]
    for row in base + refined:
        assert row["prompt"].startswith("USER: <image>\n") and "A. CT scan" in base[0]["prompt"]
        assert set(row) >= {"prompt", "response", "gold", "correct", "score", "modality"}
    assert all(r["knocked_out"] == 51 and r["grid_cells"] == 64 for r in refined)  # 80th percentile of 64
    assert all(r["knocked_out"] is None for r in base)
    results = json.loads((out / "results.json").read_text())
    assert results["n_questions"] == 2 and results["vgrefine"]["percentile"] == 80.0
    assert results["comparison"]["n"] == 2 and "p_value" in results["comparison"]["mcnemar"]
    assert results["systems"]["baseline"]["overall"]["accuracy"] == sum(r["correct"] for r in base) / 2
    # the same as a table and a chart beside results.json
    table = (out / "results.md").read_text()
    assert "![VQA: baseline vs VGRefine](results.png)" in table and (out / "results.png").stat().st_size > 0
    row = next(line for line in table.splitlines() if line.startswith("| pmc-vqa | 2 |"))
    assert row.rstrip(" |").endswith(f"{results['comparison']['mcnemar']['p_value']:.2g}")

    # The baseline alone gives the same answers (the shared question pass does not change them).
    alone = tmp_path / "alone"
    assert main(["vqa", "--benchmark", "pmc-vqa", "--data", str(FIX / "pmc-vqa"), "--model",
                 "builtin:tiny-llava", "--max-new-tokens", "3", "--out", str(alone)]) == 0
    assert [r["response"] for r in _rows(alone / "predictions_baseline.jsonl")] == [r["response"] for r in base]
    assert not (alone / "predictions_vgrefine.jsonl").exists()

    # A rerun resumes: nothing left to answer, same results.
    assert main(["vqa", "--benchmark", "pmc-vqa", "--data", str(FIX / "pmc-vqa"), "--model",
                 "builtin:tiny-llava", "--max-new-tokens", "3", "--out", str(alone)]) == 0
    assert len(_rows(alone / "predictions_baseline.jsonl")) == 2
    assert json.loads((alone / "results.json").read_text())["timing"]["answered"] == 0

    # Adding VGRefine to a baseline-only run answers the missing system only, no duplicate lines.
    assert main(["vqa", "--benchmark", "pmc-vqa", "--data", str(FIX / "pmc-vqa"), "--model", "builtin:tiny-llava",
                 "--vgrefine", str(_heads(tmp_path)), "--compare", "--max-new-tokens", "3", "--bootstrap", "100",
                 "--out", str(alone)]) == 0
    assert len(_rows(alone / "predictions_baseline.jsonl")) == 2
    assert [r["response"] for r in _rows(alone / "predictions_vgrefine.jsonl")] == [r["response"] for r in refined]


def test_bad_records_and_images_are_reported_not_fatal(tmp_path):
    data = tmp_path / "slake"
    shutil.copytree(FIX / "slake", data)
    recs = json.loads((data / "test.json").read_text())
    del recs[0]["answer"]
    (data / "test.json").write_text(json.dumps(recs, indent=1, ensure_ascii=False))
    (data / "imgs" / "xmlab2" / "source.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert main(["vqa", "--benchmark", "slake", "--data", str(data), "--model", "builtin:tiny-qwen2_vl",
                 "--max-new-tokens", "2", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["load_errors"]) == 1 and "missing field 'answer'" in results["load_errors"][0]
    assert len(results["errors"]) == 1 and "test.json:" in results["errors"][0]
    assert [r["id"] for r in _rows(out / "predictions_baseline.jsonl")] == ["12"]


def test_usage_errors(tmp_path, capsys):
    assert main(["vqa", "--benchmark", "slake", "--data", str(FIX / "slake"), "--model", "builtin:tiny-llava",
                 "--compare", "--out", str(tmp_path)]) == 2
    assert "--compare needs --vgrefine" in capsys.readouterr().err
    assert main(["vqa", "--benchmark", "slake", "--data", str(tmp_path / "none"), "--model", "builtin:tiny-llava",
                 "--out", str(tmp_path)]) == 2
    assert "data directory not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["vqa", "--help"])


def test_vgrefine_options_reach_the_run(tmp_path):
    out = tmp_path / "out"
    assert main(["vqa", "--benchmark", "vgmed-attribute", "--data", str(FIX / "vgmed"), "--model",
                 "builtin:tiny-llava", "--vgrefine", str(_heads(tmp_path)), "--top-k", "2", "--knockout-layers", "1",
                 "3", "--threshold", "minmax", "--minmax-cutoff", "0.3", "--rows", "question", "--mode", "prefill",
                 "--max-new-tokens", "2", "--out", str(out)]) == 0
    cfg = json.loads((out / "results.json").read_text())["vgrefine"]
    assert cfg["heads"] == [[1, 0], [2, 1]] and cfg["knockout_layers"] == [1, 3]
    assert (cfg["threshold"], cfg["minmax_cutoff"], cfg["rows"], cfg["mode"]) == ("minmax", 0.3, "question", "prefill")
    rows = _rows(out / "predictions_vgrefine.jsonl")
    assert [r["modality"] for r in rows] == ["CT", "Fundus"]
    assert all(0 < r["knocked_out"] < 64 for r in rows)
    assert not (out / "predictions_baseline.jsonl").exists()
