"""`vgmed-build export`: Parquet and VQA JSON round-trip the release records."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from release_fixtures import make_build

from vgmed_build.catalog import open_catalog
from vgmed_build.cli import main
from vgmed_build.export import ExportError, export_parquet, export_vqa_json
from vgmed_build.release import ReleaseOptions, build_release
from vgmed_build.release_format import ATTRIBUTE_FILE, LOCALIZATION_FILE


@pytest.fixture(scope="module")
def rel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    build, decisions, _ = make_build(root)
    with open_catalog(build, create=False) as catalog:
        build_release(catalog, root / "rel", decisions, ReleaseOptions(created="2026-01-01T00:00:00Z"))
    return root / "rel"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_parquet_round_trip(rel, tmp_path):
    written = export_parquet(rel, tmp_path / "pq", embed_images=True)
    assert [p.name for p in written] == ["VGMED_localization.parquet", "VGMED_attribute.parquet"]
    for name, path in zip((LOCALIZATION_FILE, ATTRIBUTE_FILE), written, strict=True):
        rows = pq.read_table(path).to_pylist()
        records = read_jsonl(rel / name)
        assert [{k: v for k, v in r.items() if k != "image_bytes"} for r in rows] == records
        for row in rows:
            assert row["image_bytes"] == (rel / row["image"]).read_bytes()


def test_vqa_json(rel, tmp_path):
    out = export_vqa_json(rel, tmp_path / "exports" / "vgmed_vqa.json")
    items = json.loads(out.read_text())
    records = read_jsonl(rel / ATTRIBUTE_FILE)
    assert [(i["id"], i["question"], i["answer"]) for i in items] == [
        (r["id"], r["question"], r["answer"]) for r in records
    ]
    assert {i["q_type"] for i in items} == {"attribute", "position"}
    for item, record in zip(items, records, strict=True):
        assert len(item["images"]) == 1
        assert (out.parent / item["images"][0]).resolve() == (rel / record["image"]).resolve()
        assert (out.parent / item["images"][0]).is_file()


def test_cli_export_defaults_and_refusals(rel, capsys):
    assert main(["export", str(rel), "--format", "vqa-json"]) == 0
    assert rel.with_name("rel-vqa.json").is_file()
    assert main(["export", str(rel), "--format", "parquet"]) == 0
    assert (rel.with_name("rel-parquet") / "VGMED_attribute.parquet").is_file()
    assert main(["export", str(rel), "--format", "parquet", "--out", str(rel / "pq")]) == 2
    assert not (rel / "pq").exists()
    inside = (rel / "pq").resolve()
    assert capsys.readouterr().err == f"error: --out {inside} lies inside the release; choose a path outside it\n"


@pytest.mark.parametrize("fmt, name", [("parquet", "out-parquet"), ("vqa-json", "sub/out.json")])
def test_export_of_a_wrong_path_leaves_nothing_behind(tmp_path, capsys, fmt, name):
    not_a_release = tmp_path / "photos"
    not_a_release.mkdir()
    out = tmp_path / name
    assert main(["export", str(not_a_release), "--format", fmt, "--out", str(out)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # no empty folder or file left


def test_export_needs_a_valid_release(rel, tmp_path):
    with pytest.raises(ExportError, match="no manifest.json"):
        export_vqa_json(tmp_path, tmp_path / "x.json")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{}")
    lines = (rel / ATTRIBUTE_FILE).read_text().splitlines()
    (broken / ATTRIBUTE_FILE).write_text(lines[0] + "\n" + json.dumps({"id": "x"}) + "\n")
    with pytest.raises(ExportError, match=r"VGMED_attribute.jsonl:2: "):
        export_vqa_json(broken, tmp_path / "x.json")
