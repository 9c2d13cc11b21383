"""Issue 29: a release as Hugging Face `datasets`, lmms-eval and VLMEvalKit users hold data, a preview
unmistakable wherever it goes, and `vgmed-eval grounding --release org/name` through huggingface_hub.

Real libraries throughout: `datasets.load_dataset` on the folders, huggingface_hub's card parser and
snapshot resolution (a local cache laid out as huggingface_hub lays it out, offline), pandas for the TSV.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import huggingface_hub
import pandas as pd
import pytest
import yaml
from huggingface_hub import DatasetCard
from PIL import Image
from release_fixtures import make_build, read_jsonl

from vgmed_build.catalog import open_catalog
from vgmed_build.cli import main
from vgmed_build.export import FORMATS, HF_CACHE_PREFIX, ExportOptions, export
from vgmed_build.owned_dirs import MARK, MARKER, owned_tempdir
from vgmed_build.release import ReleaseOptions, build_release
from vgmed_build.release_format import ATTRIBUTE_FILE, LOCALIZATION_FILE
from vgmed_build.validate import validate_release


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("hub")
    build, decisions, _ = make_build(root)
    return build, decisions


def _release(built, out: Path, preview: bool = False) -> Path:
    build, decisions = built
    if preview:  # two drafts have no decision yet: only a preview may hold them
        decisions = {k: v for k, v in decisions.items() if k not in sorted(decisions)[:2]}
    with open_catalog(build, create=False) as catalog:
        build_release(catalog, out, decisions, ReleaseOptions(created="2026-01-01T00:00:00Z",
                                                              include_unreviewed=preview))
    return out


@pytest.fixture(scope="module")
def rel(built, tmp_path_factory) -> Path:
    return _release(built, tmp_path_factory.mktemp("rel") / "rel")


@pytest.fixture(scope="module")
def preview(built, tmp_path_factory) -> Path:
    return _release(built, tmp_path_factory.mktemp("preview") / "preview", preview=True)


@pytest.fixture(autouse=True)
def offline_cache(tmp_path, monkeypatch):
    """`datasets` caches into the test's folder and never reaches the network."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def front(card: Path) -> dict:
    return DatasetCard.load(card).data.to_dict()  # huggingface_hub's own card parser


def test_the_release_folder_loads_with_a_default_config(rel):
    ds = datasets.load_dataset(str(rel))  # no config name: the card's default
    assert list(ds) == ["test"]
    assert ds["test"]["id"] == [r["id"] for r in read_jsonl(rel / LOCALIZATION_FILE)]
    attribute = datasets.load_dataset(str(rel), "attribute", split="test")
    assert attribute["answer"] == [r["answer"] for r in read_jsonl(rel / ATTRIBUTE_FILE)]
    configs = front(rel / "README.md")["configs"]
    assert [(c["config_name"], c.get("default", False)) for c in configs] == [("localization", True),
                                                                              ("attribute", False)]


def test_hf_export_gives_image_features_and_the_records(rel, tmp_path):
    out = tmp_path / "rel-hf"
    written = export(rel, FORMATS["hf"], out)
    assert sorted(p.relative_to(out).as_posix() for p in written) == [
        "README.md", "data/attribute/test-00000-of-00001.parquet", "data/localization/test-00000-of-00001.parquet"]
    default = datasets.load_dataset(str(out))
    assert list(default) == ["test"]
    for config, name in (("localization", LOCALIZATION_FILE), ("attribute", ATTRIBUTE_FILE)):
        ds = default["test"] if config == "localization" else datasets.load_dataset(str(out), config, split="test")
        assert isinstance(ds.features["image"], datasets.Image)
        want = read_jsonl(rel / name)
        assert len(ds) == len(want) > 0
        for row, record in zip(ds, want, strict=True):
            for key in ("id", "question", "answer", "bbox", "q_type", "label", "source", "review"):
                assert row[key] == record[key], key
            assert row["mask"] == record.get("mask")
            picture = row["image"]
            assert picture.size == (record["width"], record["height"])
            assert picture.tobytes() == Image.open(rel / record["image"]).tobytes()
    meta = front(out / "README.md")
    assert [(c["config_name"], c["data_files"][0]["path"], c.get("default", False)) for c in meta["configs"]] == [
        ("localization", "data/localization/test-*.parquet", True),
        ("attribute", "data/attribute/test-*.parquet", False),
    ]
    assert "preview" not in meta["tags"] and "PREVIEW" not in meta["pretty_name"]
    # a second export recognises its own files (no --overwrite needed) and gives the same bytes; a file of
    # yours stops it. datasets' Arrow cache (a temporary folder next to the output) is gone after each.
    first = {p: p.read_bytes() for p in written}
    assert export(rel, FORMATS["hf"], out) == written
    assert {p: p.read_bytes() for p in written} == first
    assert list(tmp_path.glob(".*")) == []  # no .vgmed-hf-cache-* left
    (out / "data" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds 1 entries that are not a previous hf export of vgmed \(data/notes"):
        export(rel, FORMATS["hf"], out)


def test_a_preview_is_marked_in_the_hub_metadata_card_manifest_and_exports(preview, tmp_path, caplog):
    manifest = json.loads((preview / "manifest.json").read_text())
    assert manifest["preview"] is True
    card = (preview / "README.md").read_text()
    meta = front(preview / "README.md")
    assert "preview" in meta["tags"] and meta["pretty_name"].endswith("(PREVIEW: not a validated release)")
    lines = card.splitlines()
    assert lines[lines.index("---", 1) + 1].startswith("**PREVIEW: NOT A VALIDATED RELEASE.**")
    unreviewed = manifest["counts"]["records"] - manifest["counts"]["review"]["reviewed"]
    assert unreviewed > 0 and "reviewed every" not in card
    total = manifest["counts"]["records"]
    assert f"This is a PREVIEW: {unreviewed} of the {total} questions have had no review" in card
    assert validate_release(preview).problems == []
    with caplog.at_level(logging.WARNING):
        export(preview, FORMATS["hf"], tmp_path / "hf")
    accepted = manifest["counts"]["by_review_status"].get("accepted", 0)
    assert (f"is a PREVIEW release (manifest.json preview: true): {manifest['counts']['records'] - accepted} of "
            f"its {manifest['counts']['records']} questions have not been accepted") in caplog.text
    hf_meta = front(tmp_path / "hf" / "README.md")
    assert "preview" in hf_meta["tags"] and "PREVIEW" in hf_meta["pretty_name"]
    assert "**PREVIEW" in (tmp_path / "hf" / "README.md").read_text()
    # a preview card stripped of its tag is caught
    copy = tmp_path / "copy"
    shutil.copytree(preview, copy)
    (copy / "README.md").write_text(card.replace("- preview\n", "", 1))
    messages = [p.message for p in validate_release(copy).problems]
    assert any("front matter tags must include 'preview'" in m for m in messages), messages


def test_vqa_warns_on_a_preview(preview):
    from vgmed_eval.vqa.benchmarks import get_benchmark

    loaded = get_benchmark("vgmed-attribute").load(preview)
    assert any("is a PREVIEW release" in note for note in loaded.notes)


def _yaml_with_functions(path: Path) -> dict:
    """Read an lmms-eval task YAML as lmms-eval does: ``!function utils.f`` is f from the file beside it."""
    def function(loader, node):
        module_name, name = loader.construct_scalar(node).rsplit(".", 1)
        spec = importlib.util.spec_from_file_location(module_name, path.parent / f"{module_name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return getattr(module, name)

    loader = type("TaskLoader", (yaml.SafeLoader,), {})
    loader.add_constructor("!function", function)
    return yaml.load(path.read_text(), Loader=loader)  # noqa: S506 - a SafeLoader subclass


def test_lmms_eval_task_loads_and_scores(rel, tmp_path):
    out = tmp_path / "lmms"
    export(rel, FORMATS["lmms-eval"], out)
    for config, name in (("localization", LOCALIZATION_FILE), ("attribute", ATTRIBUTE_FILE)):
        task = _yaml_with_functions(out / f"vgmed_{config}.yaml")
        assert task["task"] == f"vgmed_{config}" and task["output_type"] == "generate_until"
        assert task["metadata"]["preview"] is False
        # lmms-eval loads with datasets.load_dataset(path=dataset_path, name=dataset_name)[test_split]
        docs = datasets.load_dataset(task["dataset_path"], task["dataset_name"])[task["test_split"]]
        want = read_jsonl(rel / name)
        assert docs["id"] == [r["id"] for r in want]
        doc = docs[0]
        (visual,) = task["doc_to_visual"](doc)
        assert visual.size == (want[0]["width"], want[0]["height"]) and visual.mode == "RGB"
        assert task["doc_to_text"](doc) == want[0]["question"] + " Answer the question using a single word or phrase."
        assert doc[task["doc_to_target"]] == want[0]["answer"]
        assert task["process_results"](doc, [f"The {want[0]['answer'].upper()}."]) == {"exact_match": 1.0}
        assert task["process_results"](doc, ["something else"]) == {"exact_match": 0.0}
        assert [m["metric"] for m in task["metric_list"]] == ["exact_match"]


def test_vlmevalkit_tsv_and_config(rel, tmp_path):
    out = tmp_path / "vlm"
    export(rel, FORMATS["vlmevalkit"], out)
    config = json.loads((out / "vlmevalkit_config.json").read_text())
    assert config["data"] == {s: {"class": "VGMEDDataset", "dataset": s} for s in ("VGMED_localization",
                                                                                   "VGMED_attribute")}
    for name in (LOCALIZATION_FILE, ATTRIBUTE_FILE):
        table = pd.read_csv(out / name.replace(".jsonl", ".tsv"), sep="\t")  # what vlmeval.smp.load does
        want = read_jsonl(rel / name)
        assert list(table.columns[:4]) == ["index", "image", "question", "answer"]
        assert table["index"].tolist() == list(range(1, len(want) + 1))
        assert table["question"].tolist() == [r["question"] for r in want]
        assert table["answer"].astype(str).tolist() == [r["answer"] for r in want]
        assert table["category"].tolist() == [r["q_type"] for r in want]
        for encoded, record in zip(table["image"], want, strict=True):
            assert base64.b64decode(encoded) == (rel / record["image"]).read_bytes()
            assert Image.open(io.BytesIO(base64.b64decode(encoded))).size == (record["width"], record["height"])
    spec = importlib.util.spec_from_file_location("vgmed_vlmevalkit", out / "vgmed_vlmevalkit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports without VLMEvalKit; the class needs it
    assert module.exact_match("Left.", "left") == 1.0 and module.exact_match("right", "left") == 0.0
    with pytest.raises(ImportError, match="vlmeval"):
        module.VGMEDDataset  # noqa: B018


def _hub_cache(cache: Path, repo_id: str, release: Path) -> Path:
    """A dataset snapshot laid out as huggingface_hub lays out its cache."""
    commit = "0" * 39 + "1"
    repo = cache / f"datasets--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(release, repo / "snapshots" / commit)
    return repo / "snapshots" / commit


@pytest.fixture
def hub_offline(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def test_grounding_takes_a_hub_dataset_id(preview, hub_offline, tmp_path, caplog, capsys):
    from vgmed_eval.cli import main as eval_main

    snapshot = _hub_cache(hub_offline, "some-org/vgmed-demo", preview)
    out = tmp_path / "out"
    args = ["--model", "builtin:tiny-qwen2_vl", "--out", str(out), "--layers", "1", "--limit", "2",
            "--bootstrap", "10", "--chance-draws", "0", "--no-progress"]
    with caplog.at_level(logging.WARNING):
        assert eval_main(["grounding", "--release", "some-org/vgmed-demo", *args]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert Path(summary["release"]).resolve() == snapshot.resolve() and summary["n_ok"] == 2
    assert summary["release_preview"] is True and "is a PREVIEW release" in caplog.text
    assert eval_main(["grounding", "--release", "some-org/not-cached", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: some-org/not-cached: no such folder here, and the Hugging Face Hub dataset "
                          "some-org/not-cached could not be fetched (")
    assert "HF_HUB_OFFLINE=1 uses only the local Hugging Face cache" in err


def test_cli_export_formats_and_their_defaults(rel):
    for fmt, default in (("hf", "rel-hf"), ("lmms-eval", "rel-lmms-eval"), ("vlmevalkit", "rel-vlmevalkit")):
        assert main(["export", str(rel), "--format", fmt]) == 0
        assert rel.with_name(default).is_dir()
    assert (rel.with_name("rel-lmms-eval") / "utils.py").read_bytes() == (
        rel.with_name("rel-vlmevalkit") / "vgmed_vlmevalkit.py").read_bytes()


def test_a_dropped_config_is_removed_with_its_folder(rel, tmp_path):
    out = tmp_path / "hf"
    export(rel, FORMATS["hf"], out)
    (out / "data" / "control_localization").mkdir()
    shutil.copy(out / "data/localization/test-00000-of-00001.parquet",
                out / "data/control_localization/test-00000-of-00001.parquet")
    export(rel, FORMATS["hf"], out, ExportOptions())
    assert sorted(p.name for p in (out / "data").iterdir()) == ["attribute", "localization"]


# A real `vgmed-build export` in its own process, each Hub row held back 20 ms so that the kill lands while
# datasets' Arrow cache is being written (the export's own code, only slower).
_SLOW_EXPORT = (
    "import sys, time; import vgmed_build.export as e; rows = e.hf_rows\n"
    "def slow(**kw):\n"
    "    for r in rows(**kw):\n"
    "        time.sleep(0.02)\n"
    "        yield r\n"
    "e.hf_rows = slow\n"
    "from vgmed_build.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _cache_in_use(parent: Path) -> Path | None:
    """A marked cache folder in which datasets has begun its build (its lock and incomplete folder), or None."""
    for folder in parent.glob(f"{HF_CACHE_PREFIX}*"):
        marker = folder / MARKER
        if marker.is_file() and marker.read_text().startswith(MARK) and any(folder.rglob("*.incomplete*")):
            return folder
    return None


@pytest.mark.parametrize("fmt", ["hf", "lmms-eval"])
def test_a_killed_export_leaves_its_cache_and_the_next_removes_only_that(rel, tmp_path, fmt):
    """SIGKILL mid-export leaves datasets' cache folder; the next export removes it, and leaves a folder of
    that name vgmed did not mark, a symbolic link to a marked one, and the cache of a running export."""
    out = tmp_path / "hub"
    mine = tmp_path / f"{HF_CACHE_PREFIX}mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / MARKER).write_text(f"{MARK} pid 1 host x\n")
    (tmp_path / f"{HF_CACHE_PREFIX}link").symlink_to(elsewhere)
    with owned_tempdir(HF_CACHE_PREFIX, tmp_path) as live:  # another export, running (its marker locked)
        (live / "shard.arrow").write_bytes(b"rows")
        proc = subprocess.Popen([sys.executable, "-c", _SLOW_EXPORT, "export", str(rel), "--format", fmt,
                                 "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while (left := _cache_in_use(tmp_path) if proc.poll() is None else None) in (None, live):
            assert proc.poll() is None, "the export ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert left.is_dir() and f"pid {proc.pid} " in (left / MARKER).read_text()  # what the kill left
        assert main(["--no-progress", "export", str(rel), "--format", fmt, "--out", str(out)]) == 0
        assert not left.exists()
        assert (live / "shard.arrow").read_bytes() == b"rows"
        assert (mine / "notes.txt").read_text() == "mine" and (elsewhere / MARKER).exists()
        assert (tmp_path / f"{HF_CACHE_PREFIX}link").is_symlink()
    assert not live.exists()
    assert datasets.load_dataset(str(out), split="test").num_rows > 0
