"""A case removed from its source leaves the next build and release (issue 12.4: withdrawn consent)."""

from __future__ import annotations

import json
from pathlib import Path

from ingest_fixtures import LABELS, mni, sources_toml, write_pair
from release_fixtures import add_review_event

from vgmed_build.catalog import open_catalog
from vgmed_build.cli import main
from vgmed_build.identifiers import item_pseudonym

CREATED = "2026-01-01T00:00:00Z"


def run(*args: str) -> int:
    return main(list(args))


def release_items(out: Path) -> set[str]:
    """Source images of a release's records, by the image ids of their regions (records carry no item)."""
    ids = set()
    for name in ("VGMED_localization.jsonl", "VGMED_attribute.jsonl"):
        ids |= {json.loads(line)["image"] for line in (out / name).read_text().splitlines()}
    return ids


def test_a_deleted_case_leaves_regions_drafts_and_release_but_not_the_review_history(tmp_path, capsys, caplog):
    image, labels, affine = mni()
    src = tmp_path / "pairs"
    for case in ("a", "b", "c"):
        write_pair(src, case, image, labels, affine)
    build = tmp_path / "build"
    flags = ["--build", str(build)]
    # named structures: drafts about unnamed ones (label_1) are rejected by lint, and nothing would be released
    names = {str(value): name for value, name in LABELS.items()}
    cfg = sources_toml(tmp_path / "sources.toml",
                       [{"name": "pairs", "kind": "nifti", "path": str(src), "modality": "MRI", "labels": names}])
    assert run("ingest", *flags, "--sources", str(cfg), "--no-progress") == 0
    assert run("generate", *flags) == 0
    with open_catalog(build, create=False) as catalog:
        images_of_b = {p for (p,) in catalog.conn.execute("SELECT path FROM images WHERE item_key='b.nii.gz'")}
        regions_of_b = {r["id"] for r in catalog.regions() if r["source"]["item"] == "b.nii.gz"}
        drafts = [json.loads(r) for (r,) in catalog.conn.execute("SELECT record_json FROM drafts")]
        reviewed = next(d for d in drafts if d["region_id"] in regions_of_b)
        add_review_event(catalog, reviewed, "r-aaaaaaaa", "accept", 1)
    assert images_of_b and regions_of_b
    before = tmp_path / "before"
    assert run("release", *flags, "--out", str(before), "--include-unreviewed", "--created", CREATED) == 0
    release_ids = {Path(p).stem for p in release_items(before)}
    assert {Path(p).stem for p in images_of_b} <= release_ids

    for f in src.glob("b*.nii.gz"):
        f.unlink()
    # --keep-missing: nothing leaves
    capsys.readouterr()
    assert run("ingest", *flags, "--sources", str(cfg), "--no-progress",
               "--keep-missing") == 0
    out = capsys.readouterr().out
    assert "0 withdrawn (no longer in their source), 1 missing kept" in out
    assert "kept 1 item(s) no longer in the source (--keep-missing)" in caplog.text
    with open_catalog(build, create=False) as catalog:
        assert regions_of_b <= {r["id"] for r in catalog.regions()}
    # default: withdrawn, counted and logged
    assert run("ingest", *flags, "--sources", str(cfg), "--no-progress") == 0
    assert "1 withdrawn (no longer in their source)" in capsys.readouterr().out
    assert f"withdrew {item_pseudonym('pairs', 'b.nii.gz')} (no longer in the source)" in caplog.text
    assert "b.nii.gz" not in caplog.text.split("withdrew", 1)[1]  # logs are shared: no source path
    assert "1 reviewed draft(s) stay in the review history" in caplog.text
    with open_catalog(build, create=False) as catalog:
        assert not regions_of_b & {r["id"] for r in catalog.regions()}
        left = {d for (d,) in catalog.conn.execute("SELECT region_id FROM drafts")}
        assert not regions_of_b & left
        assert catalog.conn.execute("SELECT draft_id FROM review_events").fetchall() == [(reviewed["id"],)]
    assert not any((build / p).exists() for p in images_of_b)
    after = tmp_path / "after"
    assert run("release", *flags, "--out", str(after), "--include-unreviewed", "--created", CREATED) == 0
    assert release_items(after) == {p for p in release_items(before) if Path(p).stem not in
                                    {Path(q).stem for q in images_of_b}}
    assert run("validate", str(after)) == 0


def test_an_unmounted_source_withdraws_nothing(tmp_path, capsys):
    image, labels, affine = mni()
    src = tmp_path / "pairs"
    write_pair(src, "a", image, labels, affine)
    build = tmp_path / "build"
    args = ["ingest", "--build", str(build), "--source", f"nifti:{src}", "--modality", "MRI", "--no-progress"]
    assert run(*args) == 0
    for f in src.iterdir():
        f.unlink()  # an empty mount point
    assert run(*args) == 1
    assert "nothing was withdrawn (is it mounted?)" in capsys.readouterr().err
    src.rmdir()  # no mount point at all: the command cannot run, nothing changes
    assert run(*args) == 2
    with open_catalog(build, create=False) as catalog:
        assert catalog.item_keys("pairs") == ["a.nii.gz"] and len(list(catalog.regions())) == 4
