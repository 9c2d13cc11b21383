"""`vgmed-build validate`: each check must catch its fault, on our releases and on published downloads."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from release_fixtures import made_release

from vgmed_build.cli import main
from vgmed_build.identifiers import (
    ForbidFileError,
    find_forbidden,
    find_forbidden_bytes,
    find_patterns,
    load_forbid_file,
)
from vgmed_build.release_format import ATTRIBUTE_FILE, LOCALIZATION_FILE, box_format, box_problem, raw_boxes
from vgmed_build.validate import validate_release

LINE = re.compile(r"^[^:\s]+:\d+: .+$")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return made_release(tmp_path_factory.mktemp("validate"))


@pytest.fixture()
def rel(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "rel"))


def problems(root: Path, forbid=None, layout: str = "vgmed") -> list[str]:
    return [p.format() for p in validate_release(root, forbid, layout).problems]


def edit_line(path: Path, number: int, change) -> None:
    lines = path.read_text().splitlines()
    record = json.loads(lines[number - 1])
    change(record)
    lines[number - 1] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")


def test_clean_release_passes_cli(pristine, capsys):
    assert main(["validate", str(pristine)]) == 0
    out = capsys.readouterr().out
    assert "vgmed release" in out and out.strip().endswith("OK")


def test_missing_path_is_called_missing(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nowhere")]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {tmp_path / 'nowhere'}: no such directory\n"
    assert "published" not in captured.out + captured.err
    assert validate_release(tmp_path / "nowhere").problems[0].message == "does not exist"


def test_bad_box_and_checksum_reported_with_file_and_line(rel, capsys):
    edit_line(rel / ATTRIBUTE_FILE, 2, lambda r: r.update(bbox=[[0, 0, r["width"] + 1, 5]]))
    assert main(["validate", str(rel)]) == 1
    out = capsys.readouterr().out.splitlines()
    found = [line for line in out if not line.startswith("skipped") and " OK" not in line][:-1]
    assert all(LINE.match(line) for line in found), found
    assert any(line.startswith(f"{ATTRIBUTE_FILE}:2: box") and "outside" in line for line in found)
    assert any(line.startswith("manifest.json:") and f"{ATTRIBUTE_FILE}: SHA-256 differs" in line for line in found)


def test_schema_violation_and_duplicate_id(rel):
    path = rel / LOCALIZATION_FILE
    lines = path.read_text().splitlines()
    first = json.loads(lines[0])
    dup = dict(json.loads(lines[1]), id=first["id"])
    broken = dict(first, side=None)
    path.write_text("\n".join([lines[0], json.dumps(dup), json.dumps(broken), "{not json"] + lines[2:]) + "\n")
    found = problems(rel)
    assert any(p.startswith(f"{LOCALIZATION_FILE}:2: duplicate id {first['id']}") for p in found)
    assert any(p.startswith(f"{LOCALIZATION_FILE}:3: schema: side") for p in found)
    assert any(p.startswith(f"{LOCALIZATION_FILE}:4: not valid JSON") for p in found)


def test_missing_corrupt_and_unlisted_images(rel):
    images = sorted((rel / "images").iterdir())
    images[0].unlink()
    images[1].write_bytes(images[1].read_bytes()[:100])
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(rel / "images" / "extra.png")
    found = "\n".join(problems(rel))
    assert f"image images/{images[0].name}: missing" in found
    assert f"image images/{images[1].name}: cannot be read" in found
    assert f"lists images/{images[0].name}, which is missing" in found
    assert "images/extra.png:0: not listed in manifest.json" in found
    assert "images/extra.png:0: image is not referenced by any record" in found


def test_wrong_image_size_counts_and_convention(rel):
    edit_line(rel / LOCALIZATION_FILE, 1, lambda r: r.update(width=r["width"] * 2))
    edit_line(rel / LOCALIZATION_FILE, 2, lambda r: r.update(bbox_convention="xyxy_inclusive"))
    manifest = json.loads((rel / "manifest.json").read_text())
    manifest["counts"]["by_modality"]["CT"] += 1
    (rel / "manifest.json").write_text(json.dumps(manifest, indent=2))
    found = "\n".join(problems(rel))
    assert f"{LOCALIZATION_FILE}:1: width/height" in found
    assert "counts.by_modality is" in found
    assert f"{LOCALIZATION_FILE}:2: bbox_convention xyxy_inclusive but the manifest says xyxy_exclusive" in found


def test_missing_file_and_card_sections(rel):
    (rel / ATTRIBUTE_FILE).unlink()
    card = (rel / "README.md").read_text().replace("## Limitations", "## Other")
    (rel / "README.md").write_text(card)
    found = "\n".join(problems(rel))
    assert f"{ATTRIBUTE_FILE}:0: missing" in found
    assert "README.md:0: no '## Limitations' section" in found


def test_preview_flag_must_match_card(rel):
    manifest = json.loads((rel / "manifest.json").read_text())
    manifest["preview"] = True
    (rel / "manifest.json").write_text(json.dumps(manifest, indent=2))
    found = problems(rel)
    assert any("README.md:" in p and "first line after the YAML header must say it is a PREVIEW" in p for p in found)


def test_identifiers_in_text_names_and_png_metadata(rel, tmp_path):
    card = rel / "README.md"
    card.write_text(card.read_text() + "\nScanned by DOE^JANE on 20190412.\n")
    image = sorted((rel / "images").iterdir())[0]
    info = PngInfo()
    info.add_text("Comment", "StudyInstanceUID 1.2.840.113619.2.55.3")
    Image.open(image).save(image, pnginfo=info)
    renamed = rel / "images" / "Smith_John.png"
    shutil.copyfile(sorted((rel / "images").iterdir())[1], renamed)
    forbid_file = tmp_path / "forbid.txt"
    forbid_file.write_text("# patients\nsmith_john\n")
    found = "\n".join(problems(rel, load_forbid_file(forbid_file)))
    assert "looks like a DICOM person name" in found and "looks like a DICOM date" in found
    assert f"images/{image.name}:0: image carries a tEXt metadata chunk" in found
    assert f"images/{image.name}:0: image metadata (tEXt) looks like a DICOM UID" in found
    assert "images/Smith_John.png:0: file name contains the forbidden string from forbid.txt:2" in found
    # the report never repeats what it found
    for secret in ("DOE^JANE", "20190412", "1.2.840.113619", "smith_john"):
        assert secret not in found.replace("Smith_John.png", "")


def test_forbidden_string_in_image_bytes(rel, tmp_path):
    image = sorted((rel / "images").iterdir())[0]
    image.write_bytes(image.read_bytes() + b"trailing ACC-998877 bytes")
    forbid_file = tmp_path / "forbid.txt"
    forbid_file.write_text("acc-998877\n")
    assert f"images/{image.name}:0: contains the forbidden string from forbid.txt:1" in problems(
        rel, load_forbid_file(forbid_file)
    )


def test_identifier_patterns():
    positives = ["DOE^JOHN", "1.2.840.10008.5.1.4", "born 19561103", "PatientID", "(0010,0020)"]
    for text in positives:
        assert find_patterns(text), text
    negatives = [
        "a3f1c9e07b2d4e19",  # a 16-hex id
        "9d1416c3c72ca56720190412aa",  # a date-like run inside a hash
        '"area_ratio": 0.20190412',  # decimals
        "vgmed 0.1.0 on 127.0.0.1",  # versions and addresses
        "2026-01-01T00:00:00Z",  # the manifest's ISO time
        "Is the liver round or elongated?",
    ]
    for text in negatives:
        assert not find_patterns(text), text


def test_person_name_pattern_is_linear_and_matches_as_the_plain_regex():
    """The PN check must give the column the plain regex gives, on every short text of the characters
    it cares about, and read a long run without '^' once (the plain regex took 3.3 s on 16,000 letters
    and hours on 1 MB)."""
    import itertools
    import time

    plain = re.compile(r"[A-Za-z][A-Za-z' -]*\^[A-Za-z^]")

    def column(text: str) -> int | None:
        found = [f for f in find_patterns(text) if "person name" in f]
        return int(found[0].rsplit(" ", 1)[1]) if found else None

    for n in range(7):
        for chars in itertools.product("a' ^1", repeat=n):
            text = "".join(chars)
            m = plain.search(text)
            assert column(text) == (m.start() + 1 if m else None), repr(text)
    for text in ["Dr O'Brien-Smith^Anne", "x 1 DOE^JOHN", "  ^A", "A^^", "SMITH^", "a - ^b"]:
        m = plain.search(text)
        assert column(text) == (m.start() + 1 if m else None), text
    for text in ["a" * 16_000, "a " * 500_000, "Ab-" * 1_000_000, ("a" * 99 + "^1") * 10_000]:
        start = time.perf_counter()
        find_patterns(text)
        assert time.perf_counter() - start < 2.0, len(text)


def test_a_30_mb_line_is_reported_not_read(rel, capsys):
    """One hostile 30 MB line is reported with its file and line, and the run still checks the rest."""
    import time

    path = rel / LOCALIZATION_FILE
    lines = path.read_text().splitlines()
    record = json.loads(lines[0])
    record["answer"] = "a" * 30_000_000
    path.write_text("\n".join([lines[0], json.dumps(record)] + lines[1:]) + "\n")
    edit_line(rel / ATTRIBUTE_FILE, 2, lambda r: r.update(bbox=[[0, 0, r["width"] + 1, 5]]))
    start = time.perf_counter()
    assert main(["validate", str(rel)]) == 1
    elapsed = time.perf_counter() - start
    out = capsys.readouterr().out
    assert elapsed < 60, elapsed
    assert f"{LOCALIZATION_FILE}:2: line of 30000" in out and "a record may have: not read" in out
    assert f"{LOCALIZATION_FILE}:2: line of 30000" in out and "not scanned for identifiers" in out
    assert f"{ATTRIBUTE_FILE}:2: box" in out  # the other file is still checked


def test_forbidden_strings_match_whole_words_unless_starred(rel, tmp_path):
    forbid_file = tmp_path / "forbid.txt"
    forbid_file.write_text("Doe\nWhite\n4455\n*hansen\nJosé\n")
    forbid = load_forbid_file(forbid_file)

    def hits(text: str) -> list[int]:
        return [int(m.rsplit(":", 1)[1]) for m in find_forbidden(text, forbid)]

    assert hits("Does the image show the liver?") == []                # "Doe" inside a word
    assert hits("Is the white matter visible?") == [2]                 # a surname that is also a word still is
    assert hits("Is the whiteness visible?") == []
    assert hits("case Doe_Jane") == [1] and hits("JANE DOE") == [1]   # underscores and case do not hide it
    assert hits("MRN4455.nii.gz") == [3] and hits("id 44556") == []   # a number: digits continue it, letters not
    assert hits("Johansen") == [4] and hits("Hansen") == [4]          # '*': part of a longer word too
    assert hits("José's scan") == [5] and hits("Josémaria") == []
    assert find_forbidden_bytes("trailing doe_jane and José".encode("latin-1"), forbid) == [
        "contains the forbidden string from forbid.txt:1", "contains the forbidden string from forbid.txt:5"]
    assert find_forbidden_bytes(b"\x89PNG Does Doesn't", forbid) == []
    # end to end: the card's "Does" is no hit, a name is
    card = rel / "README.md"
    card.write_text(card.read_text() + "\nDoes the image show the liver?\n")
    assert not any("forbid.txt:1" in p for p in problems(rel, forbid))
    card.write_text(card.read_text() + "\nContact: Jane Doe.\n")
    assert any("README.md" in p and "forbid.txt:1" in p for p in problems(rel, forbid))


def test_forbid_file_rejects_short_strings(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("ok-string\nab\n")
    with pytest.raises(ForbidFileError, match="f.txt:2"):
        load_forbid_file(path)


# ---------------------------------------------------------------- published downloads


def make_published(root: Path) -> Path:
    """A download in the published layout: no manifest, inclusive xyxy, a SLAKE item in xywh."""
    (root / "images" / "slake").mkdir(parents=True)
    grey = np.add.outer(np.arange(40), np.arange(50)).astype(np.uint8)
    Image.fromarray(grey).save(root / "images" / "ct_1.png")
    Image.fromarray(np.stack([grey[:30, :30]] * 3, axis=-1)).save(root / "images" / "slake" / "xmlab1.jpg")
    loc = [
        {
            "image": "images/ct_1.png",
            "question": "Is there a liver in the image?",
            "bbox": [0, 0, 49, 39],
            "label": "liver",
            "modality": "CT",
            "ratio": 0.2,
        },
        {
            "image": "images/slake/xmlab1.jpg",
            "question": "Is there a lung in the image?",
            "original_bboxes": [[10, 10, 20, 20]],
        },
    ]
    (root / LOCALIZATION_FILE).write_text("".join(json.dumps(r) + "\n" for r in loc))
    (root / ATTRIBUTE_FILE).write_text(
        json.dumps({"image": "images/ct_1.png", "question": "Is the liver large?", "bbox": [[5, 5, 10, 10]]}) + "\n"
    )
    return root


def test_published_download(tmp_path, capsys):
    root = make_published(tmp_path / "pub")
    assert main(["validate", "--published", str(root)]) == 0
    out = capsys.readouterr().out
    assert "published VGMED layout" in out and "skipped: checksums" in out and "skipped: duplicate ids" in out
    assert "no checksums checked" in out and "SHA" not in out
    # the inclusive max index W-1 is fine, W is not; SLAKE xywh must fit as x + w <= W
    edit_line(root / LOCALIZATION_FILE, 1, lambda r: r.update(bbox=[0, 0, 50, 39]))
    edit_line(root / LOCALIZATION_FILE, 2, lambda r: r.update(original_bboxes=[[10, 10, 25, 5]]))
    found = problems(root, layout="published")
    assert len(found) == 2
    assert found[0].startswith(f"{LOCALIZATION_FILE}:1: box [0, 0, 50, 39] (xyxy)")
    assert found[1].startswith(f"{LOCALIZATION_FILE}:2: box [10, 10, 25, 5] (xywh)")


def test_box_helpers():
    slake = {"image": "a/SLAKE/x.jpg", "bbox": [1, 2, 3, 4]}
    assert (raw_boxes(slake), box_format(slake)[0]) == ([[1, 2, 3, 4]], "xywh")
    other = {"image": "a.png", "original_bboxes": [[1, 2, 3, 4]]}
    assert (raw_boxes(other), box_format(other)[0]) == ([[1, 2, 3, 4]], "xyxy_inclusive")
    assert box_format({"image": "a.png", "bbox": [1, 2, 3, 4], "bbox_format": "xywh"})[0] == "xywh"
    assert box_problem([0, 0, 10, 10], "xyxy_exclusive", 10, 10) is None
    assert box_problem([0, 0, 10, 10], "xyxy_inclusive", 10, 10) is not None
    assert box_problem([3, 3, 3, 3], "xyxy_inclusive", 10, 10) is None  # one pixel
    assert box_problem([3, 3, 3, 3], "xyxy_exclusive", 10, 10) is not None  # empty
    assert box_problem([0, 0, 10, 10], "xywh", 10, 10) is None


def test_deleting_the_manifest_does_not_make_a_changed_release_pass(rel, capsys):
    """Issue 12.5: answers and an image changed, manifest.json deleted: still refused, in both modes."""
    edit_line(rel / ATTRIBUTE_FILE, 1, lambda r: r.update(answer="changed"))
    image = sorted((rel / "images").iterdir())[0]
    pixels = np.asarray(Image.open(image)).copy()
    pixels[:5, :5] = 255 - pixels[:5, :5]
    Image.fromarray(pixels).save(image)
    (rel / "manifest.json").unlink()
    assert main(["validate", str(rel)]) == 1
    out = capsys.readouterr().out
    assert "manifest.json:0: missing" in out and out.rstrip().endswith("problem(s)")
    assert main(["validate", "--published", str(rel)]) == 1
    out = capsys.readouterr().out
    assert "vgmed's dataset card (README.md), vgmed's schemas/, record ids" in out
    assert "this is a vgmed release, not a published download" in out
    # even the card alone (schemas and ids gone) marks the folder as ours
    shutil.rmtree(rel / "schemas")
    for name in (ATTRIBUTE_FILE, LOCALIZATION_FILE):
        lines = [json.loads(line) for line in (rel / name).read_text().splitlines()]
        (rel / name).write_text("".join(json.dumps({k: v for k, v in r.items() if k != "id"}) + "\n" for r in lines))
    assert any("vgmed's dataset card" in p for p in problems(rel, layout="published"))


def test_a_published_download_is_not_taken_for_a_release(tmp_path):
    root = make_published(tmp_path / "pub")
    assert problems(root)[0].startswith("manifest.json:0: missing") and "--published" in problems(root)[0]


def test_blank_images_are_flagged(rel):
    """Issue 12.3: a black (all-NaN volume) or constant image is not a valid release image."""
    images = sorted((rel / "images").iterdir())
    width, height = Image.open(images[0]).size
    Image.fromarray(np.zeros((height, width), np.uint8)).save(images[0])
    found = problems(rel)
    blank = f"image {images[0].relative_to(rel).as_posix()}: is blank: every pixel has the value 0"
    assert any(blank in p for p in found)


def test_nothing_outside_the_release_is_read(rel, tmp_path):
    """Issue 30: links leading out of the release and manifest paths above it are reported and never
    opened or hashed: a secret outside stays unread (the forbid scan never sees it), and a FIFO outside,
    which would block any reader, does not hang the run."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-VALUE\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    forbid = tmp_path / "forbid.txt"
    forbid.write_text("TOPSECRET-VALUE\n")
    image = json.loads((rel / ATTRIBUTE_FILE).read_text().splitlines()[0])["image"]
    (rel / image).unlink()
    (rel / image).symlink_to(secret)
    (rel / "README.md").unlink()
    (rel / "README.md").symlink_to(secret)
    (rel / "COCO_attribute.jsonl").symlink_to(fifo)
    (rel / "loop").symlink_to(rel / "loop")
    manifest = json.loads((rel / "manifest.json").read_text())
    manifest["files"]["../secret.txt"] = {"kind": "card", "bytes": 16, "sha256": "0" * 64}
    manifest["files"]["../fifo"] = {"kind": "card", "bytes": 0, "sha256": "0" * 64}
    (rel / "manifest.json").write_text(json.dumps(manifest, indent=2))
    run = subprocess.run(
        [sys.executable, "-m", "vgmed_build.cli", "validate", str(rel), "--forbid-file", str(forbid)],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 1, run.stderr
    out = run.stdout
    assert "forbidden string" not in out and "TOPSECRET" not in out
    link_out = "is a symbolic link that leads out of the release: not read (a release holds its own files)"
    for rel_path in (image, "README.md", "COCO_attribute.jsonl"):
        assert f"{rel_path}:0: {link_out}" in out, out
    assert "loop:0: cannot be resolved (a symbolic link loop): not read" in out
    for listed in ("../secret.txt", "../fifo"):
        assert f"lists {listed!r}, which leaves the release (an absolute or ../ path); not read" in out
