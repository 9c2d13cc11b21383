"""Localization questions about absent structures (answer "no"): drafted only where ingest saw no
labelled pixel of the structure, balanced with the "yes" questions where the source has absent
structures (and, where it has too few, its surplus "yes" left out), flagged in the draft and the release
record, accepted by validate, and passed over by the grounding reader (there is no region to attend to)."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from ingest_fixtures import SAMPLE_SOURCES, ingest

from vgmed_build.cli import main
from vgmed_build.drafting.balance import ImageAbsence, absent_slots, balance_source, cut_yes
from vgmed_build.drafting.plan import absent_candidates, absent_targets
from vgmed_build.resources import schema_errors

STRUCTURES = [{"label": n} for n in ("left grey matter", "left white matter", "right grey matter",
                                      "right white matter")]


def test_absent_targets_take_different_structures_per_image():
    left = ["left grey matter", "left white matter"]
    region = {"image_id": "ab" * 8, "image_labels": left}
    cands = absent_candidates(region, STRUCTURES)
    assert cands == ["right grey matter", "right white matter"]
    picks = [absent_targets({**region, "label": lab}, cands, left, 2, 1) for lab in left]
    assert sorted(p[0] for p in picks) == cands and all(len(p) == 1 for p in picks)  # one each, different
    every = ["left grey matter", "left white matter", "right grey matter", "right white matter"]
    assert absent_candidates({"image_id": "ab" * 8, "image_labels": every}, STRUCTURES) == []
    # A build made before ingest recorded the image's labels: nothing is known to be absent.
    assert absent_candidates({"image_id": "ab" * 8, "label": "left grey matter"}, STRUCTURES) is None
    # A structure too small to be a region but labelled in the image is present, never asked as absent.
    small = absent_candidates({"image_id": "cd" * 8, "image_labels": [*left, "right white matter"]}, STRUCTURES)
    assert small == ["right grey matter"]
    # An image with one region and three absent structures carrying two extra "no": all three, once each.
    one = {"image_id": "ef" * 8, "label": "left grey matter", "image_labels": ["left grey matter"]}
    three = absent_targets(one, absent_candidates(one, STRUCTURES), ["left grey matter"], 3, 1)
    assert sorted(three) == ["left white matter", "right grey matter", "right white matter"]


@pytest.mark.parametrize(("rank", "regions", "quota", "per_region", "slots"), [
    (0, 2, 2, 1, [0]), (1, 2, 2, 1, [1]),  # the base share: one each
    (0, 2, 5, 1, [0, 2, 4]), (1, 2, 5, 1, [1, 3]),  # the extras alternate between the regions
    (1, 3, 1, 1, []),  # more regions than absent structures: the last ones ask none
    (1, 2, 6, 2, [2, 3, 5]),
])
def test_absent_slots_share_an_image_quota(rank, regions, quota, per_region, slots):
    assert absent_slots(rank, regions, quota, per_region) == slots


def test_every_slot_of_an_image_goes_to_exactly_one_region():
    for regions in range(1, 5):
        for per_region in range(1, 3):
            for quota in range(0, 12):
                got = sorted(j for r in range(regions) for j in absent_slots(r, regions, quota, per_region))
                assert got == list(range(quota)), (regions, per_region, quota)


def brute_force_balance(images: list[ImageAbsence], per_region: int) -> dict[str, int]:
    """The reference: hand out the shortfall one question at a time to the image, in id order, that has
    received the fewest extras so far and still has an absent structure to spare."""
    quota = {i.image_id: i.base(per_region) for i in images}
    extra = dict.fromkeys(quota, 0)
    short = per_region * sum(i.regions for i in images) - sum(quota.values())
    while short > 0:
        open_ = [i for i in images if quota[i.image_id] + extra[i.image_id] < i.absent]
        if not open_:
            break
        pick = min(open_, key=lambda i: (extra[i.image_id], i.image_id))
        extra[pick.image_id] += 1
        short -= 1
    return {k: v for k, v in extra.items() if v}


@pytest.mark.parametrize("case", [
    # (regions, absent) per image; the known outcome: planned "no" and the extras
    ([(4, 0), (4, 0), (2, 2)], 2, {}),  # nothing to spare: 2 "no" for 10 "yes", reported short by 8
    ([(4, 0), (1, 3), (1, 3)], 6, {"img1": 2, "img2": 2}),  # two 1-region images carry the full slice's 4
    ([(4, 0), (1, 3)], 3, {"img1": 2}),  # capped by the 3 absent structures: short by 2
    ([(2, 2), (2, 2)], 4, {}),  # balanced image by image: nothing moves
    ([(4, 0), (4, 0), (4, 0)], 0, {}),  # no absent pair at all
    ([(3, 0), (1, 3), (1, 3), (1, 3)], 6, {"img1": 1, "img2": 1, "img3": 1}),  # spread, not piled up
])
def test_balance_source_on_known_cases(case):
    shape, planned, extra = case
    images = [ImageAbsence(f"img{k}", r, a) for k, (r, a) in enumerate(shape)]
    got = balance_source(images, 1)
    assert (got.planned, got.extra) == (planned, extra)
    assert got.target == sum(r for r, _ in shape) and got.short == got.target - planned
    assert got.extra == brute_force_balance(images, 1)


def test_balance_source_matches_the_reference_on_random_sources():
    rng = random.Random(7)
    for _ in range(300):
        per_region = rng.randint(1, 2)
        images = [ImageAbsence(f"{rng.getrandbits(32):08x}", rng.randint(1, 4), rng.randint(0, 5))
                  for _ in range(rng.randint(0, 12))]
        got = balance_source(images, per_region)
        assert got.extra == brute_force_balance(images, per_region)
        planned = sum(i.base(per_region) + got.extra.get(i.image_id, 0) for i in images)
        assert got.planned == planned <= sum(i.absent for i in images)
        # Balanced wherever the source has enough absent (image, structure) pairs.
        assert got.planned == min(got.target, sum(i.absent for i in images))


def brute_force_kept_yes(images: list[ImageAbsence], keep: int, per_region: int) -> dict[tuple[str, int], int]:
    """The reference: list every "yes" slot (image, region rank, slot), sort them by (no absent
    structure, image id, rank, slot) and keep the first ``keep``; count the kept ones per region."""
    slots = sorted((i.absent == 0, i.image_id, rank, k) for i in images if i.absent is not None
                   for rank in range(i.regions) for k in range(per_region))
    return dict(Counter((image_id, rank) for _, image_id, rank, _ in slots[:keep]))


def kept_by_cut(images: list[ImageAbsence], per_region: int) -> dict[tuple[str, int], int] | None:
    balance = balance_source(images, 1)
    cut = cut_yes(images, balance, per_region)
    if cut is None:
        return None
    got = {(i.image_id, rank): cut.kept(i, rank, per_region) for i in images if i.absent is not None
           for rank in range(i.regions)}
    return {k: v for k, v in got.items() if v}


@pytest.mark.parametrize(("shape", "kept"), [
    # (regions, absent) per image, ids img0, img1, ... in order; the regions that keep their "yes"
    ([(4, 0), (4, 0), (2, 2)], {("img2", 0): 1, ("img2", 1): 1}),  # 2 "no": the image asked "no" keeps 2
    ([(4, 0), (1, 3)], {("img1", 0): 1, ("img0", 0): 1, ("img0", 1): 1}),  # 3 "no": 1 there, 2 of img0's
    ([(4, 0), (4, 0)], {}),  # no "no" at all: no localization question
    ([(2, 2), (2, 2)], None),  # balanced: every "yes" stays
    ([(4, 0), (2, None), (1, 1)], {("img2", 0): 1}),  # an image without recorded labels is left out
])
def test_cut_yes_on_known_cases(shape, kept):
    images = [ImageAbsence(f"img{k}", r, a) for k, (r, a) in enumerate(shape)]
    assert kept_by_cut(images, 1) == kept


def test_cut_yes_matches_the_reference_on_random_sources():
    rng = random.Random(11)
    for _ in range(400):
        per_region = rng.randint(1, 3)
        ids = sorted(f"{rng.getrandbits(32):08x}" for _ in range(rng.randint(0, 12)))
        images = [ImageAbsence(i, rng.randint(1, 4), rng.choice([0, 0, 0, 1, 2, 3, None])) for i in ids]
        balance = balance_source(images, 1)
        yes = per_region * balance.regions
        got = kept_by_cut(images, per_region)
        if balance.short <= 0 or balance.planned >= yes:
            assert got is None
            continue
        assert got == brute_force_kept_yes(images, balance.planned, per_region)
        assert sum(got.values()) == balance.yes_kept(per_region) == balance.planned  # as many "yes" as "no"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("absent")
    build = root / "b"
    assert ingest(build, "--sources", str(SAMPLE_SOURCES)) == 0
    assert main(["generate", "--build", str(build), "--no-progress"]) == 0
    assert main(["release", "--build", str(build), "--out", str(root / "rel"), "--include-unreviewed",
                 "--created", "2026-01-01T00:00:00Z"]) == 0
    return root


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_drafts_are_flagged_and_name_a_structure_missing_from_the_image(demo):
    assert main(["drafts", "--build", str(demo / "b"), "--out", str(demo / "drafts.jsonl")]) == 0
    drafts = records(demo / "drafts.jsonl")
    assert main(["regions", "--build", str(demo / "b"), "--out", str(demo / "regions.jsonl")]) == 0
    regions = {r["id"]: r for r in records(demo / "regions.jsonl")}
    absent = [d for d in drafts if d.get("absent")]
    assert absent and all(not schema_errors("draft", d) for d in drafts)
    for d in absent:
        host = regions[d["region_id"]]
        assert d["answer"] == "no" and d["boxes"] == [] and d["side"] == "unknown" and d["q_type"] == "localization"
        assert d["label"] not in host["image_labels"]  # no labelled pixel of it in the image
        assert d["display_name"] in d["question"] and d["status"] == "ok"
        same_source = {r["label"] for r in regions.values() if r["source"]["name"] == host["source"]["name"]}
        assert d["label"] in same_source
    # Per image, the absent structures asked about are different ones.
    per_image = Counter((regions[d["region_id"]]["image_id"], d["label"]) for d in absent)
    assert max(per_image.values()) == 1


def test_release_balances_yes_and_no_in_every_source(demo):
    rel = demo / "rel"
    loc = records(rel / "VGMED_localization.jsonl") + records(rel / "COCO_localization.jsonl")
    assert all(r["absent"] == (r["answer"] == "no") for r in loc)
    by_source = Counter((r["plane"], r["modality"], r["answer"]) for r in loc)
    # Sagittal MNI slices hold one half of the brain: the other half's two structures are asked "no";
    # the photos: the other photo's objects.
    for plane, modality in (("sagittal", "MRI"), ("2d", "Natural")):
        assert by_source[(plane, modality, "yes")] == by_source[(plane, modality, "no")] > 0
    # Axial and coronal tissue halves and the CT's two structures lie on every slice: nothing is absent,
    # so no "no" can be asked, and their "yes" are left out too.
    for plane, modality in (("axial", "MRI"), ("coronal", "MRI"), ("axial", "CT")):
        assert by_source[(plane, modality, "yes")] == by_source[(plane, modality, "no")] == 0
    for r in loc:
        if r["absent"]:
            assert r["bbox"] == [] and r["area_ratio"] == 0 and r["side"] == "unknown"
    assert main(["validate", str(rel)]) == 0
    manifest = json.loads((rel / "manifest.json").read_text(encoding="utf-8"))
    answers = manifest["counts"]["localization_answers"]
    assert answers == {"no": sum(r["answer"] == "no" for r in loc), "yes": sum(r["answer"] == "yes" for r in loc)}
    assert answers["yes"] == answers["no"]  # a model that always says yes scores 50%


def test_regions_without_a_localization_question_keep_their_boxed_questions(demo):
    """The regions whose "yes" were left out still have attribute questions with their boxes, so
    grounding (every boxed question) still sees every region."""
    rel = demo / "rel"
    loc = records(rel / "VGMED_localization.jsonl") + records(rel / "COCO_localization.jsonl")
    attr = records(rel / "VGMED_attribute.jsonl") + records(rel / "COCO_attribute.jsonl")
    asked_yes = {(Path(r["image"]).stem, r["label"]) for r in loc if not r["absent"]}  # images/<image id>.png
    boxed = {(Path(r["image"]).stem, r["label"]) for r in attr if r["bbox"]}
    assert main(["regions", "--build", str(demo / "b"), "--out", str(demo / "regions-boxed.jsonl")]) == 0
    regions = records(demo / "regions-boxed.jsonl")
    left_out = [r for r in regions if r["plane"] in ("axial", "coronal")]
    assert len(left_out) == 10  # 4 axial + 4 coronal MNI regions, 2 CT regions
    for r in left_out:
        key = (r["image_id"], r["label"])
        assert key not in asked_yes and key in boxed, key
    assert len(asked_yes) == len(regions) - len(left_out)  # every other region is asked "yes"


def test_the_demo_localization_answers_balance_per_source(demo, capsys):
    """What a model that always answers "yes" scores on the demo, source by source: 50% in each. A source
    balances ("no" == "yes") when its images hold enough absent (image, structure) pairs; the axial and
    coronal MNI slices and the CT slice hold every structure of their source, so they can have no "no",
    their "yes" are left out, and generate says so in its summary instead of leaving it unsaid."""
    assert main(["regions", "--build", str(demo / "b"), "--out", str(demo / "regions-count.jsonl")]) == 0
    regions = records(demo / "regions-count.jsonl")
    rel = demo / "rel"
    loc = records(rel / "VGMED_localization.jsonl") + records(rel / "COCO_localization.jsonl")
    released = Counter((r["plane"], r["modality"], r["answer"]) for r in loc)
    # Independent count, per source: "no" as many as its regions where its images have that many absent
    # (image, structure) pairs in all, else every such pair once; "yes" as many as its "no".
    structures: dict[str, set[str]] = {}
    images: dict[str, list[dict]] = {}
    for r in regions:
        structures.setdefault(r["source"]["name"], set()).add(r["label"])
        images.setdefault(r["image_id"], []).append(r)
    expected: dict[str, list] = {}
    for rs in images.values():
        first = rs[0]
        name = first["source"]["name"]
        row = expected.setdefault(name, [(first["plane"], first["modality"]), 0, 0])
        row[1] += len(rs)
        row[2] += len(structures[name] - set(first["image_labels"]))
    counts = {name: (released[(*key, "yes")], released[(*key, "no")]) for name, (key, _, _) in expected.items()}
    print(f"demo localization answers per source (yes, no): {counts}")
    assert {name: (min(n, pairs), min(n, pairs)) for name, (_, n, pairs) in expected.items()} == counts
    assert counts == {"mni152-sagittal": (35, 35), "coco-control": (4, 4),
                      "mni152": (0, 0), "mni152-coronal": (0, 0), "ct-seg": (0, 0)}
    # The sagittal source has 37 absent pairs for 35 regions: the one slice with a single region (3
    # absent structures) asks 1 "no", as many as its "yes", since the source needs no more.
    assert sum(n for _, n in counts.values()) == sum(y for y, _ in counts.values()) == 39
    capsys.readouterr()
    assert main(["generate", "--build", str(demo / "b"), "--no-progress"]) == 0  # nothing left to draft
    out = capsys.readouterr().out
    assert ("localization 'yes' left out to balance the 'no' (too few structures absent from their images; "
            "--unbalanced keep keeps them): ct-seg 2 of 2 (no 'no' possible: no localization question), "
            "mni152 4 of 4 (no 'no' possible: no localization question), mni152-coronal 4 of 4 (no 'no' "
            "possible: no localization question)") in out
    assert "0 ok" in out and "beyond the balance" not in out


def test_validate_refuses_an_absent_record_with_boxes(demo, tmp_path, capsys):
    import shutil

    rel = tmp_path / "rel"
    shutil.copytree(demo / "rel", rel)
    path = rel / "COCO_localization.jsonl"
    lines = records(path)
    bad = next(r for r in lines if r["absent"])
    bad["bbox"] = [[1, 1, 5, 5]]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    capsys.readouterr()
    assert main(["validate", str(rel)]) == 1
    assert "schema: bbox: [[1, 1, 5, 5]] is expected to be empty" in capsys.readouterr().out


def test_grounding_reads_only_questions_with_a_region(demo):
    from vgmed_eval.release_io import read_release

    questions, errors = read_release(demo / "rel", ("localization",))
    loc = records(demo / "rel" / "VGMED_localization.jsonl")
    assert errors == []
    assert len(questions) == sum(not r["absent"] for r in loc) < len(loc)
    assert all(q.boxes for q in questions)


def test_a_source_with_full_slices_balances_through_its_other_slices(tmp_path, capsys):
    """End to end on a source where the right answer is known: 3 axial slices hold all four structures
    (12 "yes", nothing absent) and 9 hold one (9 "yes", 3 absent structures each). The one-structure
    slices carry the full slices' "no" too: 21 "yes" and 21 "no", each slice asking about different
    structures. With only 3 one-structure slices (9 "no" for 15 regions), the 6 surplus "yes" are left out
    and generate says so; ``--unbalanced keep`` drafts them; a rerun without it deletes nothing."""
    import numpy as np
    from ingest_fixtures import write_msd

    def volume(full: int, single: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        labels = np.zeros((64, 64, full + single), np.uint8)
        for value, (x, y) in zip((1, 2, 3, 4), ((4, 4), (36, 4), (4, 36), (36, 36)), strict=True):
            labels[x:x + 20, y:y + 20, :full] = value
        labels[4:24, 4:24, full:] = 1
        return (labels * 50).astype(np.uint8), labels, np.diag([2.0, 2.0, 2.0, 1.0])

    def build_of(name: str, full: int, single: int) -> Path:
        root = tmp_path / name
        write_msd(root / "Task", {"case": volume(full, single)})
        build = root / "b"
        assert ingest(build, "--source", f"msd:{root / 'Task'}", "--modality", "MRI", "--option", "plane=axial",
                      "--option", "slice_policy=every_n", "--option", "every_n=1", "--option", "min_area_px=16") == 0
        return build

    def run(build: Path, *extra: str) -> tuple[Counter, list[dict], str]:
        capsys.readouterr()
        assert main(["generate", "--build", str(build), "--no-progress", *extra]) == 0
        summary = capsys.readouterr().out
        rel = build.parent / "rel"
        assert main(["release", "--build", str(build), "--out", str(rel), "--include-unreviewed"]) == 0
        assert main(["validate", str(rel)]) == 0
        loc = records(rel / "VGMED_localization.jsonl")
        return Counter(r["answer"] for r in loc), loc, summary

    answers, loc, summary = run(build_of("enough", 3, 9))
    assert (answers["yes"], answers["no"]) == (21, 21) and "unbalanced" not in summary and "left out" not in summary
    no = [r for r in loc if r["absent"]]
    per_image = Counter(r["image"] for r in no)
    # 9 one-structure slices share 21 "no": 3 of them ask about all 3 absent structures, 6 about 2.
    assert sorted(per_image.values()) == [2] * 6 + [3] * 3
    assert Counter((r["image"], r["label"]) for r in no).most_common(1)[0][1] == 1
    full_images = {r["image"] for r in loc if r["label"] == "right white matter" and not r["absent"]}
    assert len(full_images) == 3 and not full_images & set(per_image)

    build = build_of("short", 3, 3)
    answers, loc, summary = run(build)
    assert (answers["yes"], answers["no"]) == (9, 9)  # 3 slices x 3 absent structures: all there are
    assert "'yes' left out to balance the 'no'" in summary and "Task 6 of 15 (9 'no')" in summary
    # Kept: the "yes" of the slices also asked "no" (3), then the full slices' in image id order: all 4
    # of the first, the first 2 labels of the second, none of the third.
    yes = [r for r in loc if not r["absent"]]
    asked_no = {r["image"] for r in loc if r["absent"]}
    assert len(asked_no) == 3 and {r["image"] for r in yes} >= asked_no
    full = sorted({r["image"] for r in yes} - asked_no)
    assert [sorted(r["label"] for r in yes if r["image"] == image) for image in full] == [
        ["left grey matter", "left white matter", "right grey matter", "right white matter"],
        ["left grey matter", "left white matter"]]
    assert full[0] < full[1]  # image names carry the stable image id

    answers, _, summary = run(build, "--unbalanced", "keep")  # the 6 surplus "yes" drafted now
    assert (answers["yes"], answers["no"]) == (15, 9)
    assert "localization answers unbalanced (too few structures absent from their images): Task 9 'no' of 15" in summary
    assert "6 ok" in summary

    # Back to the default: nothing stored is deleted; the 6 stored surplus "yes" are named, and released.
    answers, _, summary = run(build)
    assert (answers["yes"], answers["no"]) == (15, 9)
    assert ("6 localization 'yes' drafts stored by an earlier run are beyond the balance: they stay in the "
            "catalog and are released unless review rejects them") in summary


def test_an_unknown_unbalanced_choice_is_refused_and_changes_nothing(demo, capsys):
    """`--unbalanced` takes drop-yes or keep: the command line and the API both refuse anything else
    before drafting, naming the option, and the drafts already stored stay as they were."""
    from vgmed_build.catalog import open_catalog
    from vgmed_build.drafting.generate import run_generate
    from vgmed_build.drafting.plan import GenerateOptions

    build = demo / "b"
    with open_catalog(build, create=False) as cat:
        before = list(cat.drafts())
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--build", str(build), "--no-progress", "--unbalanced", "bogus"])
    assert exit_info.value.code == 2 and "--unbalanced: invalid choice: 'bogus'" in capsys.readouterr().err
    with open_catalog(build, create=False) as cat:
        with pytest.raises(ValueError, match=r"--unbalanced 'bogus': expected one of drop-yes, keep"):
            run_generate(cat, GenerateOptions(unbalanced="bogus"))
        assert list(cat.drafts()) == before and before
