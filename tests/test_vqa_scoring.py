"""VQA scorers on real answer phrasings, and the paired statistics against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from vgmed_eval.vqa.scoring import (
    extract_option,
    extract_yes_no,
    score_response,
    summarize,
    token_recall,
)
from vgmed_eval.vqa.stats import compare, mcnemar_exact, paired_bootstrap

OPTIONS = ["CT scan", "MRI", "Ultrasound", "X-ray"]

# (response, expected letter) -- phrasings seen from LLaVA-Med, HuatuoGPT-Vision, Qwen-VL and MedGemma.
LETTER_CASES = [
    ("B", "B"),
    ("b", "B"),
    ("B.", "B"),
    ("B. MRI", "B"),
    ("(B)", "B"),
    ("(B) MRI", "B"),
    ("B)", "B"),
    ("[B]", "B"),
    ("**B**", "B"),
    ("The answer is B.", "B"),
    ("The answer is (C).", "C"),
    ("Answer: D", "D"),
    ("The correct answer is option C: Ultrasound", "C"),
    ("Option A", "A"),
    ("A", "A"),
    ("A. CT scan", "A"),
    ("MRI", "B"),
    ("mri.", "B"),
    ("The image is an MRI.", "B"),
    ("A CT scan of the abdomen", "A"),
    ("X-ray", "D"),
    ("x ray", "D"),
    ("I think it is (D) X-ray.", "D"),
    ("E", None),  # not an offered letter
    ("A large mass in the liver", None),  # article, no option text
    ("It could be CT scan or MRI", None),  # two options: undecidable
    ("", None),
]


@pytest.mark.parametrize("response,letter", LETTER_CASES)
def test_extract_option(response, letter):
    assert extract_option(response, OPTIONS) == letter


def test_option_prefers_longer_nested_text():
    assert extract_option("CT scan", ["CT", "CT scan", "MRI"]) == "B"
    assert extract_option("ct", ["CT", "CT scan", "MRI"]) == "A"


YES_NO_CASES = [
    ("Yes", "yes"),
    ("yes.", "yes"),
    ("YES", "yes"),
    ("No.", "no"),
    ("No, there is no fracture.", "no"),
    ("Yes, the liver is enlarged.", "yes"),
    ("The answer is yes", "yes"),
    ("Answer: No", "no"),
    ("There is no pneumothorax.", "no"),
    ("I cannot tell.", None),
    ("It could be yes or no.", None),
]


@pytest.mark.parametrize("response,expected", YES_NO_CASES)
def test_extract_yes_no(response, expected):
    assert extract_yes_no(response) == expected


@pytest.mark.parametrize(
    "response,gold,kind,options,score,correct",
    [
        ("Yes.", "yes", "closed", (), 1.0, True),
        ("No", "Yes", "closed", (), 0.0, False),
        ("The answer is (B).", "B", "closed", OPTIONS, 1.0, True),
        ("Ultrasound", "C", "closed", OPTIONS, 1.0, True),
        ("Ultrasound", "B", "closed", OPTIONS, 0.0, False),
        ("Left.", "left", "closed", (), 1.0, True),
        ("The lesion is on the left side", "left", "closed", (), 1.0, True),
        ("leftover", "left", "closed", (), 0.0, False),
        ("axial", "Axial", "closed", (), 1.0, True),
        ("The right lower lobe", "right lower lobe", "open", (), 1.0, True),
        ("right lobe", "right lower lobe", "open", (), 2 / 3, False),
        ("Liver, spleen", "liver", "open", (), 1.0, True),
        ("kidney", "liver", "open", (), 0.0, False),
    ],
)
def test_score_response(response, gold, kind, options, score, correct):
    s = score_response(response, gold, kind, options)
    assert s.score == pytest.approx(score)
    assert s.correct is correct


def test_token_recall_counts_multiplicity_and_ignores_case():
    assert token_recall("Lung lung", "lung lung nodule") == pytest.approx(2 / 3)
    assert token_recall("LUNG.", "lung lung") == pytest.approx(1 / 2)
    assert token_recall("anything", "") == 0.0


def test_unknown_kind_rejected():
    with pytest.raises(ValueError, match="kind"):
        score_response("yes", "yes", "multiple")


def test_summarize_per_modality():
    rows = [
        {"score": 1.0, "correct": True, "kind": "closed", "modality": "CT"},
        {"score": 0.0, "correct": False, "kind": "closed", "modality": "CT"},
        {"score": 0.5, "correct": False, "kind": "open", "modality": "MRI"},
        {"score": 1.0, "correct": True, "kind": "open", "modality": None},
    ]
    s = summarize(rows)
    assert s["overall"] == {"n": 4, "mean_score": pytest.approx(0.625), "accuracy": 0.5}
    assert s["by_modality"]["CT"]["accuracy"] == 0.5
    assert s["by_modality"]["MRI"]["mean_score"] == 0.5
    assert s["by_modality"]["unknown"]["n"] == 1
    assert s["by_kind"]["open"]["mean_score"] == pytest.approx(0.75)


@pytest.mark.parametrize("seed", range(8))
def test_mcnemar_matches_scipy_binomtest(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 80))
    a = rng.random(n) < 0.6
    b = rng.random(n) < rng.uniform(0.3, 0.9)
    res = mcnemar_exact(a.tolist(), b.tolist())
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    assert (res.only_a, res.only_b) == (only_a, only_b)
    expected = 1.0 if only_a + only_b == 0 else sps.binomtest(only_a, only_a + only_b, 0.5).pvalue
    assert res.p_value == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_mcnemar_known_values():
    # 10 discordant pairs all one way: p = 2 / 2**10.
    res = mcnemar_exact([True] * 10 + [False] * 5, [False] * 15)
    assert res.p_value == pytest.approx(2 / 1024)
    assert mcnemar_exact([True, False], [True, False]).p_value == 1.0
    with pytest.raises(ValueError, match="length"):
        mcnemar_exact([True], [True, False])


def test_paired_bootstrap_matches_scipy_and_loop():
    rng = np.random.default_rng(1)
    a = (rng.random(300) < 0.6).astype(float)
    b = np.where(rng.random(300) < 0.8, a, 1 - a)
    res = paired_bootstrap(a, b, n_resamples=4000, seed=3)
    assert res.mean_a == pytest.approx(a.mean()) and res.diff == pytest.approx(b.mean() - a.mean())
    ref = sps.bootstrap(
        (a, b), lambda x, y: y.mean() - x.mean(), paired=True, vectorized=False, n_resamples=4000,
        method="percentile", random_state=7,
    ).confidence_interval
    assert res.ci_diff[0] == pytest.approx(ref.low, abs=0.012)
    assert res.ci_diff[1] == pytest.approx(ref.high, abs=0.012)
    # An independent loop with the same generator gives the identical interval.
    gen = np.random.default_rng(3)
    idx = gen.integers(0, a.size, size=(4000, a.size))
    diffs = [b[i].mean() - a[i].mean() for i in idx]
    assert res.ci_diff == pytest.approx((np.percentile(diffs, 2.5), np.percentile(diffs, 97.5)))
    assert res.ci_a[0] < a.mean() < res.ci_a[1]


def test_compare_requires_aligned_rows():
    rows_a = [{"id": "1", "correct": True, "score": 1.0}, {"id": "2", "correct": False, "score": 0.0}]
    rows_b = [{"id": "1", "correct": True, "score": 1.0}, {"id": "2", "correct": True, "score": 1.0}]
    out = compare(rows_a, rows_b, n_resamples=200)
    assert out["mcnemar"]["only_b"] == 1 and out["bootstrap"]["diff"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same questions"):
        compare(rows_a, rows_b[::-1])
