"""Entries of a source that used to be dropped without a word (issue 30): each is now an error line
naming the file and the entry, through the real command line on files the real libraries wrote; the
rest of the source is ingested and what an earlier run stored is kept."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
from pathlib import Path

from coco_fixtures import COIN_A, write_coco
from ingest_fixtures import ingest, sources_toml
from PIL import Image
from test_source_samed2d import CT, EYE, make_samed2d
from test_source_slake import make_slake

from vgmed_build.cli import main


def stored(build: Path) -> set[tuple[str, str]]:
    with sqlite3.connect(build / "catalog.sqlite") as conn:
        rows = [json.loads(r) for (r,) in conn.execute("SELECT record_json FROM regions")]
    return {(r["source"]["item"], r["label"]) for r in rows}


def error_lines(build: Path, capsys) -> list[str]:
    """Every stored ingest error as `stats --json --with-paths` shows it (item: message)."""
    capsys.readouterr()
    main(["stats", "--build", str(build), "--json", "--with-paths"])
    return sorted(e["message"] for e in json.loads(capsys.readouterr().out)["errors"])


def test_coco_annotations_with_unknown_categories_or_nan_points_are_errors(tmp_path, capsys):
    root = tmp_path / "coco"
    doc = write_coco(root)
    build = tmp_path / "build"
    assert ingest(build, "--source", f"coco:{root}") == 0
    before = stored(build)
    nan_coin = [math.nan if i == 3 else v for i, v in enumerate(COIN_A)]
    doc["annotations"] += [
        {"id": 77, "image_id": 2, "category_id": 99, "segmentation": [COIN_A], "iscrowd": 0},
        {"id": 78, "image_id": 1, "category_id": 1, "segmentation": [nan_coin], "iscrowd": 0},
        "not an annotation",
    ]
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(doc), encoding="utf-8")
    assert ingest(build, "--source", f"coco:{root}") == 1
    ann = "annotations/instances_val2017.json"
    assert error_lines(build, capsys) == [
        f"{ann}: annotation #8: is not an object; left out",
        f"{ann}: annotation 77: category_id 99 is not among its categories; left out",
        "val2017/coins.png: annotation 78: polygon coordinate 3 is nan, not a finite number",
    ]
    # coffee.png lost only the unknown object; astronaut.png untouched; coins.png kept from the earlier run
    assert stored(build) == before


def test_samed2d_entries_leaving_the_source_folder_are_errors_and_never_read(tmp_path, capsys):
    root = tmp_path / "sam"
    make_samed2d(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    stem = "ct_00--AbdomenCT1K--Case_00099--x_0001"
    shutil.copy(root / "images" / f"{CT}.png", outside / f"{stem}.png")
    shutil.copy(root / "masks" / f"{CT}--0000_000.png", outside / f"{stem}--0000_000.png")
    index = json.loads((root / "SAMed2D_v1.json").read_text())
    index[f"../outside/{stem}.png"] = [f"../outside/{stem}--0000_000.png"]
    index[f"images/{EYE}.png"].append(str(outside / f"{EYE}--0000_001.png"))  # an absolute mask path
    (root / "SAMed2D_v1.json").write_text(json.dumps(index))
    build = tmp_path / "build"
    assert ingest(build, "--source", f"samed2d:{root}") == 1
    assert error_lines(build, capsys) == [
        f"../outside/{stem}.png: listed in SAMed2D_v1.json but leaves the source folder; not read",
        f"images/{EYE}.png: mask '{outside / f'{EYE}--0000_001.png'}' of its entry in SAMed2D_v1.json leaves the "
        "source folder; not read",
    ]
    assert {item for item, _ in stored(build)} == {f"images/{CT}.png"}


def test_slake_boxes_without_size_or_masks_are_errors_naming_the_file(tmp_path, capsys):
    root = tmp_path / "slake"
    make_slake(root)
    build = tmp_path / "build"
    sources = sources_toml(tmp_path / "sources.toml", [{"name": "slake", "kind": "slake", "path": str(root)}])
    assert ingest(build, "--sources", str(sources)) == 1  # xmlab2 has neither mask nor boxes
    before = stored(build)
    assert {item for item, _ in before} == {"imgs/xmlab0", "imgs/xmlab1"}
    (root / "imgs/xmlab0/detection.json").write_text(json.dumps([{"Liver": [30.0, 20.0, -40.0, 30.0]}]))
    assert ingest(build, "--sources", str(sources)) == 1
    lines = error_lines(build, capsys)
    assert "imgs/xmlab0/detection.json: box of 'Liver' has no area" in lines, lines
    assert stored(build) == before  # the earlier regions of xmlab0 are kept
    # a folder with boxes but no mask, where the options leave out boxes without a mask: said, not dropped
    (root / "imgs/xmlab1/mask.png").unlink()
    skip = sources_toml(tmp_path / "skip.toml", [{"name": "slake", "kind": "slake", "path": str(root),
                                                  "options": {"unmatched_boxes": "skip"}}])
    assert ingest(tmp_path / "b2", "--sources", str(skip)) == 1
    lines = error_lines(tmp_path / "b2", capsys)
    assert ("imgs/xmlab1: no mask.png, and options.unmatched_boxes = 'skip' leaves out every box of "
            "detection.json: nothing to ground") in lines, lines
    assert Image.open(root / "imgs/xmlab0/mask.png").size == (128, 128)  # the user's files untouched
