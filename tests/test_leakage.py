"""Leakage and selection hygiene (issue 25 item 5): planted duplicates between a release and a VQA benchmark
(re-encoded JPEG, resized, cropped by a few pixels, a lossless copy) among unrelated images (other photos,
other slices of the same MNI152 volume), the exclusion list that grounding and vqa honour, heads chosen on a
named split, and reproduce refusing to tune on the benchmark it reports on."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage import data

from vgmed_eval.cli import main
from vgmed_eval.heads import in_dev
from vgmed_eval.leakage import HASH_SIDE, dhash, hamming, hash_image, matches

MNI = Path(__file__).parents[1] / "vgmed_build" / "sample" / "mni152" / "imagesTr" / "mni152_0000.nii.gz"
TINY = ["--model", "builtin:tiny-llava", "--device", "cpu", "--no-progress"]


def _slice(z: int) -> Image.Image:
    volume = nib.load(MNI).get_fdata()
    pixels = 255 * (volume[:, :, z] - volume.min()) / (volume.max() - volume.min())
    return Image.fromarray(np.rot90(pixels).astype(np.uint8))


def _photos() -> dict[str, Image.Image]:
    return {"camera": Image.fromarray(data.camera()), "coins": Image.fromarray(data.coins()),
            "astronaut": Image.fromarray(data.astronaut()), "moon": Image.fromarray(data.moon()),
            "chelsea": Image.fromarray(data.chelsea()), "clock": Image.fromarray(data.clock()),
            "text": Image.fromarray(data.text()), "brick": Image.fromarray(data.brick())}


# release image -> (how the benchmark's copy is made, kind expected)
PLANTED = {"camera": ("jpeg", "near"), "coins": ("half", "near"), "astronaut": ("crop", "near"),
           "moon": ("copy", "identical"), "slice40": ("jpeg", "near")}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("leakage")
    photos = _photos()
    release_images = {name: photos[name] for name in ("camera", "coins", "astronaut", "moon", "brick")}
    release_images |= {"slice40": _slice(40), "slice60": _slice(60)}
    release = root / "release"
    (release / "images").mkdir(parents=True)
    records = []
    for name, image in release_images.items():
        image.save(release / "images" / f"{name}.png")
        w, h = image.size
        records.append({"id": f"q-{name}", "image": f"images/{name}.png", "question": "Is there a lesion in the image?",
                        "q_type": "localization", "modality": "CT", "bbox": [[w // 4, h // 4, w // 2, h // 2]],
                        "bbox_convention": "xyxy_exclusive", "answer": "yes", "label": "lesion"})
    (release / "VGMED_localization.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    # a SLAKE-layout benchmark: the planted copies and unrelated images (other photos, slices 6 apart)
    bench = root / "slake"
    entries = []
    copies = {}
    for name, (how, _) in PLANTED.items():
        image = release_images[name].convert("RGB")
        w, h = image.size
        copies[name] = {"jpeg": image, "half": image.resize((w // 2, h // 2)),
                        "crop": image.crop((4, 3, w - 3, h - 4)), "copy": image}[how]
    unrelated = {"chelsea": photos["chelsea"], "clock": photos["clock"], "text": photos["text"],
                 "slice34": _slice(34), "slice46": _slice(46), "slice54": _slice(54), "slice66": _slice(66)}
    for i, (name, image) in enumerate({**copies, **unrelated}.items()):
        how = PLANTED.get(name, ("", ""))[0]
        rel = f"xmlab{i}/source.{'jpg' if how == 'jpeg' else 'png'}"
        (bench / "imgs" / rel).parent.mkdir(parents=True)
        image.save(bench / "imgs" / rel, **({"quality": 75} if how == "jpeg" else {}))
        entries.append({"img_id": i, "img_name": rel, "question": f"Is this {name}?", "answer": "Yes", "q_lang": "en",
                        "location": "Abdomen", "modality": "CT", "answer_type": "CLOSED", "qid": i})
    (bench / "test.json").write_text(json.dumps(entries))
    return root, release, bench


def test_dhash_against_a_pixel_loop():
    image = Image.fromarray(data.camera()).crop((10, 20, 300, 250))
    across = image.convert("L").resize((HASH_SIDE + 1, HASH_SIDE), Image.Resampling.LANCZOS)
    down = image.convert("L").resize((HASH_SIDE, HASH_SIDE + 1), Image.Resampling.LANCZOS)
    bits = [across.getpixel((x + 1, y)) > across.getpixel((x, y)) for y in range(HASH_SIDE) for x in range(HASH_SIDE)]
    bits += [down.getpixel((x, y + 1)) > down.getpixel((x, y)) for y in range(HASH_SIDE) for x in range(HASH_SIDE)]
    words = [int("".join("1" if b else "0" for b in bits[i:i + 64]), 2) for i in range(0, len(bits), 64)]
    assert dhash(image).tolist() == words
    a, b = dhash(image), dhash(Image.fromarray(data.coins()))
    assert hamming(a[None], b[None])[0, 0] == sum(bin(int(x) ^ int(y)).count("1") for x, y in zip(a, b, strict=True))


def test_planted_duplicates_found_and_nothing_else(planted, tmp_path, capsys):
    _, release, bench = planted
    report, exclusions = tmp_path / "leakage.json", tmp_path / "exclude.json"
    assert main(["leakage", "--release", str(release), "--benchmark", f"slake={bench}", "--benchmark",
                 f"pmc-vqa={Path(__file__).parent / 'fixtures' / 'vqa' / 'pmc-vqa'}", "--out", str(report),
                 "--write-exclusions", str(exclusions)]) == 0
    printed = capsys.readouterr().out
    found = json.loads(report.read_text())
    slake = found["benchmarks"]["slake"]
    by_release = {Path(m["release"]).stem: m for m in slake["matches"]}
    assert {name: m["kind"] for name, m in by_release.items()} == {n: kind for n, (_, kind) in PLANTED.items()}
    assert len(slake["matches"]) == len(PLANTED)  # no photo or other slice matched
    assert slake["identical"] == 1 and slake["near"] == 4 and slake["images"] == 12
    assert found["benchmarks"]["pmc-vqa"]["matches"] == [] and found["release_images"] == 7
    assert "slake | 12 | 1 | 4 | 5" in printed
    listed = json.loads(exclusions.read_text())
    assert sorted(Path(p).stem for p in listed["release_images"]) == sorted(PLANTED)
    assert len(listed["benchmarks"]["slake"]["images"]) == 5 and listed["benchmarks"]["pmc-vqa"]["images"] == []


def test_margins_of_the_default_distance(planted):
    """The planted copies sit well inside the limit, the unrelated pictures well outside it."""
    _, release, bench = planted
    mine = [hash_image(p.name, Image.open(p)) for p in sorted((release / "images").iterdir())]
    theirs = [hash_image(str(p), Image.open(p)) for p in sorted((bench / "imgs").rglob("source.*"))]
    near = matches(mine, theirs, max_distance=512)
    planted_d = [m.distance for m in near if Path(m.release).stem in PLANTED and m.distance <= 70]
    others = [m.distance for m in near if m.distance > 70]
    assert len(planted_d) == len(PLANTED) and max(planted_d) <= 30  # the copies: 0 to 20 bits
    assert min(others) >= 80  # slice 40 against slice 34 (12 mm apart): 80 bits; everything else farther


def test_exclusions_honoured_by_grounding_and_vqa(planted, tmp_path):
    _, release, bench = planted
    exclusions = tmp_path / "exclude.json"
    assert main(["leakage", "--release", str(release), "--benchmark", f"slake={bench}", "--write-exclusions",
                 str(exclusions)]) == 0
    out = tmp_path / "g"
    assert main(["grounding", "--release", str(release), "--out", str(out), "--exclude", str(exclusions),
                 "--layers", "0", "--bootstrap", "10", "--chance-draws", "0", *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["excluded_questions"] == 5 and summary["n_questions"] == 2
    assert json.loads((out / "run.json").read_text())["flags"]["exclude"] == str(exclusions)
    assert set(pd.read_parquet(out / "per_layer.parquet")["id"]) == {"q-brick", "q-slice60"}
    vqa = tmp_path / "v"
    assert main(["vqa", "--benchmark", "slake", "--data", str(bench), "--out", str(vqa), "--exclude", str(exclusions),
                 "--max-new-tokens", "1", *TINY]) == 0
    results = json.loads((vqa / "results.json").read_text())
    assert results["excluded"]["questions"] == 5 and results["counts"]["loaded"] == 7
    asked = {json.loads(line)["question"] for line in (vqa / "predictions_baseline.jsonl").read_text().splitlines()}
    assert asked == {f"Is this {n}?" for n in ("chelsea", "clock", "text", "slice34", "slice46", "slice54", "slice66")}
    assert main(["vqa", "--benchmark", "slake", "--data", str(bench), "--out", str(tmp_path / "bad"), "--exclude",
                 str(bench / "test.json"), *TINY]) == 2


def test_heads_split_and_reproduce_refusal(planted, tmp_path, capsys):
    root, release, bench = planted
    out = tmp_path / "repro"
    args = ["reproduce", "--vgmed", str(release), "--out", str(out), "--benchmark", f"slake={bench}", "--top-k", "3",
            "--bootstrap", "10", "--max-new-tokens", "1", "--model", "builtin:tiny-llava", "--device", "cpu"]
    assert main(args) == 1  # the VQA step is refused: heads chosen on images the benchmark shares
    report = json.loads((out / "report.json").read_text())
    step = report["steps"]["vqa slake"]
    assert step["status"] == "failed" and "--allow-tuning-on-test" in step["message"]
    assert "5 release image(s) that are also in slake (1 identical, 4 near-identical" in step["message"]
    heads = json.loads((out / "heads.json").read_text())
    assert heads["selected_on"]["split"] == "all" and len(heads["selected_on"]["images"]) == 7
    assert not (out / "vqa" / "slake" / "results.json").exists()
    assert main([*args, "--allow-tuning-on-test"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["steps"]["vqa slake"]["status"] == "done"
    assert report["steps"]["vqa slake"]["message"].startswith("allowed by --allow-tuning-on-test")
    run = json.loads((out / "run.json").read_text())  # issue 25 item 6: the reproduction's manifest
    assert run["command"] == "reproduce" and run["flags"]["allow_tuning_on_test"] is True
    assert run["steps"]["grounding"]["command"] == "grounding" and run["steps"]["vqa slake"]["command"] == "vqa"
    assert run["model"]["dtype"] == "float32" and run["protocol"]["name"] == "vgmed"
    # heads on the dev part: a fixed, hash-defined set of images, recorded
    grounding = out / "grounding"
    dev = tmp_path / "dev.json"
    assert main(["heads", "--results", str(grounding), "--top-k", "3", "--out", str(dev), "--split", "dev",
                 "--dev-fraction", "0.3"]) == 0
    chosen = json.loads(dev.read_text())["selected_on"]
    expected = sorted(f"images/{p.name}" for p in (release / "images").iterdir() if in_dev(f"images/{p.name}", 0.3))
    assert chosen["split"] == "dev" and chosen["images"] == expected and 0 < len(expected) < 7
    capsys.readouterr()
    assert main(["heads", "--results", str(grounding), "--out", str(dev), "--split", "dev", "--dev-fraction",
                 "0.0001"]) == 2
    assert "no scored question's image is in the dev part" in capsys.readouterr().err
    assert main(["heads", "--results", str(grounding), "--out", str(dev), "--split", "control"]) == 2  # no control


def test_in_dev_is_a_fixed_share():
    names = [f"images/ct/{i:05d}.png" for i in range(4000)]
    share = np.mean([in_dev(n, 0.2) for n in names])
    assert 0.18 < share < 0.22 and [in_dev(n, 0.2) for n in names[:50]] == [in_dev(n, 0.2) for n in names[:50]]
