"""Automatic checks every draft passes before a clinician sees it.

Each rule is a pure function ``rule(draft, ctx) -> reason | None``; the first failing rule's reason is
stored with the rejected draft, so reviewers and users can see why it never reached review.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from vgmed_build.drafting.wording import article_before_mass_noun
from vgmed_build.labelnames import PLACEHOLDER
from vgmed_build.resources import schema_problems


@dataclass(frozen=True)
class LintLimits:
    min_chars: int = 10
    max_chars: int = 200
    max_words: int = 40
    max_answer_chars: int = 60
    max_answer_words: int = 8


@dataclass
class LintContext:
    """What the rules need beyond the draft itself."""

    names: list[str]  # target display name, synonyms, label
    others: set[str] = field(default_factory=set)  # normalized questions of the region's other drafts
    limits: LintLimits = field(default_factory=LintLimits)
    category: str = ""  # the region's category (sources file or data): organ, tissue, lesion, ...


def normalize(text: str) -> str:
    """Case, punctuation and spacing folded away: the key for duplicate detection."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _word_starts(text: str, phrase: str, whole: bool = True) -> list[int]:
    """Case-insensitive positions where ``phrase`` starts on a word boundary (and, with ``whole``,
    also ends on one). Plain string search: per-region names would defeat the regex cache."""
    text, phrase = text.lower(), phrase.lower()
    found, i = [], text.find(phrase) if phrase else -1
    while i >= 0:
        end = i + len(phrase)
        before_ok = i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")
        after_ok = not whole or end == len(text) or not (text[end].isalnum() or text[end] == "_")
        if before_ok and after_ok:
            found.append(i)
        i = text.find(phrase, i + 1)
    return found


def _without_names(question: str, names: list[str]) -> str:
    """The question with every target name replaced, so words inside a name ('small bowel',
    'left kidney', 'head and neck') are not mistaken for the question's own words."""
    text = question
    for name in sorted(names, key=len, reverse=True):
        for i in reversed(_word_starts(text, name)):
            text = text[:i] + " <obj> " + text[i + len(name) :]
    return text


def _contains_phrase(text: str, phrase: str) -> bool:
    return bool(_word_starts(normalize(text), normalize(phrase)))


def rule_schema(draft: dict, ctx: LintContext) -> str | None:
    problems = schema_problems("draft", draft)
    return f"schema: {problems[0]}" if problems else None


_INJECTION = [
    (
        re.compile(
            r"\b(ignore|disregard|forget|override)\b\W+(?:\w+\W+){0,3}?"
            r"(instructions?|prompts?|rules?|above|previous|prior|system)\b",
            re.IGNORECASE,
        ),
        "an instruction to the model",
    ),
    (
        re.compile(
            r"\b(target (name|object)|modality|body part|structure category|object category|patient side|"
            r"location in the (image|picture)|relative size|bounding boxes|question to rephrase)\s*:",
            re.IGNORECASE,
        ),
        "a prompt field",
    ),
    (re.compile(r"\b(system|assistant|user|developer)\s*:|<\|[^|>]*\|>|\[/?INST\]|</?s>", re.IGNORECASE),
     "a chat role or template marker"),
    (
        re.compile(r"\b(reply|respond|answer|output)\s+(only\s+)?(with|in)\s+(json|yes|no|the following)\b|"
                   r"\byou (are|must|should) (now|always|never)\b", re.IGNORECASE),
        "an instruction to the model",
    ),
]


def rule_injection(draft: dict, ctx: LintContext) -> str | None:
    """Text that reads as instructions to a model, or forges a field of our prompts ("cyst\\nTarget name:
    liver"), whether the LLM copied it from a hostile label or wrote it: a reviewer must not get it.
    The target name counts too, since a label is how such text gets in. (Control characters and line
    breaks are rule_plain_text's.)"""
    for field_name in ("question", "answer"):
        for pattern, what in _INJECTION:
            m = pattern.search(draft[field_name])
            if m:
                return f"injection: the {field_name} contains {what} ({m.group(0)!r})"
    return None


def rule_names_target(draft: dict, ctx: LintContext) -> str | None:
    if any(_word_starts(draft["question"], n, whole=False) for n in ctx.names):  # plurals count
        return None
    return f"names_target: the question does not name the target ({' / '.join(ctx.names)})"


_CONJUNCTION = re.compile(r"(?<!\w)(and|or|and/or)(?!\w)|/", re.IGNORECASE)


def question_form_problem(question: str) -> str | None:
    """Why ``question`` is not one question (exactly one '?', at the end), or None."""
    q = question.strip()
    if q.count("?") != 1 or not q.endswith("?"):
        return "single_question: must be exactly one question ending with a single '?'"
    return None


def rule_single_question(draft: dict, ctx: LintContext) -> str | None:
    q = draft["question"].strip()
    if problem := question_form_problem(q):
        return problem
    match = _CONJUNCTION.search(_without_names(q, ctx.names).replace("<obj>", ""))
    if match:
        return f"single_question: compound question ('{match.group(0)}')"
    return None


def rule_article(draft: dict, ctx: LintContext) -> str | None:
    """No "a"/"an" before a mass noun ("Does the image contain a grey matter ...?")."""
    phrase = article_before_mass_noun(draft["question"], ctx.names)
    return f"article: '{phrase}' (a mass noun takes no 'a'/'an')" if phrase else None


def rule_length(draft: dict, ctx: LintContext) -> str | None:
    lim, q, a = ctx.limits, draft["question"].strip(), draft["answer"].strip()
    if not lim.min_chars <= len(q) <= lim.max_chars:
        return f"length: question has {len(q)} characters (allowed {lim.min_chars}-{lim.max_chars})"
    if len(q.split()) > lim.max_words:
        return f"length: question has {len(q.split())} words (max {lim.max_words})"
    if not a or len(a) > lim.max_answer_chars or len(a.split()) > lim.max_answer_words:
        return f"length: answer must be 1-{lim.max_answer_chars} characters and at most {lim.max_answer_words} words"
    return None


def rule_answer_hidden(draft: dict, ctx: LintContext) -> str | None:
    """Attribute answers must not be spelled out in the question; for position questions even the
    target's name counts ('Which side ... is the left kidney on?')."""
    if draft["q_type"] == "attribute":
        text = _without_names(draft["question"], ctx.names)
    elif draft["q_type"] == "position":
        text = draft["question"]
    else:
        return None
    if _contains_phrase(text, draft["answer"]):
        return f"answer_hidden: the question gives the answer away ({draft['answer']!r})"
    return None


_SIDE_WORD = re.compile(r"(?<!\w)(left|right)(?:[- ]?(?:sided|side|hand))?(?!\w)", re.IGNORECASE)


def names_a_side(text: str) -> bool:
    """Whether ``text`` carries a side word ('left kidney'): a position question about it is trivial."""
    return _SIDE_WORD.search(text) is not None


def rule_side(draft: dict, ctx: LintContext) -> str | None:
    """Side words must agree with the side computed from world geometry. Words inside the target's
    name count too (a 'left kidney' found on the patient's right is a conflict a reviewer must not
    get); for regions that are not lateral or whose side is unknown, only the name may carry a side."""
    side = draft["side"]
    if side in ("left", "right"):
        opposite = "right" if side == "left" else "left"
        for m in _SIDE_WORD.finditer(draft["question"]):
            if m.group(1).lower() == opposite:
                return f"side: the question says '{m.group(0)}' but the region lies on the patient's {side}"
        return None
    own = _SIDE_WORD.search(_without_names(draft["question"], ctx.names))
    if own:
        return f"side: the question says '{own.group(0)}' but the region's side is {side}"
    return None


_IDENTIFIERS = [
    (re.compile(r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b|\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b"), "a date"),
    (
        re.compile(
            r"\b(jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?\s+\d{1,2}(st|nd|rd|th)?,?"
            r"\s+\d{4}\b|\b\d{1,2}\s+(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\s+\d{4}\b",
            re.IGNORECASE,
        ),
        "a date",
    ),
    (re.compile(r"\d{5,}"), "a long digit run"),
    (re.compile(r"\b\d+(\.\d+){3,}\b"), "a UID"),
    (re.compile(r"\b(MRN|DOB|SSN|accession|medical record)\b", re.IGNORECASE), "a record identifier"),
    (
        re.compile(r"\b(patient|subject|case)\s*(id|no\.?|number|#|:)?\s*#?\d", re.IGNORECASE),
        "a patient number",
    ),
    (re.compile(r"\b(patient|subject)\s*(id|no\.|number)\b", re.IGNORECASE), "a patient number"),
    (re.compile(r"\b(Patient|Subject|Mr|Mrs|Ms|Miss|Dr)\.?\s+[A-Z][a-z]+"), "a name"),
    (re.compile(r"\b[A-Za-z]+\^[A-Za-z]+"), "a DICOM person name"),
]


def find_identifier(text: str) -> tuple[str, str] | None:
    """(what kind, the match) of the first identifier-like text in ``text`` (a date, a name, ...)."""
    for pattern, what in _IDENTIFIERS:
        m = pattern.search(text)
        if m:
            return what, m.group(0)
    return None


# Parts of an organ a tissue-class mask does not tell apart: a slice of "left grey matter" may hold
# only cerebellum, where "the left hemisphere" or "the left half of the brain" reads as the cerebrum.
_ORGAN_PART = re.compile(
    r"\b(hemispheres?|half of the (brain|cerebrum)|cerebr(um|al)|cerebell(um|ar)|lobes?|cortex|cortical)\b",
    re.IGNORECASE,
)


def rule_organ_part(draft: dict, ctx: LintContext) -> str | None:
    """A tissue class (category 'tissue': grey matter, fat) is found in every part of an organ, so a
    question about it must not name a part of the organ that the slice may not show; name it by
    tissue and side instead ("grey matter on the patient's left")."""
    if ctx.category.lower() != "tissue":
        return None
    m = _ORGAN_PART.search(draft["question"])
    if m:
        return (f"organ_part: the question names '{m.group(0)}', but a tissue-class mask does not say which "
                "part of the organ the slice holds (name it by tissue and side)")
    return None


def _first_in_text(draft: dict, find):
    """The first of the question and answer in which ``find`` finds something, with what it found; or None."""
    for field_name in ("question", "answer"):
        found = find(draft[field_name])
        if found:
            return field_name, found
    return None


def rule_no_identifiers(draft: dict, ctx: LintContext) -> str | None:
    hit = _first_in_text(draft, find_identifier)
    return hit and f"identifier: the {hit[0]} contains {hit[1][0]} ({hit[1][1]!r})"


# C0/C1 controls (ANSI escapes start with ESC) and bidirectional overrides, which reorder what a reader sees.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_MARKUP = re.compile(r"</?([A-Za-z][A-Za-z0-9-]*)|&#?\w+;")  # as browsers read a tag: no space after '<'


def plain_text_problem(text: str) -> str | None:
    """Why ``text`` is not plain text for a question or answer (control characters, HTML), or None.

    Questions and answers reach terminals, Label Studio and web viewers of the dataset: an ANSI escape
    or a ``<script>`` tag in one would act there. The message never repeats a control character.
    """
    m = _CONTROL.search(text)
    if m:
        return f"control character U+{ord(m.group(0)):04X} at column {m.start() + 1} (no escape codes or line breaks)"
    m = _MARKUP.search(text)
    if m:
        what = f"<{m.group(1).lower()}> tag" if m.group(1) else "character entity"
        return f"HTML markup (a {what} at column {m.start() + 1})"
    return None


def rule_plain_text(draft: dict, ctx: LintContext) -> str | None:
    hit = _first_in_text(draft, plain_text_problem)
    return hit and f"plain_text: the {hit[0]} contains {hit[1]}"


def rule_placeholder(draft: dict, ctx: LintContext) -> str | None:
    """``label_4`` is what ingest stores for a label value nothing names: no name for a question."""
    for field_name in ("question", "answer"):
        m = PLACEHOLDER.search(draft[field_name])
        if m:
            return (
                f"placeholder: the {field_name} names {m.group(0)!r}, the placeholder of an unnamed label value; "
                f'name it in the sources file\'s labels table ("{m.group("value")}" = "...") and ingest again'
            )
    return None


def rule_not_duplicate(draft: dict, ctx: LintContext) -> str | None:
    if normalize(draft["question"]) in ctx.others:
        return "duplicate: another draft of this region asks the same question"
    return None


RULES: list[Callable[[dict, LintContext], str | None]] = [
    rule_schema,
    rule_injection,
    rule_plain_text,
    rule_placeholder,
    rule_names_target,
    rule_single_question,
    rule_article,
    rule_length,
    rule_answer_hidden,
    rule_side,
    rule_organ_part,
    rule_no_identifiers,
    rule_not_duplicate,
]


def lint(draft: dict, ctx: LintContext) -> str | None:
    """The first failing rule's reason, or None when the draft passes every rule."""
    for rule in RULES:
        reason = rule(draft, ctx)
        if reason:
            return reason
    return None
