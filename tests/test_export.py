"""`vgmed-build export`: Parquet and VQA JSON round-trip the release records."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from disk_fixtures import fill
from release_fixtures import made_release, read_jsonl, tree_bytes

from vgmed_build import export as export_module
from vgmed_build.cli import main
from vgmed_build.export import FORMATS, ExportError, ExportOptions, export
from vgmed_build.release_format import ATTRIBUTE_FILE, LOCALIZATION_FILE, sha256_file


@pytest.fixture(scope="module")
def rel(tmp_path_factory) -> Path:
    return made_release(tmp_path_factory.mktemp("export"))


def test_parquet_round_trip(rel, tmp_path):
    written = export(rel, FORMATS["parquet"], tmp_path / "pq", ExportOptions(embed_images=True))
    assert [p.name for p in written] == ["VGMED_localization.parquet", "VGMED_attribute.parquet"]
    for name, path in zip((LOCALIZATION_FILE, ATTRIBUTE_FILE), written, strict=True):
        rows = pq.read_table(path).to_pylist()
        records = read_jsonl(rel / name)
        # a null mask is a box-only record (one without a mask field in the JSONL)
        assert [{k: v for k, v in r.items() if k != "image_bytes" and not (k == "mask" and v is None)}
                for r in rows] == records
        for row in rows:
            assert row["image_bytes"] == (rel / row["image"]).read_bytes()


def test_parquet_row_groups_bound_what_is_held(rel, tmp_path, monkeypatch):
    """A file larger than PARQUET_ROW_GROUP_BYTES of Arrow data is written a row group at a time: several
    groups, the same rows as ``pa.Table.from_pylist`` of the records, and the same bytes on a second run;
    under the bound it is one group, byte for byte ``pq.write_table`` of that table (the format before)."""
    import pyarrow as pa

    records = read_jsonl(rel / LOCALIZATION_FILE)
    whole = pa.Table.from_pylist(records, schema=export_module.arrow_schema())
    pq.write_table(whole, tmp_path / "one-table.parquet")
    one = export(rel, FORMATS["parquet"], tmp_path / "one")[0]
    assert one.read_bytes() == (tmp_path / "one-table.parquet").read_bytes()
    monkeypatch.setattr(export_module, "PARQUET_ROW_GROUP_BYTES", 1)
    monkeypatch.setattr(export_module, "PARQUET_BATCH", 2)
    runs = [export(rel, FORMATS["parquet"], tmp_path / f"run{i}")[0] for i in range(2)]
    groups = pq.ParquetFile(runs[0]).metadata.num_row_groups
    assert groups == -(-len(records) // 2) > 1
    assert pq.read_table(runs[0]).equals(whole)
    assert runs[0].read_bytes() == runs[1].read_bytes()


def test_vqa_json(rel, tmp_path):
    (out,) = export(rel, FORMATS["vqa-json"], tmp_path / "exports" / "vgmed_vqa.json")
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
        export(tmp_path, FORMATS["vqa-json"], tmp_path / "x.json")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{}")
    lines = (rel / ATTRIBUTE_FILE).read_text().splitlines()
    (broken / ATTRIBUTE_FILE).write_text(lines[0] + "\n" + json.dumps({"id": "x"}) + "\n")
    with pytest.raises(ExportError, match=r"manifest.json: no file list to verify the release against"):
        export(broken, FORMATS["vqa-json"], tmp_path / "x.json")
    with pytest.raises(ExportError, match=r"VGMED_attribute.jsonl:2: "):
        export(broken, FORMATS["vqa-json"], tmp_path / "x.json", ExportOptions(verify=False))  # records still checked
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("fmt, name", [("vqa-json", "out.json"), ("parquet", "out-pq"), ("vlmevalkit", "out-vk")])
def test_a_bad_record_met_while_writing_leaves_the_earlier_export_intact(rel, tmp_path, capsys, fmt, name):
    """Records are read as the files are written (not held): a bad last line is found mid-write."""
    copy = own_copy(rel, tmp_path)
    out = tmp_path / name
    args = ["export", str(copy), "--format", fmt, "--out", str(out), "--no-verify"]
    assert main(args) == 0
    good = out.read_bytes() if out.is_file() else tree_bytes(out)
    n_lines = len((copy / ATTRIBUTE_FILE).read_text().splitlines())
    with open(copy / ATTRIBUTE_FILE, "a") as fh:
        fh.write(json.dumps({"id": "x"}) + "\n")
    capsys.readouterr()
    assert main(args) == 2
    assert f"{ATTRIBUTE_FILE}:{n_lines + 1}: " in capsys.readouterr().err
    assert (out.read_bytes() if out.is_file() else tree_bytes(out)) == good
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]


def own_copy(rel: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "rel"
    shutil.copytree(rel, copy)
    return copy


def test_a_users_file_or_folder_is_never_overwritten(rel, tmp_path, capsys):
    """Issue 30: exit 2 and nothing changed, unless the target is a previous export of ours or --overwrite."""
    results = tmp_path / "my-results.json"
    results.write_text('{"accuracy": 0.93}\n')
    folder = tmp_path / "analysis"
    folder.mkdir()
    (folder / "VGMED_attribute.parquet").write_bytes(b"my own parquet")
    (folder / "notes.txt").write_text("mine")
    before = tree_bytes(tmp_path)
    vqa = ["export", str(rel), "--format", "vqa-json", "--out", str(results)]
    pq_args = ["export", str(rel), "--format", "parquet", "--out", str(folder)]
    assert main(vqa) == 2
    assert f"error: {results} exists and is not a previous vqa-json export of vgmed; nothing was changed" in (
        capsys.readouterr().err
    )
    assert main(pq_args) == 2
    err = capsys.readouterr().err
    assert f"{folder} holds 2 entries that are not a previous parquet export of vgmed" in err
    assert "VGMED_attribute.parquet, notes.txt" in err and "--overwrite" in err
    assert tree_bytes(tmp_path) == before  # nothing changed, no temporary file left

    # a previous export of ours is replaced without asking (an earlier one made by an older run, too)
    ours_json, ours_pq = tmp_path / "ours.json", tmp_path / "ours-pq"
    for args in (["--format", "vqa-json", "--out", str(ours_json)], ["--format", "parquet", "--out", str(ours_pq)]):
        assert main(["export", str(rel), *args]) == 0
        assert main(["export", str(rel), *args]) == 0
    assert sorted(p.name for p in ours_pq.iterdir()) == ["VGMED_attribute.parquet", "VGMED_localization.parquet"]

    # --overwrite replaces the user's file, and in a folder only the files of our names
    assert main([*vqa, "--overwrite"]) == 0
    assert json.loads(results.read_text())[0]["images"][0].startswith("../")
    assert main([*pq_args, "--overwrite"]) == 0
    assert (folder / "notes.txt").read_text() == "mine"
    assert pq.read_table(folder / "VGMED_attribute.parquet").num_rows == len(read_jsonl(rel / ATTRIBUTE_FILE))


def test_a_tampered_release_is_refused_unless_no_verify(rel, tmp_path, capsys):
    copy = own_copy(rel, tmp_path)
    lines = (copy / ATTRIBUTE_FILE).read_text().splitlines()
    record = json.loads(lines[0])
    record["answer"] = "tampered"
    (copy / ATTRIBUTE_FILE).write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    (copy / "VGMED_extra.jsonl").write_text("")  # not in the manifest either
    out = tmp_path / "x.json"
    assert main(["export", str(copy), "--format", "vqa-json", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{ATTRIBUTE_FILE}: SHA-256 differs from the manifest" in err and "--no-verify" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["rel"]
    assert main(["export", str(copy), "--format", "vqa-json", "--out", str(out), "--no-verify"]) == 0
    assert json.loads(out.read_text())[0]["answer"] == "tampered"


def test_nothing_outside_the_release_is_embedded(rel, tmp_path, capsys):
    """Issue 30: an image that is a link to a file outside, with the manifest updated to match (so the
    checksums agree), is refused before anything is read or written, with --no-verify too."""
    copy = own_copy(rel, tmp_path)
    secret = tmp_path / "secret.key"
    secret.write_bytes(b"-----BEGIN PRIVATE KEY----- TOPSECRET")
    image = json.loads((copy / ATTRIBUTE_FILE).read_text().splitlines()[0])["image"]
    (copy / image).unlink()
    (copy / image).symlink_to(secret)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"][image] = {"kind": "image", "bytes": secret.stat().st_size, "sha256": sha256_file(secret)}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "pq"
    for extra in ([], ["--no-verify"]):
        assert main(["export", str(copy), "--format", "parquet", "--embed-images", "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert f"{image!r}" in err and "is a symbolic link that leads out of the release" in err, err
        assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["rel", "secret.key"]
    # a manifest listing a path above the release is refused before anything is opened or hashed
    manifest["files"]["../secret.key"] = manifest["files"].pop(image)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert main(["export", str(copy), "--format", "vqa-json", "--out", str(tmp_path / "x.json")]) == 2
    assert "lists '../secret.key', which leaves the release (an absolute or ../ path); not read" in (
        capsys.readouterr().err
    )


# Runs `export` with a file-size limit: SIGXFSZ kills it in the middle of writing (a kill at a known
# point), or, with the signal ignored, every write past the limit fails with EFBIG as on a full disk.
LIMITED = """
import resource, signal, sys
from vgmed_build import export as export_module
from vgmed_build.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_DFL if sys.argv[1] == "kill" else signal.SIG_IGN)  # Python ignores it
resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("fmt, name", [("vqa-json", "out.json"), ("parquet", "out-pq")])
def test_a_killed_or_failing_export_leaves_the_earlier_one_intact(rel, tmp_path, fmt, name):
    out = tmp_path / name
    args = ["export", str(rel), "--format", fmt, "--out", str(out), "--embed-images"][: 6 if fmt == "vqa-json" else 7]
    assert main(args) == 0
    good = out.read_bytes() if out.is_file() else tree_bytes(out)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    killed = subprocess.run([sys.executable, "-c", LIMITED, "kill", *args], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGXFSZ, killed.stderr.decode()
    assert (out.read_bytes() if out.is_file() else tree_bytes(out)) == good
    failed = subprocess.run([sys.executable, "-c", LIMITED, "ignore", *args], env=env, capture_output=True, text=True)
    assert failed.returncode == 2, failed.stderr
    assert failed.stderr.startswith("error: cannot write ") and "File too large" in failed.stderr
    assert "an earlier export there is unchanged" in failed.stderr and "Traceback" not in failed.stderr
    assert (out.read_bytes() if out.is_file() else tree_bytes(out)) == good
    # the killed run's temporary file stays (vgmed cannot prove it wrote it); the failed one removed its own
    assert len([p for p in tmp_path.iterdir() if ".tmp-" in p.name]) == 1


def test_a_full_disk_is_a_clear_error(rel, full_disk, capsys):
    out = full_disk / "out-pq"
    assert main(["export", str(rel), "--format", "parquet", "--out", str(out)]) == 0
    good = tree_bytes(out)
    fill(full_disk)
    assert main(["export", str(rel), "--format", "parquet", "--out", str(out), "--embed-images"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {out}/") and "No space left on device" in err
    assert tree_bytes(out) == good
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler", "out-pq"]
