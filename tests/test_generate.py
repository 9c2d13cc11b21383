"""`vgmed-build generate` with the offline template drafter, and `vgmed-build drafts`."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil

import numpy as np
import pytest
from drafting_fixtures import make_catalog, run_cli
from PIL import Image

from vgmed_build.catalog import open_catalog
from vgmed_build.drafting.export import export_drafts
from vgmed_build.drafting.generate import GenerateOptions, run_generate
from vgmed_build.drafting.messages import boxed_image_data_url
from vgmed_build.drafting.templates import TemplateError, load_prompts, sha256_text
from vgmed_build.resources import resource_dir, schema_errors


def rows(cat) -> list[tuple]:
    return cat.conn.execute("SELECT id, status, reason, record_json FROM drafts ORDER BY id").fetchall()


def test_templates_offline_draft_every_region(tmp_path):
    cat = make_catalog(tmp_path / "b", n_images=2)
    stats = run_generate(cat, GenerateOptions(position_questions=True, progress=False))
    drafts = list(export_drafts(cat))
    regions = {r["id"]: r for r in cat.regions()}
    assert stats.regions == len(regions) == 10 and stats.requests == 0
    by_type: dict[str, list[dict]] = {}
    for d in drafts:
        by_type.setdefault(d["q_type"], []).append(d)
        assert not schema_errors("draft", d), schema_errors("draft", d)
        region = regions[d["region_id"]]
        slot = d["slot"]
        assert d["id"] == hashlib.sha256(f"{region['id']}|{d['q_type']}|{slot}".encode()).hexdigest()[:16]
        assert d["boxes"] == region["boxes"] and d["image"] == region["image"]
        assert d["provenance"]["drafter"] == "templates" and d["provenance"]["model"] is None
    assert len(by_type["localization"]) == 10 and len(by_type["attribute"]) == 10
    prompts = load_prompts()
    for d in by_type["localization"]:
        assert d["answer"] == "yes" and d["status"] == "ok"
        tpl = prompts.localization[d["slot"]]
        assert d["question"] == tpl.ask_about(d["display_name"]) and "{" not in d["question"]
        assert d["provenance"]["template_hash"] == sha256_text(tpl.text)
    # The sources file's display name is used, not the raw label ("gm" -> "grey matter").
    gm = [d for d in drafts if d["label"] == "gm"]
    assert gm and all("grey matter" in d["question"] and " gm " not in d["question"] for d in gm)
    # Position questions only for left/right regions, answered from geometry; a name holding the
    # side ("left kidney") would make the question trivial, so none is drafted for it.
    positions = {regions[d["region_id"]]["label"]: d for d in by_type["position"]}
    assert set(positions) == {"liver", "spleen"}
    assert positions["liver"]["answer"] == "right" and positions["spleen"]["answer"] == "left"
    # Localization templates rotate over regions (not always the first phrasing).
    assert len({d["slot"] for d in by_type["localization"]}) > 1


def test_attribute_answers_follow_geometry(tmp_path):
    targets = [
        ("tumor", "tumour", [], "unknown", "lesion", [50, 50, 60, 58]),  # 80 px of 16384: small
        ("liver", "liver", [], "right", "organ", [0, 0, 100, 100]),  # 61%: large
        ("aorta", "aorta", [], "midline", "vessel", [60, 10, 70, 110]),  # 10 x 100: elongated
    ]
    cat = make_catalog(tmp_path / "b", targets=targets)
    run_generate(cat, GenerateOptions(attributes_per_region=4, localization_per_region=0, progress=False))
    answers = {(d["label"], d["provenance"]["params"]["attribute"]): d["answer"] for d in export_drafts(cat)}
    assert answers[("tumor", "size")] == "small"
    assert answers[("tumor", "count")] == "one"
    assert answers[("liver", "size")] == "large"
    assert answers[("aorta", "shape")] == "elongated"
    assert answers[("tumor", "shape")] == "compact"
    # lesion profile has 3 attributes; the vessel profile 3; the generic one 4, of which the liver (its
    # box touches the image edge, and it spans the image's middle) gets size only.
    labels = [d["label"] for d in export_drafts(cat)]
    assert labels.count("tumor") == 3 and labels.count("aorta") == 3 and labels.count("liver") == 1


def test_rerun_redoes_nothing_and_force_picks_up_edited_templates(tmp_path):
    cat = make_catalog(tmp_path / "b")
    run_generate(cat, GenerateOptions(progress=False))
    before = rows(cat)
    stats = run_generate(cat, GenerateOptions(progress=False))
    assert rows(cat) == before  # byte-identical, no new rows
    assert stats.drafts_skipped == len(before) and stats.ok == stats.rejected == 0

    prompts = tmp_path / "prompts"
    shutil.copytree(resource_dir("prompts"), prompts)
    loc = prompts / "localization.txt"
    lines = loc.read_text().splitlines()
    edited = [
        ln.replace("in the image?", "on this picture?") if not ln.startswith("#") else ln for ln in lines
    ]
    loc.write_text("\n".join(edited) + "\n")
    run_generate(cat, GenerateOptions(progress=False, prompts_dir=prompts, force=True))
    after = {r[0]: json.loads(r[3]) for r in rows(cat)}
    assert len(after) == len(before)
    changed = [
        d for d in after.values() if d["q_type"] == "localization" and "on this picture?" in d["question"]
    ]
    edited_prompts = load_prompts(prompts)
    assert changed
    for d in changed:
        tpl = edited_prompts.localization[d["slot"]]
        assert "on this picture?" in tpl.text and d["provenance"]["template_hash"] == sha256_text(tpl.text)


def test_broken_prompts_folder_is_a_clear_error(tmp_path):
    prompts = tmp_path / "prompts"
    shutil.copytree(resource_dir("prompts"), prompts)
    (prompts / "localization.txt").write_text("Is there a {organ} in the image?\n")
    with pytest.raises(TemplateError, match=r"localization\[0\].*\{obj\}"):
        load_prompts(prompts)
    (prompts / "localization.txt").write_text("Is there a {obj} in the image?\n")
    (prompts / "attribute_templates.yaml").write_text(
        "attributes:\n  size: {question: 'How big is the {obj}?'}\n"
    )
    with pytest.raises(TemplateError, match="attribute_templates.yaml.*size"):
        load_prompts(prompts)


def test_boxed_image_has_the_box_drawn_in_red(tmp_path):
    cat = make_catalog(tmp_path / "b")
    region = next(r for r in cat.regions() if r["label"] == "liver")
    url = boxed_image_data_url(cat.build_dir, region)
    assert url.startswith("data:image/png;base64,")
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
    x0, y0, x1, y1 = region["boxes"][0]
    red = (img[..., 0] == 255) & (img[..., 1] == 0) & (img[..., 2] == 0)
    assert red[y0, x0] and red[y1 - 1, x1 - 1] and red[(y0 + y1) // 2, x0]
    assert not red[(y0 + y1) // 2, (x0 + x1) // 2]  # inside untouched
    assert not red[y0 - 3, x0 - 3]  # outside untouched


def test_cli_generate_and_drafts_export(tmp_path):
    build = tmp_path / "b"
    make_catalog(build, n_images=2).close()
    res = run_cli("generate", "--build", str(build), "--position-questions")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("generate: ") and "drafts:" in res.stdout   # the result: stdout (docs/cli.md)
    out = tmp_path / "drafts.jsonl"
    res = run_cli("drafts", "--build", str(build), "--out", str(out), "--status", "all")
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"drafts: 24 records -> {out}\n"
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 24  # 10 localization + 10 attribute + 4 position (2 lateral targets x 2)
    for rec in records:
        assert not schema_errors("draft", rec)
    ok = run_cli("drafts", "--build", str(build), "--status", "ok")
    rejected = run_cli("drafts", "--build", str(build), "--status", "rejected")
    n_ok, n_rej = len(ok.stdout.splitlines()), len(rejected.stdout.splitlines())
    assert all(json.loads(line) for line in ok.stdout.splitlines())      # records on stdout: nothing else there
    assert n_ok + n_rej == 24
    assert all(json.loads(line)["status"] == "rejected" for line in rejected.stdout.splitlines())
    with open_catalog(build) as cat:
        assert cat.conn.execute("SELECT COUNT(*) FROM drafts").fetchone()[0] == 24
    missing = run_cli("generate", "--build", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no build catalog" in missing.stderr
    no_model = run_cli("generate", "--build", str(build), "--drafter", "llm")
    assert no_model.returncode == 2 and "--model" in no_model.stderr


def test_help_explains_every_option():
    res = run_cli("generate", "--help")
    assert res.returncode == 0
    for opt in (
        "--drafter",
        "--paraphrase",
        "--position-questions",
        "--concurrency",
        "--max-requests",
        "--max-cost-usd",
        "--price-in",
        "--no-json-schema",
        "--regenerate-rejected",
        "--with-image",
    ):
        assert opt in res.stdout
