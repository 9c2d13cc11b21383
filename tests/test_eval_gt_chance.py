"""`vgmed-eval grounding --gt box|mask|soft` and the chance levels end to end (issue 25): a tiny model on
a real release with masks (tests/test_release_masks.py's), the published files without masks, and the
report's table and chance band."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from eval_fixtures import make_release
from test_release_masks import released  # noqa: F401  (the module-scoped release with masks)

from vgmed_eval.cli import main as eval_main
from vgmed_eval.report import build_report


def grounding(release, out, *args: str) -> int:
    return eval_main(["grounding", "--release", str(release), "--model", "builtin:tiny-llava", "--out", str(out),
                      "--layers", "0,2", "--bootstrap", "50", "--no-progress", *args])


@pytest.fixture(scope="module")
def runs(released, tmp_path_factory):  # noqa: F811
    out_dir, _ = released
    root = tmp_path_factory.mktemp("gt")
    assert grounding(out_dir, root / "soft", "--gt", "soft", "--chance-draws", "4") == 0
    assert grounding(out_dir, root / "box", "--chance-draws", "4") == 0
    assert grounding(out_dir, root / "none", "--chance-draws", "0") == 0
    return root


def table(path) -> pd.DataFrame:
    return pd.read_parquet(path / "per_layer.parquet").sort_values(["id", "layer"]).reset_index(drop=True)


def test_every_ground_truth_side_by_side(runs):
    soft, box = table(runs / "soft"), table(runs / "box")
    assert (soft["gt"] == "soft").all() and (box["gt"] == "box").all()
    for metric in ("attention_ratio", "kl", "js"):
        assert np.allclose(soft[metric], soft[f"{metric}_soft"])
        assert np.allclose(box[metric], box[f"{metric}_box"])
        for kind in ("box", "mask", "soft"):  # same maps, same cells, whichever --gt was primary
            assert np.allclose(soft[f"{metric}_{kind}"], box[f"{metric}_{kind}"])
    assert soft["attention_ratio_mask"].notna().all()
    summary = json.loads((runs / "soft" / "summary.json").read_text())
    assert summary["protocol"]["gt"] == "soft" and summary["gt"]["kind"] == "soft"
    assert set(summary["gt"]["compare"]) == {"box", "mask", "soft"}
    mean_mask = box.groupby("layer")["attention_ratio_mask"].mean()
    for layer, value in mean_mask.items():
        assert summary["gt"]["compare"]["mask"]["overall"]["attention_ratio"][str(layer)] == pytest.approx(value,
                                                                                                          abs=1e-6)


def test_chance_levels_in_the_table_and_the_summary(runs):
    box, none = table(runs / "box"), table(runs / "none")
    assert (box["chance_draws"] == 4).all() and (none["chance_draws"] == 0).all()
    assert np.allclose(box["attention_ratio_uniform"], 1.0)
    assert box["attention_ratio_random"].notna().all() and none["attention_ratio_random"].isna().all()
    for metric in ("attention_ratio", "kl", "js"):  # drawing chance regions never changes the measurement
        assert np.array_equal(box[metric].to_numpy(), none[metric].to_numpy())
    summary = json.loads((runs / "box" / "summary.json").read_text())
    chance = summary["chance"]
    assert (chance["kind"], chance["draws"], chance["seed"]) == ("box", 4, 0)
    for layer, group in box.groupby("layer"):
        random = chance["overall"]["random"]["attention_ratio"][str(layer)]
        assert random["mean"] == pytest.approx(group["attention_ratio_random"].mean(), abs=1e-6)
        assert random["ci_low"] <= random["mean"] <= random["ci_high"]
        expected = group["attention_ratio"].mean() / group["attention_ratio_random"].mean()
        assert chance["overall"]["times_chance"]["attention_ratio"][str(layer)] == pytest.approx(expected, abs=1e-5)
    release = summary["release"]  # the draws are seeded: a rerun draws the same regions
    assert grounding(release, runs / "again", "--chance-draws", "4") == 0
    again = table(runs / "again")
    assert np.array_equal(again["attention_ratio_random"].to_numpy(), box["attention_ratio_random"].to_numpy())


def test_report_shows_box_mask_soft_and_chance(runs, tmp_path):
    build_report(runs / "soft", tmp_path / "report", None, samples=0, layer=None)
    index = (tmp_path / "report" / "index.md").read_text()
    assert "## Ground truth and chance, layer" in index
    row = next(line for line in index.splitlines() if line.startswith("| medical |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4] == "soft" and all(c != "-" for c in cells[1:])
    assert (tmp_path / "report" / "attention_ratio_by_layer.png").is_file()


def test_mask_ground_truth_on_a_release_without_masks(tmp_path):
    release = make_release(tmp_path / "published", published=True, errors=False)
    assert grounding(release, tmp_path / "out", "--gt", "mask") == 1  # no question has a mask: nothing scored
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert errors and {e["kind"] for e in errors} == {"no_mask"}
    assert "--gt mask: the record has no mask" in errors[0]["error"]
    assert grounding(release, tmp_path / "soft", "--gt", "soft") == 0  # soft falls back to the boxes
    soft = table(tmp_path / "soft")
    assert "attention_ratio_mask" not in soft and np.allclose(soft["attention_ratio"], soft["attention_ratio_soft"])
    summary = json.loads((tmp_path / "soft" / "summary.json").read_text())
    assert set(summary["gt"]["compare"]) == {"box", "soft"}
