"""Scoring of VQA responses (pure functions, no I/O).

Closed questions (yes/no, option letters, short closed answers) score 0 or 1 and must survive the ways
models actually phrase answers: case, punctuation, "The answer is ...", "(B)", "B.", or the option's
text instead of its letter. Open questions score the token recall of the gold answer in the response
(the LLaVA-Med protocol the published numbers follow).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from vgmed_eval.protocol import Scorer
from vgmed_eval.vqa.benchmarks import YES_NO

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
# Lead-ins models put before the actual answer; stripped repeatedly from the start of a response.
_LEAD_INS = re.compile(
    r"^\s*(?:the\s+)?(?:correct\s+|final\s+|best\s+)?(?:answer|option|choice)\s*(?:is|:)?\s*"
    r"|^\s*(?:answer|option|choice)\s*[:\-]\s*"
    r"|^\s*(?:assistant|gpt)\s*:\s*",
    re.IGNORECASE,
)
# A bare option letter at the start: "B", "B.", "B)", "(B)", "[B]", "B:", "**B**".
_LEADING_LETTER = re.compile(r"^[\s*(\[]*([A-Za-z])(?:[\s*)\].:,]|$)")
# An explicit letter anywhere: "(B)" or "option B" / "answer is B".
_PAREN_LETTER = re.compile(r"\(([A-Za-z])\)")
_NAMED_LETTER = re.compile(r"\b(?:option|choice|answer(?:\s+is)?)\s*:?\s*\(?([A-Za-z])\b(?![\w'])", re.I)


def normalize(text: str) -> str:
    """Lower-case, punctuation to spaces, collapse whitespace."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def tokens(text: str) -> list[str]:
    return normalize(text).split()


def strip_lead_in(text: str) -> str:
    """Remove "The answer is", "Answer:", "Option" ... from the start of a response."""
    previous = None
    text = text.strip()
    while previous != text:
        previous = text
        text = _LEAD_INS.sub("", text, count=1).strip()
    return text


def extract_yes_no(response: str) -> str | None:
    """The yes/no a response commits to, or None when it says neither (or both without a lead)."""
    words = tokens(strip_lead_in(response))
    if not words:
        return None
    if words[0] in YES_NO:
        return words[0]
    present = [w for w in words if w in YES_NO]
    return present[0] if present and len(set(present)) == 1 else None


def extract_option(response: str, options: Sequence[str]) -> str | None:
    """The option letter a response picks ("A", "B", ...), or None when it cannot be told.

    Accepts a leading letter in any common dress, an explicit "(B)" / "option B" anywhere, or the
    text of exactly one option (exact after normalisation, else the only option contained in it).
    """
    letters = [chr(ord("A") + i) for i in range(len(options))]
    body = strip_lead_in(response)
    m = _LEADING_LETTER.match(body)
    # "A mass in ..." starts with the article, not with option A: then only the text can decide.
    article = m is not None and body.startswith("A ") and bool(body[2:].strip())
    if m and m.group(1).upper() in letters and not article:
        return m.group(1).upper()
    for pattern in (_PAREN_LETTER, _NAMED_LETTER):
        found = {g.upper() for g in pattern.findall(response)} & set(letters)
        if len(found) == 1:
            return found.pop()
    return _option_by_text(body, options, letters)


def _option_by_text(body: str, options: Sequence[str], letters: list[str]) -> str | None:
    norm = normalize(body)
    normed = [normalize(o) for o in options]
    for letter, opt in zip(letters, normed, strict=True):
        if opt and norm == opt:
            return letter
    padded = f" {norm} "
    hits = [letter for letter, opt in zip(letters, normed, strict=True) if opt and f" {opt} " in padded]
    if len(hits) > 1:  # prefer the longest when one option is part of another ("CT" vs "CT scan")
        longest = max(hits, key=lambda letter: len(normed[letters.index(letter)]))
        others = [h for h in hits if h != longest]
        if all(normed[letters.index(h)] in normed[letters.index(longest)] for h in others):
            return longest
        return None
    return hits[0] if hits else None


def token_recall(response: str, gold: str) -> float:
    """Fraction of the gold answer's tokens (with multiplicity) found in the response."""
    gold_tokens = Counter(tokens(gold))
    if not gold_tokens:
        return 0.0
    resp = Counter(tokens(response))
    common = sum(min(n, resp[t]) for t, n in gold_tokens.items())
    return common / sum(gold_tokens.values())


def closed_correct(response: str, gold: str) -> bool:
    """A closed short answer: yes/no compared as such; others exact or as a whole phrase in the response."""
    g = normalize(gold)
    if g in YES_NO:
        return extract_yes_no(response) == g
    r = normalize(strip_lead_in(response))
    return bool(g) and (r == g or f" {g} " in f" {r} ")


@dataclass(frozen=True)
class Score:
    score: float  # 0/1 for closed questions, token recall for open ones
    correct: bool  # closed: score == 1; open: every gold token recalled (used for paired tests)
    parsed: str | None  # the yes/no or letter read from the response (closed), None otherwise


def score_response(response: str, gold: str, kind: str, options: Sequence[str] = ()) -> Score:
    """Score one response. ``kind`` is "closed" or "open"; with ``options`` gold is the letter."""
    if kind not in ("closed", "open"):
        raise ValueError(f"unknown question kind {kind!r} (expected 'closed' or 'open')")
    if options:
        picked = extract_option(response, options)
        ok = picked is not None and picked == gold.strip().upper()
        return Score(float(ok), ok, picked)
    if kind == "closed":
        ok = closed_correct(response, gold)
        yn = extract_yes_no(response) if normalize(gold) in YES_NO else None
        return Score(float(ok), ok, yn)
    recall = token_recall(response, gold)
    return Score(recall, recall >= 1.0, None)


# HuatuoGPT-Vision's letter pattern (scorer.match_choice3): a letter a-n / A-N after the start, a
# non-word character or the CJK copulas, followed by a non-word character or the end; never "a " / "A "
# (the article). Its first hit is taken as it is: lower case or outside the options, it counts as wrong.
_PUBLISHED_LETTER = re.compile(r"(?:是|为|\W|^)(?![aA] )([a-nA-N])(?:\W|$)", re.S)


def published_option(response: str, options: Sequence[str]) -> str:
    """The option letter as HuatuoGPT-Vision's ``score_mix_llava`` takes it, whatever it is.

    1. the first standalone letter (pattern above), returned as found;
    2. else the option whose (lower-cased) text occurs latest in the response, the earlier option on a tie;
    3. else the option most similar to the response (difflib ratio), the later option on a tie.
    It always answers, as theirs does; only stage 1 can give a letter that is no option."""
    import difflib

    found = _PUBLISHED_LETTER.search(response)
    if found:
        return found.group(1)
    letters = [chr(ord("A") + i) for i in range(len(options))]
    lowered = response.lower()
    placed = [(lowered.rindex(o.lower()), letter) for letter, o in zip(letters, options, strict=True)
              if o.lower() in lowered]
    if placed:
        latest = max(pos for pos, _ in placed)
        return next(letter for pos, letter in placed if pos == latest)
    ratios = [difflib.SequenceMatcher(None, o.lower(), lowered).ratio() for o in options]
    return letters[max(i for i, r in enumerate(ratios) if r == max(ratios))]


def score_published(response: str, gold: str, kind: str, options: Sequence[str] = ()) -> Score:
    """The published scorers: letter matching (above, compared with the gold letter case-sensitively) for
    multiple choice; for other questions, the VQA-RAD notebook's containment of either answer in the
    other after upper-casing both (``--population all`` only: the published population has none)."""
    if options:
        picked = published_option(response, options)
        ok = picked == gold.strip()
        return Score(float(ok), ok, picked)
    said, want = response.strip().upper(), gold.strip().upper()
    ok = bool(said) and bool(want) and (want in said or said in want)
    return Score(float(ok), ok, None)


SCORE_FUNCTIONS: dict[Scorer, Callable[..., Score]] = {"vgmed": score_response, "published": score_published}


@dataclass(frozen=True)
class GroupSummary:
    n: int
    mean_score: float
    accuracy: float  # fraction with correct == True


def summarize(rows: Iterable[dict], keys: Sequence[str] = ("kind", "modality")) -> dict:
    """Overall and per-``key`` means of ``score`` and ``correct`` over prediction rows."""
    rows = list(rows)

    def group(sel: list[dict]) -> dict:
        n = len(sel)
        return GroupSummary(
            n=n,
            mean_score=sum(r["score"] for r in sel) / n if n else float("nan"),
            accuracy=sum(bool(r["correct"]) for r in sel) / n if n else float("nan"),
        ).__dict__

    out: dict = {"overall": group(rows)}
    for key in keys:
        buckets: dict[str, list[dict]] = {}
        for r in rows:
            buckets.setdefault(str(r.get(key) or "unknown"), []).append(r)
        out[f"by_{key}"] = {k: group(v) for k, v in sorted(buckets.items())}
    return out
