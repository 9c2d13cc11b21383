"""The published VQA protocol (HuatuoGPT-Vision's ``score_mix_llava``), each point against the behaviour of
the authors' code written out here: the population (open skipped, closed as multiple choice), the letter
matcher, one forced greedy token, and the loaders' ids and question kinds."""

from __future__ import annotations

import difflib
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from vgmed_eval.cli import main as eval_main
from vgmed_eval.vqa.benchmarks import get_benchmark
from vgmed_eval.vqa.population import named_alternatives, select
from vgmed_eval.vqa.prompts import question_prompt
from vgmed_eval.vqa.scoring import score_published

FIX = Path(__file__).parent / "fixtures" / "vqa"
INSTRUCTION = "Answer with the option's letter from the given choices directly."


# ---------------------------------------------------------------------------------- the population
def _raw_kinds(name: str) -> dict[str, str]:
    """Question id -> CLOSED / OPEN as the benchmark's own file says (VQA-RAD: test split; SLAKE: English)."""
    if name == "slake":
        recs = json.loads((FIX / "slake" / "test.json").read_text())
        return {str(r["qid"]): r["answer_type"].strip() for r in recs if r["q_lang"] == "en"}
    recs = json.loads((FIX / "vqa-rad" / "VQA_RAD Dataset Public.json").read_text())
    return {str(r["qid"]): r["answer_type"].strip() for r in recs if r["phrase_type"].startswith("test")}


@pytest.mark.parametrize("name", ["vqa-rad", "slake"])
def test_open_questions_are_skipped_and_closed_ones_become_multiple_choice(name):
    loaded = get_benchmark(name).load(FIX / name)
    kinds = _raw_kinds(name)
    pop = select(loaded.items, "closed-mc")
    assert pop.loaded == len(kinds) == len(loaded.items)
    assert sorted(pop.skipped_open) == sorted(q for q, k in kinds.items() if k == "OPEN")
    assert sorted([it.id for it in pop.items] + pop.skipped_no_options) == sorted(
        q for q, k in kinds.items() if k == "CLOSED")
    raw = {str(r["qid"]): r for r in json.loads(
        (FIX / name / ("test.json" if name == "slake" else "VQA_RAD Dataset Public.json")).read_text())}
    for it in pop.items:
        gold = raw[it.id]["answer"].strip().lower()
        assert it.options == ("yes", "no") and it.answer == {"yes": "A", "no": "B"}[gold]
        # the prompt as HuatuoGPT-Vision's llava_prompt formats it
        assert question_prompt(it) == f"{raw[it.id]['question']}\nA. yes\nB. no\n{INSTRUCTION}"
    # VQA-RAD's closed "Which side is the liver on?" (gold "left") names no alternatives: no options, skipped
    assert pop.skipped_no_options == (["4"] if name == "vqa-rad" else [])


def test_pathvqa_yes_no_questions_are_asked_as_multiple_choice():
    pop = select(get_benchmark("pathvqa").load(FIX / "pathvqa").items, "closed-mc")
    assert len(pop.items) == 1 and len(pop.skipped_open) == 1
    assert question_prompt(pop.items[0]) == f"Is this a fundus photograph?\nA. yes\nB. no\n{INSTRUCTION}"
    assert pop.items[0].answer == "A"


def test_closed_questions_naming_their_alternatives():
    assert named_alternatives("Is the lesion on the left or right?") == ("left", "right")
    assert named_alternatives("Which is bigger, liver or spleen?") == ("liver", "spleen")
    assert named_alternatives("Is this a CT or an MRI?") == ("CT", "MRI")
    assert named_alternatives("Which side is the liver on?") == ()
    item = get_benchmark("vqa-rad").load(FIX / "vqa-rad").items[-1]
    asked = select([replace(item, question="Is the liver on the left or right?")], "closed-mc").items[0]
    assert asked.options == ("left", "right") and asked.answer == "A"
    assert question_prompt(asked) == f"Is the liver on the left or right?\nA. left\nB. right\n{INSTRUCTION}"


def test_the_multiple_choice_benchmarks_keep_their_options_and_open_mmmu_is_skipped():
    pmc = get_benchmark("pmc-vqa").load(FIX / "pmc-vqa").items
    assert select(pmc, "closed-mc").items == pmc
    mmmu = get_benchmark("mmmu-med").load(FIX / "mmmu").items
    pop = select(mmmu, "closed-mc")
    assert len(pop.skipped_open) == sum(it.kind == "open" for it in mmmu)
    assert all(it.options for it in pop.items)


# ------------------------------------------------------------------------------- the letter matcher
def theirs(response: str, options: list[str]) -> str:
    """HuatuoGPT-Vision's match_choice3 as it behaves: the first letter a-n / A-N preceded by the start, a
    non-word character, "is ", 是 or 为 and followed by a non-word character or the end, unless it is
    "a " / "A "; returned as found. Else the option text found latest in the lower-cased response (sorted by
    position, descending, stable: the earlier option on a tie); else the most similar option by difflib
    with ">=" (the later option on a tie)."""
    for i, ch in enumerate(response):
        if ch.lower() not in "abcdefghijklmn":
            continue
        before_ok = i == 0 or not (response[i - 1].isalnum() or response[i - 1] == "_") or response[i - 1] in "是为"
        after_ok = i + 1 == len(response) or not (response[i + 1].isalnum() or response[i + 1] == "_")
        article = ch in "aA" and response[i + 1: i + 2] == " "
        if before_ok and after_ok and not article:
            return ch
    text = response.lower()
    hits = [(chr(65 + k), text.rindex(o.lower())) for k, o in enumerate(options) if o.lower() in text]
    if hits:
        return sorted(hits, key=lambda h: h[1], reverse=True)[0][0]
    best, best_k = 0.0, 0
    for k, o in enumerate(options):
        r = difflib.SequenceMatcher(None, o.lower(), text).ratio()
        if r >= best:
            best, best_k = r, k
    return chr(65 + best_k)


CASES = ["B", "B.", "(C)", "**D**", "The answer is C.", "b", "I think B", "A lesion in the liver", "A",
         "it is a ct scan, not an MRI", "mri or ct scan", "ultrasund", "x ray", "", "是B", "Answer: D)",
         "ct scan", "Option: a.", "none of these"]


@pytest.mark.parametrize("response", CASES)
def test_published_letter_matcher_behaves_as_theirs(response):
    options = ["CT scan", "MRI", "Ultrasound", "X-ray"]
    want = theirs(response, options)
    got = score_published(response, want if want.isupper() and want <= "D" else "A", "closed", options)
    assert got.parsed == want
    for gold in "ABCD":
        assert score_published(response, gold, "closed", options).correct is (want == gold)


def test_letter_matcher_edge_cases_written_out():
    options = ["CT scan", "MRI", "Ultrasound", "X-ray"]
    assert score_published("b", "B", "closed", options).correct is False  # lower case counts as wrong
    assert score_published("I think B", "B", "closed", options).parsed == "I"  # first standalone letter
    assert score_published("A lesion", "A", "closed", options).parsed != "A"  # the article
    tie = ["MRI", "MRI"]
    assert score_published("mri", "A", "closed", tie).parsed == "A"  # same position: the earlier option
    same = ["xyz", "xyz"]
    assert score_published("qqq", "B", "closed", same).parsed == "B"  # difflib tie: the later option
    assert re.fullmatch("[A-D]", score_published("", "A", "closed", options).parsed)


# ---------------------------------------------------------------------------------- one token, forced
def test_min_new_tokens_keeps_end_of_sequence_out_of_the_first_token():
    from vgmed_eval.vgrefine import VGRefiner

    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0], [3.0, 0.0, 9.0, 1.0]])
    forced = SimpleNamespace(min_new_tokens=1, eos={1, 2})
    assert VGRefiner._pick(forced, logits, 0).tolist() == [3, 0]
    assert VGRefiner._pick(forced, logits, 1).tolist() == [1, 2]  # from the second token on: free
    assert VGRefiner._pick(SimpleNamespace(min_new_tokens=0, eos={1, 2}), logits, 0).tolist() == [1, 2]


def test_one_forced_token_on_a_tiny_model():
    """transformers' generate(min_new_tokens=1, max_new_tokens=1) never answers with end-of-sequence alone."""
    from PIL import Image

    from vgmed_eval.adapters import load_adapter
    from vgmed_eval.vgrefine import VGRefiner

    adapter = load_adapter("builtin:tiny-llava", dtype="float32", device="cpu")
    image = Image.new("RGB", (64, 48), (120, 30, 200))
    text = "Is there a liver?\nA. yes\nB. no\n" + INSTRUCTION
    free = VGRefiner(adapter, None, max_new_tokens=1)
    query = free.query(free.prefix(image), image, text)
    first = free.answer([query], refined=False)[0][0].tokens
    assert len(first) == 1
    free.eos = forced_eos = {first[0]}  # make the greedy token the end of sequence
    assert free.answer([query], refined=False)[0][0].tokens == []
    forced = VGRefiner(adapter, None, max_new_tokens=1, min_new_tokens=1)
    forced.eos = forced_eos
    got = forced.answer([forced.query(forced.prefix(image), image, text)], refined=False)
    assert len(got[0][0].tokens) == 1 and got[0][0].tokens[0] not in forced_eos


# ----------------------------------------------------------------------------- ids and question kinds
def test_repeated_question_ids_are_disambiguated_never_dropped(tmp_path):
    data = tmp_path / "slake"
    shutil.copytree(FIX / "slake", data)
    recs = json.loads((data / "test.json").read_text())
    recs.append({**recs[1], "question": "Is the liver normal?", "answer": "No"})  # qid 12 again
    (data / "test.json").write_text(json.dumps(recs, indent=1))
    loaded = get_benchmark("slake").load(data)
    ids = [it.id for it in loaded.items]
    assert ids.count("12") == 1 and "12#2" in ids and len(ids) == len(set(ids)) == 4
    assert any("'12' repeats" in n for n in loaded.notes)
    out = tmp_path / "out"
    assert eval_main(["vqa", "--benchmark", "slake", "--data", str(data), "--model", "builtin:tiny-llava",
                      "--out", str(out), "--device", "cpu", "--protocol", "published"]) == 0
    rows = [json.loads(line) for line in (out / "predictions_baseline.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ["12", "12#2"]
    assert {r["id"]: r["gold"] for r in rows} == {"12": "A", "12#2": "B"}
    results = json.loads((out / "results.json").read_text())
    assert results["counts"] == {"loaded": 4, "asked": 2, "scored": {"baseline": 2}, "failed": 0, "load_errors": 0}
    assert results["population"]["skipped_open"] == 2 and results["decoding"]["min_new_tokens"] == 1
    assert results["decoding"]["max_new_tokens"] == 1
    assert results["metric"].startswith("accuracy over closed questions as multiple choice")
    assert any("repeats" in n for n in results["load_notes"])


def test_vqa_rad_hugging_face_copy_says_what_it_lacks(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    loaded = get_benchmark("vqa-rad").load(FIX / "vqa-rad-hf")
    assert any("without answer_type" in n for n in loaded.notes)
    table = pq.read_table(next((FIX / "vqa-rad-hf" / "data").glob("*.parquet")))
    kinds = ["CLOSED"] * table.num_rows
    (tmp_path / "data").mkdir()
    pq.write_table(table.append_column("answer_type", pa.array(kinds)), tmp_path / "data" / "test-0.parquet")
    typed = get_benchmark("vqa-rad").load(tmp_path)
    assert not typed.notes and {it.kind for it in typed.items} == {"closed"}
