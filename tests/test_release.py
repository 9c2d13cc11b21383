"""`vgmed-build release`: record building, selection by review, reproducibility, atomic writes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from disk_fixtures import fill
from PIL import Image
from release_fixtures import PLANTED_PNG_TEXT, add_review_event, find_draft, make_build, read_jsonl, tree_bytes

from vgmed_build.catalog import open_catalog
from vgmed_build.cli import build_parser, main
from vgmed_build.identifiers import Forbidden
from vgmed_build.pngmeta import metadata_chunks
from vgmed_build.release import ReleaseError, ReleaseOptions, build_release, review_facts
from vgmed_build.release_format import ATTRIBUTE_FILE, LOCALIZATION_FILE, encode_boxes
from vgmed_build.resources import schema_errors
from vgmed_build.validate import validate_release

CREATED = "2026-02-03T04:05:06Z"


@pytest.fixture()
def build(tmp_path):
    return make_build(tmp_path)


def release(build_dir: Path, out: Path, decisions, **options) -> Path:
    options.setdefault("created", CREATED)
    with open_catalog(build_dir, create=False) as catalog:
        build_release(catalog, out, decisions, ReleaseOptions(**options))
    return out


# ---------------------------------------------------------------- pure parts


def test_box_conventions_match_mask_extremes():
    """A mask whose only pixels are columns 5..7, rows 2..3: exclusive edges vs published max indices."""
    mask = np.zeros((10, 12), bool)
    mask[2:4, 5:8] = True
    ys, xs = np.nonzero(mask)
    published = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]  # the published recipe
    exclusive = [[5, 2, 8, 4]]
    assert encode_boxes(exclusive, "exclusive") == exclusive
    assert encode_boxes(exclusive, "published") == [published]
    with pytest.raises(ValueError):
        encode_boxes(exclusive, "xywh")


def test_review_selection(build):
    _, decisions, drafts = build
    decision = next(iter(decisions.values()))
    accepted = review_facts(decision, include_unreviewed=False)
    assert accepted == {"status": "accepted", "n_reviewers": 2, "agreement": 1.0, "edited": False}
    rejected = dataclasses.replace(decision, status="rejected", agreement=0.5)
    pending = dataclasses.replace(decision, status="pending", n_reviewers=1)
    assert review_facts(rejected, False) is None
    assert review_facts(rejected, True) is None  # previews never contain rejected items
    assert review_facts(pending, False) is None
    assert review_facts(None, False) is None
    assert review_facts(pending, True)["status"] == "pending"
    assert review_facts(None, True) == {
        "status": "unreviewed",
        "n_reviewers": 0,
        "agreement": 0.0,
        "edited": False,
    }


# ---------------------------------------------------------------- the release directory


def test_release_contents(build, tmp_path):
    build_dir, decisions, drafts = build
    liver_attr = find_draft(drafts, "liver", "attribute")
    spleen_loc = find_draft(drafts, "spleen", "localization")
    tumour_attr = find_draft(drafts, "tumour", "attribute")
    decisions[liver_attr["id"]] = dataclasses.replace(
        decisions[liver_attr["id"]],
        question="Is the liver's margin smooth?",
        answer="smooth",
        boxes=[[11, 21, 49, 59]],
        edited=True,
        agreement=0.5,
    )
    decisions[spleen_loc["id"]] = dataclasses.replace(decisions[spleen_loc["id"]], status="rejected")
    decisions[tumour_attr["id"]] = dataclasses.replace(decisions[tumour_attr["id"]], status="disputed")
    out = release(build_dir, tmp_path / "rel", decisions)

    loc, attr = read_jsonl(out / LOCALIZATION_FILE), read_jsonl(out / ATTRIBUTE_FILE)
    ids = [r["id"] for r in loc + attr]
    assert spleen_loc["id"] not in ids and tumour_attr["id"] not in ids
    assert len(ids) == len(drafts) - 2
    assert [r["id"] for r in loc] == sorted(r["id"] for r in loc)
    assert {r["q_type"] for r in loc} == {"localization"}
    assert {r["q_type"] for r in attr} == {"attribute", "position"}
    for record in loc + attr:
        assert schema_errors("release_record", record) == []
        assert record["review"]["status"] == "accepted"
    edited = next(r for r in attr if r["id"] == liver_attr["id"])
    assert (edited["question"], edited["answer"], edited["bbox"]) == (
        "Is the liver's margin smooth?",
        "smooth",
        [[11, 21, 49, 59]],
    )
    assert edited["review"] == {"status": "accepted", "n_reviewers": 2, "agreement": 0.5, "edited": True}
    position = next(r for r in attr if r["q_type"] == "position" and r["label"] == "spleen")
    assert position["answer"] == "left" and position["side"] == "left"

    # images: only referenced ones, named by image id, metadata stripped, pixels unchanged
    images = sorted(p.name for p in (out / "images").iterdir())
    assert images == sorted({Path(r["image"]).name for r in loc + attr})
    with open_catalog(build_dir, create=False) as catalog:
        for image_id, path in catalog.conn.execute("SELECT id, path FROM images"):
            released = out / "images" / f"{image_id}.png"
            assert metadata_chunks(released.read_bytes()) == []
            assert PLANTED_PNG_TEXT.encode() not in released.read_bytes()
            from PIL import Image

            assert np.array_equal(np.asarray(Image.open(released)), np.asarray(Image.open(build_dir / path)))

    manifest = json.loads((out / "manifest.json").read_text())
    assert schema_errors("manifest", manifest) == []
    assert manifest["created"] == CREATED and manifest["preview"] is False
    assert manifest["counts"]["by_q_type"] == {"attribute": 2, "localization": 2, "position": 2}
    assert manifest["counts"]["by_modality"] == {"CT": 5, "MRI": 1}
    assert manifest["counts"]["by_source"] == {"ct-sample": 5, "mr-sample": 1}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    for rel, entry in manifest["files"].items():
        assert entry["sha256"] == hashlib.sha256((out / rel).read_bytes()).hexdigest()

    card = (out / "README.md").read_text()
    assert card.splitlines()[0] == "---"
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["license"] == "cc-by-4.0"
    assert {c["config_name"]: c["data_files"][0]["path"] for c in meta["configs"]} == {
        "localization": LOCALIZATION_FILE,
        "attribute": ATTRIBUTE_FILE,
    }
    assert "exclusive" in card and "x1 = 6" in card
    assert validate_release(out).problems == []


def test_published_convention(build, tmp_path):
    build_dir, decisions, drafts = build
    out = release(build_dir, tmp_path / "rel", decisions, bbox_convention="published")
    liver = next(r for r in read_jsonl(out / LOCALIZATION_FILE) if r["label"] == "liver")
    assert liver["bbox"] == [[10, 20, 49, 59]] and liver["bbox_convention"] == "xyxy_inclusive"
    assert json.loads((out / "manifest.json").read_text())["bbox_convention"] == "xyxy_inclusive"
    assert "inclusive" in (out / "README.md").read_text()
    assert validate_release(out).problems == []


def test_preview_release_says_so(build, tmp_path):
    build_dir, decisions, drafts = build
    del decisions[find_draft(drafts, "liver", "localization")["id"]]
    tumour = find_draft(drafts, "tumour", "attribute")["id"]
    decisions[tumour] = dataclasses.replace(decisions[tumour], status="rejected")
    out = release(build_dir, tmp_path / "rel", decisions, include_unreviewed=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["preview"] is True and manifest["review_policy"]["include_unreviewed"] is True
    assert manifest["counts"]["by_review_status"] == {"accepted": len(drafts) - 2, "unreviewed": 1}
    lines = (out / "README.md").read_text().splitlines()
    assert lines[0] == "---"  # the hub reads the configs only from a YAML header that opens the file
    banner = lines[lines.index("---", 1) + 1]
    assert "PREVIEW" in banner and "1 of" in banner
    assert validate_release(out).problems == []


def test_byte_identical_rebuild(build, tmp_path):
    build_dir, decisions, _ = build
    a = tree_bytes(release(build_dir, tmp_path / "a", decisions))
    b = tree_bytes(release(build_dir, tmp_path / "b", decisions))
    assert a == b
    c = tree_bytes(release(build_dir, tmp_path / "c", decisions, created="2027-01-01T00:00:00+00:00"))
    assert {k for k in a if a[k] != c[k]} == {"manifest.json"}
    assert json.loads(c["manifest.json"])["created"] == "2027-01-01T00:00:00Z"


def test_failed_release_keeps_existing_one(build, tmp_path):
    build_dir, decisions, _ = build
    out = release(build_dir, tmp_path / "rel", decisions)
    before = tree_bytes(out)
    # the dataset name occurs in every CT record's source (not text a draft holds, which would leave out
    # only its draft): the forbid list refuses the new release after it was built.
    with pytest.raises(ReleaseError, match="failed validation"):
        release(build_dir, out, decisions, created="2030-01-01T00:00:00Z", forbid=(Forbidden("CT-Sample", "test:1"),))
    assert tree_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build", "rel"]  # no temp dirs left behind
    # a successful rerun replaces it
    release(build_dir, out, decisions, created="2030-01-01T00:00:00Z")
    assert json.loads((out / "manifest.json").read_text())["created"] == "2030-01-01T00:00:00Z"


def test_refuses_to_replace_a_non_release(build, tmp_path):
    build_dir, decisions, _ = build
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    with pytest.raises(ReleaseError, match="not a vgmed release"):
        release(build_dir, precious, decisions)
    assert (precious / "thesis.tex").read_text() == "do not delete"


def test_bad_item_is_skipped_and_recorded(build, tmp_path):
    build_dir, decisions, drafts = build
    bad = find_draft(drafts, "spleen", "attribute")["id"]
    decisions[bad] = dataclasses.replace(decisions[bad], boxes=[[80, 30, 140, 70]], edited=True)
    with open_catalog(build_dir, create=False) as catalog:
        report = build_release(catalog, tmp_path / "rel", decisions, ReleaseOptions(created=CREATED))
        errors = catalog.conn.execute("SELECT item, message FROM errors WHERE stage='release'").fetchall()
    assert len(report.skipped) == 1 and bad in report.skipped[0] and "128x128" in report.skipped[0]
    assert errors == [(bad, report.skipped[0])]
    assert report.counts["records"] == len(drafts) - 1


def test_nothing_accepted_is_an_error(build, tmp_path):
    build_dir, _, _ = build
    with pytest.raises(ReleaseError, match="no drafts are accepted"):
        release(build_dir, tmp_path / "rel", {})
    assert not (tmp_path / "rel").exists()


def test_hf_datasets_loads_both_files(build, tmp_path):
    datasets = pytest.importorskip("datasets")
    build_dir, decisions, drafts = build
    pending = find_draft(drafts, "tumour", "localization")["id"]
    del decisions[pending]  # a preview mixes accepted and unreviewed rows: types must still agree
    out = release(build_dir, tmp_path / "rel", decisions, include_unreviewed=True)
    ds = datasets.load_dataset(
        "json",
        data_files={"localization": str(out / LOCALIZATION_FILE), "attribute": str(out / ATTRIBUTE_FILE)},
        cache_dir=str(tmp_path / "hf-cache"),
    )
    assert ds["localization"].num_rows == len(read_jsonl(out / LOCALIZATION_FILE))
    assert ds["attribute"].num_rows == len(read_jsonl(out / ATTRIBUTE_FILE))
    features = ds["attribute"].features
    assert features["bbox"].feature.feature.dtype == "int64"
    assert features["review"]["agreement"].dtype == "float64"
    assert features["side"].dtype == "string"
    row = next(r for r in ds["localization"] if r["id"] == pending)
    assert row["review"]["status"] == "unreviewed"


def test_release_help_explains_every_option():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for command in ("release", "validate", "export"):
        for action in sub.choices[command]._actions:
            if action.dest != "help":
                assert action.help, f"{command} {action.dest} has no help"


def test_cli_release_from_review_events(build, tmp_path, capsys):
    """The command decides from the stored review events under each policy."""
    build_dir, _, drafts = build
    split = find_draft(drafts, "liver", "attribute")
    edited = find_draft(drafts, "spleen", "localization")
    with open_catalog(build_dir, create=False) as catalog:
        n = 0
        for draft in sorted(drafts.values(), key=lambda d: d["id"]):
            for reviewer in ("r-aaaaaaaa", "r-bbbbbbbb"):
                n += 1
                if draft is split:
                    add_review_event(catalog, draft, reviewer, "reject" if reviewer == "r-aaaaaaaa" else "accept", n)
                elif draft is edited and reviewer == "r-bbbbbbbb":
                    add_review_event(catalog, draft, reviewer, "edit", n, question="Is a spleen visible?")
                else:
                    add_review_event(catalog, draft, reviewer, "accept", n)
    base = ["release", "--build", str(build_dir), "--created", CREATED]
    assert main([*base, "--out", str(tmp_path / "majority")]) == 0
    assert "wrote release" in capsys.readouterr().out
    records = {r["id"]: r for r in read_jsonl(tmp_path / "majority" / ATTRIBUTE_FILE)}
    records |= {r["id"]: r for r in read_jsonl(tmp_path / "majority" / LOCALIZATION_FILE)}
    assert split["id"] not in records and len(records) == len(drafts) - 1  # 1 accept vs 1 reject: disputed
    assert records[edited["id"]]["question"] == "Is a spleen visible?"
    assert records[edited["id"]]["review"] == {
        "status": "accepted",
        "n_reviewers": 2,
        "agreement": 1.0,
        "edited": True,
    }

    out = tmp_path / "adjudicated"
    assert main([*base, "--out", str(out), "--policy", "adjudicator", "--adjudicator", "r-bbbbbbbb"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["review_policy"] == {
        "policy": "adjudicator",
        "adjudicator": "r-bbbbbbbb",
        "include_unreviewed": False,
    }
    assert manifest["counts"]["records"] == len(drafts)
    assert main(["validate", str(out)]) == 0

    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "x"), "--policy", "adjudicator"]) == 2  # could not run
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "needs the adjudicator" in err and not (tmp_path / "x").exists()


KILLED_MID_SWAP = """
import os, sys
from vgmed_build.cli import main

real_rename = os.rename


def rename(src, dst):
    if ".tmp-" in os.fspath(src):  # the new release about to replace the one just moved aside
        os._exit(9)  # killed: no cleanup of any kind runs
    real_rename(src, dst)


os.rename = rename
sys.exit(main(sys.argv[1:]))
"""


def test_interrupted_swap_is_recovered(build, tmp_path):
    """A run killed between the two renames leaves the old release aside: the next run restores it."""
    build_dir, decisions, _ = build
    out = release(build_dir, tmp_path / "rel", decisions)
    before = tree_bytes(out)
    args = ["release", "--build", str(build_dir), "--out", str(out), "--include-unreviewed"]
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_SWAP, *args], capture_output=True, text=True)
    assert killed.returncode == 9, killed.stderr
    left = sorted(p.name for p in tmp_path.iterdir())
    assert "rel" not in left and any(n.startswith(".rel.old-") for n in left), left
    assert any(n.startswith(".rel.tmp-") for n in left) and ".rel.lock" in left
    with pytest.raises(ReleaseError, match="no drafts are accepted"):
        release(build_dir, out, {})  # fails after recovery: the restored release must survive
    assert tree_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build", "rel"]


def test_names_beside_out_that_vgmed_did_not_create_are_never_touched(build, tmp_path, capsys):
    """Issue 30: a user's `.rel.tmp-*`, `.rel.old-*` and `.rel.lock` are neither deleted, truncated nor
    renamed into place, even when they look like leftovers of a killed run (only claimed names are)."""
    build_dir, decisions, _ = build
    backup = tmp_path / ".rel.tmp-my-backup"
    backup.mkdir()
    (backup / "notes.txt").write_text("my backup")
    old_copy = release(build_dir, tmp_path / "first", decisions)  # a provable release, kept by the user
    old_copy.rename(tmp_path / ".rel.old-2024")
    mine = {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    mine = {k: v for k, v in mine.items() if k.startswith(".rel.")}
    args = ["release", "--build", str(build_dir), "--out", str(tmp_path / "rel"), "--include-unreviewed"]
    assert main(args) == 0  # "rel" is absent: .rel.old-2024 must not be restored as it
    assert json.loads((tmp_path / "rel" / "manifest.json").read_text())["preview"] is True
    assert main(args) == 0  # and a replacing run leaves it too
    after = {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if k.startswith(".rel.")} == mine
    assert sorted(p.name for p in tmp_path.iterdir()) == [".rel.old-2024", ".rel.tmp-my-backup", "build", "rel"]

    lock = tmp_path / ".rel.lock"
    lock.write_text("my lock notes\n")
    before = tree_bytes(tmp_path / "rel")
    capsys.readouterr()
    assert main(args) == 2  # could not run: nothing changed
    err = capsys.readouterr().err
    assert f"error: {lock} exists but was not written by vgmed" in err and "nothing was changed" in err
    assert lock.read_text() == "my lock notes\n"
    assert tree_bytes(tmp_path / "rel") == before
    lock.unlink()
    lock.symlink_to(tmp_path / "rel" / "README.md")  # a link is never followed to someone's file
    assert main(args) == 2
    assert tree_bytes(tmp_path / "rel") == before and lock.is_symlink()


def test_refuses_a_users_folder_that_holds_a_manifest_json(build, tmp_path, capsys):
    """Issue 12.1: a project folder with its own manifest.json is not a release: nothing deleted."""
    build_dir, _, _ = build
    project = tmp_path / "X"
    (project / "src").mkdir(parents=True)
    (project / "manifest.json").write_text('{"name":"app"}')
    (project / "src" / "main.js").write_text("work")
    before = tree_bytes(project)
    code = main(["release", "--build", str(build_dir), "--out", str(project), "--include-unreviewed"])
    assert code == 2  # could not run: nothing changed
    assert tree_bytes(project) == before
    err = capsys.readouterr().err
    assert err.startswith("error: ") and 'no "format": "vgmed-release"' in err and "nothing was changed" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X", "build"]  # no temp dirs left behind


def test_replacing_a_release_never_deletes_files_its_manifest_does_not_list(build, tmp_path):
    build_dir, decisions, _ = build
    out = release(build_dir, tmp_path / "rel", decisions)
    (out / "notes").mkdir()
    (out / "notes" / "my-analysis.txt").write_text("mine")
    (out / "images" / "extra.png").write_bytes(b"not listed")
    before = tree_bytes(out)
    unlisted = r"3 path\(s\) its manifest does not list \('images/extra.png', 'notes', 'notes/my-analysis.txt'\)"
    with pytest.raises(ReleaseError, match=unlisted):
        release(build_dir, out, decisions, created="2030-01-01T00:00:00Z")
    assert tree_bytes(out) == before
    # a release with only its listed files (some of them missing) is replaced as before
    for extra in ("notes/my-analysis.txt", "notes", "images/extra.png"):
        (out / extra).rmdir() if (out / extra).is_dir() else (out / extra).unlink()
    (out / "README.md").unlink()
    release(build_dir, out, decisions, created="2030-01-01T00:00:00Z")
    assert json.loads((out / "manifest.json").read_text())["created"] == "2030-01-01T00:00:00Z"


def test_a_claimed_folder_moved_aside_is_only_deleted_when_it_is_a_release(build, tmp_path):
    """Recovery after a kill deletes the claimed `.NAME.old-*` only when it is provably a release."""
    build_dir, decisions, _ = build
    out = release(build_dir, tmp_path / "rel", decisions)
    args = ["release", "--build", str(build_dir), "--out", str(out), "--include-unreviewed"]
    assert subprocess.run([sys.executable, "-c", KILLED_MID_SWAP, *args]).returncode == 9
    moved = next(tmp_path.glob(".rel.old-*"))
    moved.rename(out)  # the user restored it by hand, then added notes to the folder left behind
    moved.mkdir()
    (moved / "data.csv").write_text("someone's")
    release(build_dir, out, decisions, created="2030-01-01T00:00:00Z")
    assert (moved / "data.csv").read_text() == "someone's"
    assert not list(tmp_path.glob(".rel.tmp-*"))  # the claimed temp folder is gone


def test_unreleasable_reviewer_edits_are_left_out_one_by_one(build, tmp_path, capsys):
    """Issue 30: one edit with an identifier (or absurd length, HTML, ANSI escapes, no question) leaves
    out its draft with a reason; every other accepted draft is released, and no reason echoes the text."""
    build_dir, _, drafts = build
    edits = {
        find_draft(drafts, "liver", "attribute")["id"]: ({"answer": "seen by Dr Miller"}, "contains a name"),
        find_draft(drafts, "liver", "position")["id"]: ({"answer": "SMITH^JOHN"}, "DICOM person name"),
        find_draft(drafts, "spleen", "attribute")["id"]: ({"answer": "round " * 10_000}, "length: answer"),
        find_draft(drafts, "spleen", "localization")["id"]: (
            {"question": "Is there a spleen <img src=x onerror=alert(1)> here?"},
            "HTML markup (a <img> tag",
        ),
        find_draft(drafts, "tumour", "localization")["id"]: (
            {"question": "Is there a \x1b[31mtumour\x1b[0m in the image?"},
            "control character U+001B",
        ),
        find_draft(drafts, "tumour", "attribute")["id"]: ({"question": "Describe the tumour."}, "single_question"),
    }
    fine_edit = find_draft(drafts, "liver", "localization")["id"]
    edits_and_fine = {k: v[0] for k, v in edits.items()} | {fine_edit: {"question": "Is a liver visible?"}}
    with open_catalog(build_dir, create=False) as catalog:
        for n, draft in enumerate(sorted(drafts.values(), key=lambda d: d["id"]), 1):
            change = edits_and_fine.get(draft["id"], {})
            add_review_event(catalog, draft, "r-aaaaaaaa", "edit" if change else "accept", n, **change)
    out = tmp_path / "rel"
    code = main(["release", "--build", str(build_dir), "--out", str(out), "--created", CREATED])
    captured = capsys.readouterr()
    assert code == 1  # some accepted drafts left out
    assert f"{len(edits)} accepted drafts left out" in captured.out
    for draft_id, (_, reason) in edits.items():
        line = next(line for line in captured.out.splitlines() if draft_id in line)
        assert "the reviewed text cannot be released" in line and reason in line, line
    for secret in ("Miller", "SMITH", "\x1b", "onerror"):
        assert secret not in captured.out + captured.err
    released = {r["id"]: r for name in (LOCALIZATION_FILE, ATTRIBUTE_FILE) for r in read_jsonl(out / name)}
    assert set(released) == set(drafts) - set(edits)
    assert released[fine_edit]["question"] == "Is a liver visible?"
    assert main(["validate", str(out)]) == 0
    with open_catalog(build_dir, create=False) as catalog:
        errors = dict(catalog.conn.execute("SELECT item, message FROM errors WHERE stage='release'").fetchall())
    assert set(errors) == set(edits)
    # the forbid file acts per draft as well: a forbidden word in one question leaves out that draft only
    forbid = tmp_path / "forbid.txt"
    forbid.write_text("visible\n")
    assert main(["release", "--build", str(build_dir), "--out", str(out), "--forbid-file", str(forbid)]) == 1
    assert fine_edit in capsys.readouterr().out
    assert len(read_jsonl(out / LOCALIZATION_FILE)) + len(read_jsonl(out / ATTRIBUTE_FILE)) == len(released) - 1


def test_a_full_disk_is_a_clear_error_and_keeps_the_release(build, full_disk, capsys):
    build_dir, _, _ = build
    out = full_disk / "rel"
    args = ["release", "--build", str(build_dir), "--out", str(out), "--include-unreviewed"]
    assert main(args) == 0
    before = tree_bytes(out)
    fill(full_disk)  # not even room for the lock file
    capsys.readouterr()
    assert main([*args, "--created", "2030-01-01T00:00:00Z"]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot write {full_disk / '.rel.lock'}: No space left")
    (full_disk / "filler").unlink()
    fill(full_disk, leave=16384)  # room for the lock and the folders, not for the images
    assert main([*args, "--created", "2030-01-01T00:00:00Z"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {full_disk}/.rel.tmp-") and "No space left on device" in err, err
    assert "an existing release is unchanged" in err and "Traceback" not in err
    assert tree_bytes(out) == before
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler", "rel"]  # its own temporary folder removed


def test_a_build_image_replaced_after_ingest_leaves_its_drafts_out(build, tmp_path, capsys):
    """Issue 30: a build PNG swapped for another picture of the same size would be released under the
    old boxes; the catalog's SHA-256 of each image is checked and every draft of a changed image is left
    out with the reason, one at a time; the other image's drafts are released and the build is kept."""
    build_dir, _, drafts = build
    with open_catalog(build_dir, create=False) as catalog:
        for n, draft in enumerate(sorted(drafts.values(), key=lambda d: d["id"]), 1):
            add_review_event(catalog, draft, "r-aaaaaaaa", "accept", n)
    liver = find_draft(drafts, "liver", "attribute")
    with open_catalog(build_dir, create=False) as catalog:
        regions = {r["id"]: r for _, r, _ in catalog.ok_drafts()}
    image = regions[liver["region_id"]]["image"]
    changed = [d["id"] for d in drafts.values() if regions[d["region_id"]]["image"] == image]
    with Image.open(build_dir / image) as im:
        size = im.size
    replacement = np.full(size[::-1], 200, np.uint8)
    replacement[:8] = 0  # another picture, same size: only the checksum tells
    Image.fromarray(replacement).save(build_dir / image)
    replaced = (build_dir / image).read_bytes()
    out = tmp_path / "rel"
    code = main(["release", "--build", str(build_dir), "--out", str(out), "--created", CREATED])
    captured = capsys.readouterr()
    assert code == 1
    assert f"{len(changed)} accepted drafts left out" in captured.out
    for draft_id in changed:
        line = next(line for line in captured.out.splitlines() if draft_id in line)
        assert f"image {image}: changed since ingest" in line and "re-ingest" in line, line
    released = {r["id"] for name in (LOCALIZATION_FILE, ATTRIBUTE_FILE) for r in read_jsonl(out / name)}
    assert released == set(drafts) - set(changed) and released
    assert (build_dir / image).read_bytes() == replaced  # nothing of the user's touched
    assert main(["validate", str(out)]) == 0
