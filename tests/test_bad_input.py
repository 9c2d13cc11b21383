"""Hostile inputs to ingest (issue 12): each is one item's clear error, never a crash of the run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from dicom_fixtures import contour, ct_series, make_rtstruct, square
from ingest_fixtures import ingest, mni, write_pair
from test_source_images2d import disc_mask, retina, write

from vgmed_build.catalog import open_catalog
from vgmed_build.cli import main

BAD = os.fsdecode(b"caf\xe9")  # Latin-1 'cafe' with an accent: not UTF-8, Python gives a surrogate
ESCAPED = "caf\\xe9"


def catalog_rows(build: Path) -> tuple[list[str], dict[str, str]]:
    """(item keys stored as done, ingest errors by item)."""
    with open_catalog(build, create=False) as catalog:
        done = [k for (k,) in catalog.conn.execute("SELECT item_key FROM items WHERE status='done' ORDER BY 1")]
        errors = dict(catalog.conn.execute("SELECT item, message FROM errors WHERE stage='ingest'"))
    return done, errors


def test_non_utf8_nifti_file_name_is_one_items_error(tmp_path, capsys):
    image, labels, affine = mni()
    src = tmp_path / "nifti"
    write_pair(src, "good", image, labels, affine)
    write_pair(src, BAD, image, labels, affine)
    build = tmp_path / "build"
    assert ingest(build, "--source", f"nifti:{src}", "--modality", "MRI", "--with-paths") == 1
    done, errors = catalog_rows(build)
    assert done == ["good.nii.gz"]
    assert list(errors) == [f"{ESCAPED}.nii.gz"]
    assert "is not valid UTF-8" in errors[f"{ESCAPED}.nii.gz"]
    assert f"{ESCAPED}.nii.gz: file or folder name" in capsys.readouterr().err


def test_non_utf8_dicom_folder_name_is_one_items_error(tmp_path, capsys):
    src = tmp_path / "dicom"
    good = ct_series(src / "good")
    make_rtstruct(good, {"tumour": [(2, contour(square(40, 30, 60, 50), good[2]))]}, src / "rt_good.dcm")
    bad = ct_series(src / BAD)
    make_rtstruct(bad, {"tumour": [(2, contour(square(40, 30, 60, 50), bad[2]))]}, src / "rt_bad.dcm")
    build = tmp_path / "build"
    assert ingest(build, "--source", f"dicom:{src}") == 1
    done, errors = catalog_rows(build)
    assert done == ["good"]
    assert len(errors) == 1 and ESCAPED in next(iter(errors.values()))
    out = capsys.readouterr()
    assert "1 ingested" in out.out and "UnicodeEncodeError" not in out.err + out.out


def test_non_utf8_image_and_mask_names_are_one_items_error(tmp_path, capsys):
    src = tmp_path / "fundus"
    retina(src, "images/eye1.jpg")
    write(src / "masks" / "eye1_disc.png", disc_mask())
    retina(src, f"images/{BAD}.jpg")
    write(src / "masks" / f"{BAD}_disc.png", disc_mask())
    build = tmp_path / "build"
    assert ingest(build, "--source", f"images2d:{src}", "--modality", "Fundus") == 1
    done, errors = catalog_rows(build)
    assert done == ["images/eye1.jpg"]
    assert list(errors) == [f"images/{ESCAPED}.jpg"]
    capsys.readouterr()
    assert main(["stats", "--build", str(build), "--json", "--with-paths"]) == 1
    stats = json.loads(capsys.readouterr().out)
    assert [e["item"] for e in stats["errors"]] == [f"images/{ESCAPED}.jpg"]
    assert len(list((build / "images").rglob("*.png"))) == 1


def test_sources_file_options_are_type_checked(tmp_path, capsys):
    """Issue 12.9: a quoted "false" is not true, a number is not a suffix: the message says which."""
    src = tmp_path / "fundus"
    retina(src, "images/eye1.jpg")
    sources = tmp_path / "sources.toml"
    cases = [
        ('kind = "images2d"\nmodality = "Fundus"\n[source.options]\nskip_empty = "false"',
         "option 'skip_empty' = 'false' (str): expected a boolean (true or false, unquoted)"),
        ('kind = "nifti"\n[source.options]\nlabel_suffix = 3', "option 'label_suffix' = 3 (int): expected a string"),
        ('kind = "images2d"\n[source.options]\nignore_values = [0, "255"]',
         "option 'ignore_values' = [0, '255'] (list): expected a list of integers"),
        ('kind = "slake"\n[source.options]\nmatch_iou = "0.5"', "option 'match_iou' = '0.5' (str): expected a number"),
    ]
    for body, expected in cases:
        sources.write_text(f'[[source]]\nname = "eyes"\npath = "fundus"\n{body}\n', encoding="utf-8")
        assert ingest(tmp_path / "build", "--sources", str(sources)) == 2
        err = capsys.readouterr().err
        assert f"{sources}: source 'eyes': {expected}" in err, err
        assert "Traceback" not in err
    assert not (tmp_path / "build").exists()  # refused before anything was written


def strict_json(text: str):
    """json.loads that refuses NaN / Infinity (not JSON; other readers reject them)."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in stored JSON"))


def test_nan_and_inf_volumes(tmp_path, capsys):
    """Issue 12.3: all-NaN and constant volumes are errors; NaN/Inf voxels do not move the window."""
    image, labels, affine = mni()
    src = tmp_path / "nifti"
    write_pair(src, "all_nan", np.full(image.shape, np.nan, np.float32), labels, affine)
    write_pair(src, "constant", np.full(image.shape, 7.0, np.float32), labels, affine)
    spiky = image.astype(np.float32)
    spiky[::7, ::5, ::3] = np.inf
    spiky[1::7, ::5, ::3] = -np.inf
    spiky[2::7, ::5, ::3] = np.nan
    write_pair(src, "spiky", spiky, labels, affine)
    build = tmp_path / "build"
    assert ingest(build, "--source", f"nifti:{src}", "--modality", "MRI", "--with-paths") == 1
    done, errors = catalog_rows(build)
    assert done == ["spiky.nii.gz"]
    assert "no finite intensity" in errors["all_nan.nii.gz"]
    assert "no contrast (every finite value is 7)" in errors["constant.nii.gz"]
    finite = spiky[np.isfinite(spiky)]
    expected = [float(v) for v in np.percentile(finite, [0.5, 99.5])]
    with open_catalog(build, create=False) as catalog:
        records = [strict_json(r) for (r,) in catalog.conn.execute("SELECT record_json FROM images")]
    assert records and all(np.allclose(r["window"], expected) for r in records)
    assert "error [nifti] all_nan.nii.gz: image has no finite intensity" in capsys.readouterr().err


def test_folder_names_stay_out_of_shared_outputs_unless_with_paths(tmp_path, capsys):
    """Issue 12.11: a DICOM folder named after the patient reaches no export, log or task by default."""
    from vgmed_build.identifiers import item_pseudonym
    from vgmed_build.review.state import load_drafts
    from vgmed_build.review.tasks import task_payload

    folder = "Smith_John_MRN4455"
    src = tmp_path / "dicom"
    series = ct_series(src / folder)
    make_rtstruct(series, {"tumour": [(2, contour(square(40, 30, 60, 50), series[2]))]}, src / "rt.dcm")
    (src / folder / "export.log").write_text("not an image\n")  # an error record about a file in that folder
    build = tmp_path / "build"
    assert ingest(build, "--source", f"dicom:{src}") == 1
    shared = capsys.readouterr()
    for args in (["regions"], ["stats"], ["stats", "--json"], ["drafts"]):
        if args == ["drafts"]:
            assert main(["generate", "--build", str(build)]) == 0
        main([*args, "--build", str(build)])
        shared_out = capsys.readouterr()
        shared = (shared[0] + shared_out.out, shared[1] + shared_out.err)
    with open_catalog(build, create=False) as catalog:
        tasks = [task_payload(row, "/img.png") for row in load_drafts(catalog)]
    text = "".join(shared) + json.dumps(tasks)
    assert tasks and "MRN4455" not in text and "Smith" not in text
    assert item_pseudonym("dicom-" + text.split('"name": "dicom-')[1][:8], folder) in text
    assert "--with-paths shows them" in shared[1]
    # asked for: the site's own view names the folder
    main(["regions", "--build", str(build), "--with-paths"])
    main(["stats", "--build", str(build), "--with-paths"])
    assert text.count(folder) == 0 and capsys.readouterr().out.count(folder) >= 2
