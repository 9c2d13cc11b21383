"""The README's main command, minus the Label Studio server (covered by test_full_chain.py)."""

from __future__ import annotations

import json
import sqlite3

from vgmed_build import cli


def _counts(build):
    with sqlite3.connect(build / "catalog.sqlite") as c:
        return {t: c.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("images", "regions", "drafts")}


def test_demo_runs_the_chain_on_the_bundled_sample_and_reruns_idempotently(tmp_path, capsys):
    build = tmp_path / "demo"
    assert cli.main(["demo", "--build", str(build), "--no-labelstudio"]) == 0
    first = _counts(build)
    assert first["regions"] > 0 and first["drafts"] >= first["regions"]
    release = build / "release-preview"
    manifest = json.loads((release / "manifest.json").read_text())
    assert manifest["preview"] is True
    card = (release / "README.md").read_text().splitlines()
    assert card[0] == "---" and "PREVIEW" in card[card.index("---", 1) + 1]  # banner right below the YAML header
    assert (build / "eval" / "report" / "attention_ratio_by_layer.png").stat().st_size > 0
    # The bundled natural-image control (COCO layout) sits in the release's COCO files, and the report
    # compares it with the medical questions (the paper's Figure 3).
    assert set(manifest["configs"]) >= {"control_localization", "control_attribute"}
    assert manifest["counts"]["by_modality"]["Natural"] > 0
    control = json.loads((build / "eval" / "grounding" / "control" / "summary.json").read_text())
    medical = json.loads((build / "eval" / "grounding" / "summary.json").read_text())
    assert control["n_ok"] > 0 and medical["n_ok"] > 0
    natural = [json.loads(line) for name in ("COCO_localization.jsonl", "COCO_attribute.jsonl")
               for line in (release / name).open() if line.strip()]
    assert any(r.get("absent") for r in natural)  # "is there a ... ?" answered no: nothing to ground
    assert control["n_questions"] == sum(1 for r in natural if not r.get("absent"))
    assert "Medical vs natural images" in (build / "eval" / "report" / "index.md").read_text()
    heads = json.loads((build / "eval" / "heads.json").read_text())
    assert heads["heads"] and isinstance(heads["knockout_layer"], int)
    vqa = json.loads((build / "eval" / "vqa" / "results.json").read_text())
    assert set(vqa["systems"]) == {"baseline", "vgrefine"}
    # A second run reuses everything: nothing is ingested or drafted twice.
    assert cli.main(["demo", "--build", str(build), "--no-labelstudio"]) == 0
    assert _counts(build) == first
    assert "0 ingested" in capsys.readouterr().out
