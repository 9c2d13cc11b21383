"""The Python API (vgmed_build.api, vgmed_eval.api) running docs/api.md's example on the bundled sample:
the same outcomes as the commands on the same input, and one bad input per function."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import shutil
from pathlib import Path

import pytest

import vgmed_build
from vgmed_build import api, cli
from vgmed_build.catalog import CatalogError, open_catalog
from vgmed_build.config import ConfigError
from vgmed_build.drafting.llm import LlmConfig
from vgmed_build.drafting.plan import GenerateOptions
from vgmed_build.export import ExportError
from vgmed_build.release import ReleaseError

SAMPLE = Path(vgmed_build.__file__).parent / "sample" / "sources.toml"
CREATED = "2026-01-01T00:00:00Z"
TINY = "builtin:tiny-qwen2_5_vl"


def _cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(argv)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """docs/api.md's dataset steps through the API, and the same steps through the commands."""
    root = tmp_path_factory.mktemp("api")
    build, by_cli = root / "build", root / "cli"
    result = {"build": build, "cli": by_cli, "root": root}
    result["ingest"] = api.ingest(build, sources=SAMPLE)
    result["generate"] = api.generate(build, options=GenerateOptions(position_questions=True))
    result["release"] = api.release(build, out=build / "preview", include_unreviewed=True, created=CREATED)
    result["cli_ingest"] = _cli(["ingest", "--build", str(by_cli), "--sources", str(SAMPLE), "--no-progress"])
    result["cli_generate"] = _cli(["generate", "--build", str(by_cli), "--position-questions", "--no-progress"])
    result["cli_release"] = _cli(["release", "--build", str(by_cli), "--out", str(by_cli / "preview"),
                                  "--include-unreviewed", "--created", CREATED])
    return result


def test_ingest_generate_release_count_what_the_commands_count(chain):
    report, (code, out) = chain["ingest"], chain["cli_ingest"]
    assert code == 0 and not report.errors
    items = int(re.search(r"ingest: (\d+) items: (\d+) ingested", out).group(1))
    assert report.items == report.done == items > 0
    with open_catalog(chain["build"]) as a, open_catalog(chain["cli"]) as b:
        assert a.image_and_region_counts() == b.image_and_region_counts()
        regions = a.image_and_region_counts()[1]
    stats = chain["generate"]
    assert chain["cli_generate"][0] == 0
    assert stats.regions == regions and stats.errors == 0 and stats.ok > regions
    lines = {}
    for build in (chain["build"], chain["cli"]):
        path = chain["root"] / f"{build.name}.drafts.jsonl"
        assert _cli(["drafts", "--build", str(build), "--out", str(path), "--status", "ok"])[0] == 0
        lines[build.name] = path.read_text().splitlines()
    assert len(lines["build"]) == len(lines["cli"]) == stats.ok
    # The release: the same bytes as the command writes for the same build and options.
    rel, (code, out) = chain["release"], chain["cli_release"]
    assert code == 0 and not rel.skipped
    assert f"{rel.counts['records']} questions on {rel.counts['images']} images" in out
    ours, theirs = chain["build"] / "preview", chain["cli"] / "preview"
    names = sorted(p.name for p in ours.glob("*.jsonl"))
    assert names == sorted(p.name for p in theirs.glob("*.jsonl")) and "VGMED_attribute.jsonl" in names
    for name in names:
        assert (ours / name).read_bytes() == (theirs / name).read_bytes()
    assert json.loads((ours / "manifest.json").read_text())["preview"] is True


def test_validate_and_read_release(chain):
    preview = chain["build"] / "preview"
    report = api.validate(preview)
    assert report.problems == [] and report.kind == "vgmed"
    records = api.read_release(preview)
    n_lines = {p.name: sum(1 for line in p.open() if line.strip()) for p in preview.glob("*.jsonl")}
    assert {name: len(recs) for name, recs in records.items()} == n_lines
    assert report.n_records == sum(n_lines.values()) == chain["release"].counts["records"]
    first = records["VGMED_localization.jsonl"][0]
    assert (preview / first["image"]).is_file() and first["review"]["status"] == "unreviewed"


def test_grounding_heads_and_vgrefine_with_a_tiny_model(chain):
    pytest.importorskip("torch")
    from vgmed_eval import api as eval_api

    preview, out = chain["build"] / "preview", chain["root"] / "eval"
    model = eval_api.load_model(TINY)
    summary = eval_api.grounding(model, preview, out, limit=6, batch_size=4)
    written = json.loads((out / "summary.json").read_text())
    assert written["n_questions"] == summary["n_questions"] == 6 and written["n_ok"] == 6

    def numbers(value):
        if isinstance(value, dict):
            return [n for v in value.values() for n in numbers(v)]
        if isinstance(value, list):
            return [n for v in value for n in numbers(v)]
        return [value] if isinstance(value, float) else []

    assert numbers(written) and all(math.isfinite(n) for n in numbers(written))
    chosen = eval_api.heads(out, top_k=3)
    assert len(chosen["heads"]) == 3 and 0 <= chosen["knockout_layer"] < model.n_layers
    items = eval_api.questions(preview, limit=3)
    assert [it.id for it in items] == [r["id"] for r in api.read_release(preview)["VGMED_attribute.jsonl"][:3]]
    answers = eval_api.vgrefine(model, items, heads=chosen, max_new_tokens=4)
    assert [a.id for a in answers] == [it.id for it in items]
    for a in answers:
        assert a.error is None and isinstance(a.vgrefine, str) and isinstance(a.baseline, str)
        # The 80th-percentile triage knocks out the cells strictly below the quantile: ceil(0.8 (n - 1)).
        assert a.knocked_out == math.ceil(0.8 * (a.grid_cells - 1))


# ---------------------------------------------------------------- one bad input per function


def test_ingest_refuses_a_missing_source_before_making_the_build(tmp_path, capsys):
    flag = f"msd:{tmp_path / 'nowhere'}"
    with pytest.raises(ConfigError, match=r"--source msd:.*nowhere: no such file or folder") as raised:
        api.ingest(tmp_path / "b", source=[flag])
    assert not (tmp_path / "b").exists()
    # The command runs the same function: the same message, exit 2.
    assert cli.main(["ingest", "--build", str(tmp_path / "b"), "--source", flag]) == 2
    assert capsys.readouterr().err == f"error: {raised.value}\n"


def test_generate_names_the_bad_option_and_the_missing_build(chain, tmp_path):
    bad = GenerateOptions(drafter="llm", llm=LlmConfig(model="m", concurrency=0))
    with pytest.raises(ValueError, match="--concurrency must be a finite number >= 1"):
        api.generate(chain["build"], options=bad)
    with pytest.raises(CatalogError, match="no build catalog"):
        api.generate(tmp_path / "empty")


def test_release_leaves_a_folder_it_did_not_write_alone(chain, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ReleaseError, match="is not a vgmed release.*nothing was changed"):
        api.release(chain["build"], out=mine, include_unreviewed=True)
    assert (mine / "notes.txt").read_text() == "keep" and len(list(mine.iterdir())) == 1


def test_validate_and_read_release_name_what_is_wrong(chain, tmp_path):
    with pytest.raises(NotADirectoryError, match="no such directory"):
        api.validate(tmp_path / "missing")
    copy = tmp_path / "copy"
    shutil.copytree(chain["build"] / "preview", copy)
    with (copy / "VGMED_attribute.jsonl").open("a") as fh:
        fh.write("{}\n")
    assert any(p.file == "VGMED_attribute.jsonl" for p in api.validate(copy).problems)
    with pytest.raises(ExportError, match=r"differs from its manifest\.json.*VGMED_attribute\.jsonl"):
        api.read_release(copy)


def test_eval_functions_name_the_bad_input(chain, tmp_path):
    pytest.importorskip("torch")
    from vgmed_eval import api as eval_api
    from vgmed_eval.vqa.benchmarks import BenchmarkError

    preview = chain["build"] / "preview"
    with pytest.raises(ValueError, match="unknown tiny family 'nosuch'"):
        eval_api.load_model("builtin:tiny-nosuch")
    with pytest.raises(ValueError, match=r"unknown question type\(s\) \['where'\]"):
        eval_api.grounding(TINY, preview, tmp_path / "g", q_types=["where"])
    assert not (tmp_path / "g").exists()
    with pytest.raises(ValueError, match="missing grounding results"):
        eval_api.heads(tmp_path / "g")
    with pytest.raises(BenchmarkError, match="VGMED release file not found"):
        eval_api.questions(tmp_path)
    items = eval_api.questions(preview, limit=1)
    with pytest.raises(ValueError, match=r"heads \(99,0\).*outside"):
        eval_api.vgrefine(TINY, items, heads={"knockout_layer": 0, "heads": [[99, 0]]})
