"""Benchmark loaders on fixture files in each benchmark's public layout, and their error messages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vgmed_eval.prompts import GENERAL_PROMPT, SHORT_ANSWER
from vgmed_eval.vqa.benchmarks import BENCHMARKS, BenchmarkError, get_benchmark
from vgmed_eval.vqa.prompts import OPTION_LETTER, question_prompt

FIX = Path(__file__).parent / "fixtures" / "vqa"


def load(name: str, folder: str):
    return get_benchmark(name).load(FIX / folder)


def test_registry_lists_every_benchmark():
    assert {"vqa-rad", "slake", "pathvqa", "pmc-vqa", "omnimedvqa", "mmmu-med", "vgmed-attribute"} <= set(
        BENCHMARKS.names()
    )
    with pytest.raises(BenchmarkError, match="unknown benchmark 'nope'.*slake"):
        get_benchmark("nope")
    with pytest.raises(BenchmarkError, match=r"unknown benchmark 'vqarad' \(did you mean 'vqa-rad'\?\); known: "):
        get_benchmark("vqarad")


def test_vqa_rad_test_split_and_kinds():
    got = load("vqa-rad", "vqa-rad")
    assert got.errors == []
    assert [i.id for i in got.items] == ["1", "2", "4"]  # qid 3 is a training question
    by_id = {i.id: i for i in got.items}
    assert (by_id["1"].kind, by_id["1"].answer) == ("closed", "No")
    assert by_id["2"].kind == "open"
    assert by_id["4"].kind == "closed"  # "CLOSED " with the release's trailing space
    assert by_id["1"].category == "ABD"
    assert by_id["1"].image.open().size == (32, 32)
    assert by_id["1"].where.endswith("VQA_RAD Dataset Public.json:2")


@pytest.mark.parametrize("name,folder", [("vqa-rad", "vqa-rad-hf"), ("pathvqa", "pathvqa-hf")])
def test_hugging_face_parquet_copies(name, folder):
    got = load(name, folder)
    assert got.errors == []
    assert [(i.question, i.answer, i.kind) for i in got.items] == [
        ("is there a mass?", "yes", "closed"),
        ("what organ is shown?", "eye", "open"),
    ]
    assert got.items[1].image.open().mode == "RGB"
    assert got.items[0].image.key != got.items[1].image.key


def test_slake_english_only_with_modality():
    got = load("slake", "slake")
    assert [i.id for i in got.items] == ["11", "12", "14"]
    assert [i.kind for i in got.items] == ["open", "closed", "open"]
    assert [i.modality for i in got.items] == ["CT", "CT", "MRI"]
    assert got.items[0].image.key == got.items[1].image.key  # same image: one general map


def test_pathvqa_release_pickle():
    got = load("pathvqa", "pathvqa")
    expected = [("yes", "closed"), ("hepatocellular carcinoma", "open")]
    assert [(i.answer, i.kind) for i in got.items] == expected
    assert got.items[0].image.path.name == "test_0000.jpg"


def test_pmc_vqa_options_and_letters():
    got = load("pmc-vqa", "pmc-vqa")
    assert got.errors == []
    first, second = got.items
    assert first.options == ("CT scan", "MRI", "Ultrasound", "X-ray") and first.answer == "A"
    assert second.options[2] == "T1-weighted" and second.answer == "C"
    assert first.where.endswith("test_2.csv:2") and second.where.endswith("test_2.csv:3")


def test_omnimedvqa_gold_letter_from_text():
    got = load("omnimedvqa", "omnimedvqa")
    assert [(i.answer, len(i.options), i.modality) for i in got.items] == [
        ("B", 4, "Fundus Photography"),
        ("A", 2, "CT(Computed Tomography)"),
    ]


def test_mmmu_single_image_questions():
    got = load("mmmu-med", "mmmu")
    assert [i.id for i in got.items] == ["validation_Clinical_Medicine_1", "validation_Pharmacy_1"]
    mc, open_ = got.items
    assert mc.options == ("Pneumonia", "Hepatic cyst", "Normal study", "Fracture") and mc.answer == "B"
    assert mc.question == "the image What is the most likely diagnosis?"
    assert open_.kind == "open" and open_.options == ()
    assert len(got.errors) == 1 and "validation-00000-of-00001.parquet:2: 2 images" in got.errors[0]


def test_vgmed_release():
    got = load("vgmed-attribute", "vgmed")
    expected = [("round", "open", "CT"), ("yes", "closed", "Fundus")]
    assert [(i.answer, i.kind, i.modality) for i in got.items] == expected


def test_prompts_follow_protocol():
    rad = load("vqa-rad", "vqa-rad").items[0]
    assert question_prompt(rad) == f"Is there free air in the abdomen? {SHORT_ANSWER}"
    pmc = load("pmc-vqa", "pmc-vqa").items[0]
    assert question_prompt(pmc).splitlines() == [
        "What imaging modality is shown?", "A. CT scan", "B. MRI", "C. Ultrasound", "D. X-ray", OPTION_LETTER
    ]
    assert GENERAL_PROMPT.startswith("Write a general description of the image.")


# --------------------------------------------------------------------------------- bad input
def copy(folder: str, tmp_path: Path) -> Path:
    dst = tmp_path / folder
    shutil.copytree(FIX / folder, dst)
    return dst


def test_missing_annotation_file_is_named(tmp_path):
    root = copy("slake", tmp_path)
    (root / "test.json").unlink()
    with pytest.raises(BenchmarkError, match=r"slake/test\.json: SLAKE test\.json not found"):
        get_benchmark("slake").load(root)
    with pytest.raises(BenchmarkError, match="data directory not found"):
        get_benchmark("slake").load(tmp_path / "nowhere")


def test_malformed_records_name_file_and_line(tmp_path):
    root = copy("slake", tmp_path)
    recs = json.loads((root / "test.json").read_text())
    del recs[1]["question"]
    recs[3]["img_name"] = "xmlab9/missing.jpg"
    (root / "test.json").write_text(json.dumps(recs, indent=1, ensure_ascii=False))
    got = get_benchmark("slake").load(root)
    assert [i.id for i in got.items] == ["11"]
    text = (root / "test.json").read_text().splitlines()
    line_2nd = next(n for n, line in enumerate(text, 1) if line == " {" and n > 2)
    assert got.errors[0] == f"{root / 'test.json'}:{line_2nd}: missing field 'question'"
    assert "missing.jpg' not found" in got.errors[1]


def test_invalid_json_names_line(tmp_path):
    root = copy("vqa-rad", tmp_path)
    path = root / "VQA_RAD Dataset Public.json"
    lines = path.read_text().splitlines()
    lines[5] = lines[5].replace('"', "", 1)
    path.write_text("\n".join(lines))
    with pytest.raises(BenchmarkError, match=r"Public\.json:6: invalid JSON"):
        get_benchmark("vqa-rad").load(root)


def test_jsonl_bad_line_skipped(tmp_path):
    root = copy("vgmed", tmp_path)
    path = root / "VGMED_attribute.jsonl"
    path.write_text(path.read_text() + "{not json\n")
    got = get_benchmark("vgmed-attribute").load(root)
    assert len(got.items) == 2
    assert got.errors == [f"{path}:3: invalid JSON (Expecting property name enclosed in double quotes)"]


def test_pmc_vqa_bad_header_and_answer(tmp_path):
    root = copy("pmc-vqa", tmp_path)
    csv_path = root / "test_2.csv"
    text = csv_path.read_text().splitlines()
    text[2] = text[2].replace(",C,test", ",nothing,test")  # test_2.csv: Answer is the letter
    csv_path.write_text("\n".join(text) + "\n")
    got = get_benchmark("pmc-vqa").load(root)
    assert len(got.items) == 1 and got.errors[0].startswith(f"{csv_path}:3: answer 'nothing'")
    csv_path.write_text("Figure_path,Question\nx.jpg,q\n")
    with pytest.raises(BenchmarkError, match=r"test_2\.csv:1: header lacks column\(s\) Choice A, Choice B"):
        get_benchmark("pmc-vqa").load(root)


def test_pmc_vqa_real_test_2_schema_empty_gold_and_explicit_file(tmp_path):
    """test_2.csv's real columns (Answer = the letter, choices " B: text "); an empty gold answer is that
    record's error (it used to pass as the empty string, which is in every string); two files need a choice."""
    root = copy("pmc-vqa", tmp_path)
    csv_path = root / "test_2.csv"
    header, first, second = csv_path.read_text().splitlines()
    assert header.split(",") == ["index", "Figure_path", "Caption", "Question", "Choice A", "Choice B", "Choice C",
                                 "Choice D", "Answer", "split"]
    csv_path.write_text("\n".join([header, first, second.replace(",C,test", ",,test")]) + "\n")
    got = get_benchmark("pmc-vqa").load(root)
    assert [i.answer for i in got.items] == ["A"]
    assert got.errors == [f"{csv_path}:3: the gold answer is empty (no Answer_label, empty Answer)"]
    assert got.files == [str(csv_path)]
    clean = root / "test_clean.csv"
    clean.write_text("Figure_path,Question,Answer,Choice A,Choice B,Answer_label\n"
                     "PMC100_F1.jpg,Which modality?,MRI,A:CT ,B:MRI ,B\n")
    with pytest.raises(BenchmarkError, match=r"holds test_clean\.csv and test_2\.csv; choose one explicitly"):
        get_benchmark("pmc-vqa").load(root)
    chosen = get_benchmark("pmc-vqa").load(clean)
    assert [(i.answer, i.options) for i in chosen.items] == [("B", ("CT", "MRI"))] and chosen.files == [str(clean)]
