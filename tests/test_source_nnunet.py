"""MSD and nnU-Net v2 datasets as users hold them, written with nibabel and Pillow.

The Decathlon's 4D images (Task01_BrainTumour: four MR sequences in one file) ingest with the README's
one flag, channel 0 by default and another with ``--option channel=N``; nnU-Net v2's region-based
labels, its 2D ``.png`` datasets and its ``nnunet`` kind name work; a channel name that does not say
the modality is an error unless ``modality`` is given. Each result is checked against the same
anatomy read another way (a 3D file of the chosen channel; label values merged by the sources file;
connected components counted with scipy).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from ingest_fixtures import LABELS, facts, ingest, mni, save, sources_toml, write_msd
from PIL import Image
from scipy import ndimage

from vgmed_build.cli import main
from vgmed_build.modality import from_msd_channel

BRATS_CHANNELS = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}  # Task01_BrainTumour's dataset.json


def write_4d_msd(root: Path, image: np.ndarray, labels: np.ndarray, affine: np.ndarray) -> Path:
    """Task01_BrainTumour's layout: one 4D file per case (x, y, z, channel), MSD ``dataset.json``."""
    meta = {"name": "BRATS", "modality": BRATS_CHANNELS,
            "labels": {"0": "background", **{str(v): n for v, n in LABELS.items()}},
            "training": [{"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}]}
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    save(root / "imagesTr" / "BRATS_001.nii.gz", image, affine)
    save(root / "labelsTr" / "BRATS_001.nii.gz", labels, affine)
    return root


def channels(t1: np.ndarray) -> list[np.ndarray]:
    """Four distinct 'sequences' of the same anatomy."""
    return [t1, (255 - t1).astype(np.uint8), (t1 // 2).astype(np.uint8), np.sqrt(t1 * 255.0).astype(np.uint8)]


def one_item(build: Path) -> dict:
    (got,) = facts(build).values()
    return got


def test_msd_4d_images_take_channel_0_by_default_and_option_channel_picks_another(tmp_path, caplog):
    t1, labels, affine = mni(2)
    stack = channels(t1)
    root = write_4d_msd(tmp_path / "Task01_BrainTumour", np.stack(stack, axis=-1), labels, affine)
    caplog.set_level(logging.INFO)
    assert ingest(tmp_path / "b", "--source", f"msd:{root}") == 0            # the README's own example
    assert ("source 'Task01_BrainTumour': dataset.json lists 4 channels (0 FLAIR, 1 T1w, 2 t1gd, 3 T2w); "
            "using channel 0 (FLAIR)") in caplog.text
    assert ingest(tmp_path / "b1", "--source", f"msd:{root}", "--option", "channel=1") == 0
    assert ingest(tmp_path / "b9", "--source", f"msd:{root}", "--option", "channel=9") == 1
    for c in (0, 1):   # the same anatomy stored as a 3D file of that channel
        write_msd(tmp_path / f"ref{c}", {"BRATS_001": (stack[c], labels, affine)})
        assert ingest(tmp_path / f"r{c}", "--source", f"msd:{tmp_path / f'ref{c}'}", "--modality", "MRI") == 0
    assert one_item(tmp_path / "b") == one_item(tmp_path / "r0")
    assert one_item(tmp_path / "b1") == one_item(tmp_path / "r1")
    assert one_item(tmp_path / "b") != one_item(tmp_path / "b1")            # other pixels, other PNGs
    regions = [json.loads(line) for line in _regions(tmp_path / "b")]
    assert {r["modality"] for r in regions} == {"MRI"}                        # FLAIR is an MR sequence


def _regions(build: Path) -> list[str]:
    with sqlite3.connect(build / "catalog.sqlite") as conn:
        return [r for (r,) in conn.execute("SELECT record_json FROM regions")]


def test_option_flags_are_typed_like_a_sources_file(tmp_path, capsys):
    t1, labels, affine = mni(2)
    root = write_msd(tmp_path / "Task", {"a": (t1, labels, affine)})
    assert ingest(tmp_path / "b", "--source", f"msd:{root}", "--option", "plane=coronal",
                  "--option", "min_side_px=0") == 0
    regions = [json.loads(r) for r in _regions(tmp_path / "b")]
    assert {r["plane"] for r in regions} == {"coronal"}
    assert max(max(r["width"], r["height"]) for r in regions) < 512             # not enlarged
    capsys.readouterr()
    assert ingest(tmp_path / "c", "--source", f"msd:{root}", "--option", "min_side_px=big") == 2
    assert "option 'min_side_px' = 'big'" in capsys.readouterr().err
    assert ingest(tmp_path / "c", "--source", f"msd:{root}", "--option", "chanel=1") == 2
    assert "unknown key 'chanel' (did you mean 'channel'?)" in capsys.readouterr().err
    assert ingest(tmp_path / "c", "--source", f"msd:{root}", "--option", "channel") == 2
    assert "--option 'channel': expected KEY=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_nnunet_region_based_labels_are_the_union_of_their_values(tmp_path):
    t1, labels, affine = mni(2)
    root = tmp_path / "Dataset001_Regions"
    write_msd(root, {"mni": (t1, labels, affine)}, nnunet=True)
    meta = json.loads((root / "dataset.json").read_text())
    # 1, 3: left grey / white matter; 1, 2: grey matter of both sides; 4 alone. Regions overlap (1).
    meta["labels"] = {"background": 0, "left hemisphere": [1, 3], "grey matter": [1, 2], "right white matter": 4}
    meta["regions_class_order"] = [3, 2, 4]
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    assert ingest(tmp_path / "b", "--source", f"nnunet:{root}") == 0
    got = one_item(tmp_path / "b")
    # Independent reference: a plain MSD copy whose values the sources file merges, one source per
    # family of regions (a value has one name in a label map).
    plain = write_msd(tmp_path / "plain", {"mni": (t1, labels, affine)})
    cfg = sources_toml(tmp_path / "s.toml", [
        {"name": "hemi", "kind": "msd", "path": "plain",
         "labels": {"1": "left hemisphere", "3": "left hemisphere", "2": "", "4": "right white matter"}},
        {"name": "grey", "kind": "msd", "path": "plain", "labels": {"1": "grey matter", "2": "grey matter",
                                                                    "3": "", "4": ""}},
    ])
    assert plain.is_dir() and ingest(tmp_path / "r", "--sources", str(cfg)) == 0
    expected: dict = {}
    for item in facts(tmp_path / "r").values():
        expected.update(item)
    assert set(k[0] for k in got) == {"left hemisphere", "grey matter", "right white matter"}
    assert got == expected


def test_nnunet_2d_png_dataset(tmp_path):
    t1, labels, affine = mni(2)
    z = int(np.argmax((labels > 0).sum(axis=(0, 1))))
    image = np.ascontiguousarray(np.rot90(t1[:, :, z]))                  # any 2D picture and its label map
    label = np.ascontiguousarray(np.rot90(labels[:, :, z])).astype(np.uint8)
    root = tmp_path / "Dataset120_Slices"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    Image.fromarray(image).save(root / "imagesTr" / "slice_0000.png")
    Image.fromarray(label).save(root / "labelsTr" / "slice.png")
    meta = {"channel_names": {"0": "T1"}, "labels": {"background": 0, **{n: v for v, n in LABELS.items()}},
            "numTraining": 1, "file_ending": ".png"}
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    assert ingest(tmp_path / "b", "--source", f"nnunet:{root}", "--option", "min_side_px=0") == 0
    regions = {r["label"]: r for r in map(json.loads, _regions(tmp_path / "b"))}
    assert set(regions) == set(LABELS.values())
    for value, name in LABELS.items():   # boxes of 8-connected components of >= 16 px, by scipy
        comps, n = ndimage.label(label == value, structure=np.ones((3, 3)))
        boxes = []
        for sl in ndimage.find_objects(comps):
            if (comps[sl] > 0).sum() >= 16:
                boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
        r = regions[name]
        assert r["plane"] == "2d" and (r["width"], r["height"]) == (image.shape[1], image.shape[0])
        assert sorted(r["boxes"]) == sorted(boxes), name


@pytest.mark.parametrize("channel_name", ["noNorm", "zscore", "rgb_to_0_1", "brain"])
def test_a_channel_name_that_does_not_say_the_modality_needs_modality(tmp_path, capsys, channel_name):
    t1, labels, affine = mni(2)
    root = write_msd(tmp_path / "Dataset002", {"a": (t1, labels, affine)}, nnunet=True)
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = {"0": channel_name}
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    assert ingest(tmp_path / "b", "--source", f"nnunet:{root}") == 1
    capsys.readouterr()
    main(["stats", "--build", str(tmp_path / "b"), "--json", "--with-paths"])
    (error,) = json.loads(capsys.readouterr().out)["errors"]
    assert error["message"].startswith(f"dataset.json: channel 0 is named {channel_name!r}, which does not say "
                                       "the modality")
    assert ingest(tmp_path / "b", "--source", f"nnunet:{root}", "--modality", "MRI") == 0


@pytest.mark.parametrize(("name", "modality"), [
    ("CT", "CT"), ("ct", "CT"), ("T2", "MRI"), ("ADC", "MRI"), ("t1gd", "MRI"), ("X-ray", "X-ray"), ("PET", "PET"),
    ("US", "Ultrasound"), ("noNorm", ""), ("RGB", ""), ("CBCT", "")])
def test_channel_names_that_say_the_modality(name, modality):
    assert from_msd_channel(name) == modality


def test_ingest_warns_about_placeholder_and_raw_dataset_names(tmp_path, caplog):
    t1, labels, affine = mni(2)
    pairs = tmp_path / "pairs"
    save(pairs / "a.nii.gz", t1, affine)
    save(pairs / "a_seg.nii.gz", labels, affine)                        # values nothing names
    caplog.set_level(logging.INFO)
    assert ingest(tmp_path / "b", "--source", f"nifti:{pairs}", "--modality", "MRI") == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "source 'pairs': 4 label value(s) have no name and are stored as placeholders (label_1, label_2, label_3, "
        "label_4), which questions would carry as written; name them in the sources file's labels table "
        '("1" = "...") and ingest again (drafting rejects placeholder names)']
    hippo = write_msd(tmp_path / "Task04_Hippocampus", {"h": (t1, np.where(labels <= 2, labels, 0), affine)})
    meta = json.loads((hippo / "dataset.json").read_text())
    meta["labels"] = {"0": "background", "1": "Anterior", "2": "Posterior"}  # the MSD's own names
    (hippo / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    caplog.clear()
    assert ingest(tmp_path / "h", "--source", f"msd:{hippo}") == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(
        "source 'Task04_Hippocampus': label names taken as written in dataset.json (Anterior, Posterior) reach "
        "questions verbatim")
    # Named in the sources file: no warning.
    cfg = sources_toml(tmp_path / "s.toml", [
        {"name": "hippo", "kind": "msd", "path": "Task04_Hippocampus",
         "labels": {"1": "hippocampus head", "2": "hippocampus body and tail"}},
        {"name": "pairs", "kind": "nifti", "path": "pairs", "modality": "MRI",
         "labels": {str(v): n for v, n in LABELS.items()}},
    ])
    caplog.clear()
    assert ingest(tmp_path / "named", "--sources", str(cfg)) == 0
    assert [r for r in caplog.records if r.levelno == logging.WARNING] == []
