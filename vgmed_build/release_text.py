"""Whether a reviewed question and answer may go into a release, one draft at a time.

Drafts pass lint at `generate`; a reviewer's edit comes back from Label Studio without it. The
release therefore checks the text it is about to write, for every draft, with the checks that make
text unfit to publish whoever wrote it: bounded length (also bounds the cost of every later scan),
plain text (no control characters or HTML), one question ending in '?', and no identifiers (lint's
kinds, the release identifier patterns of `validate`, the forbid file). The content rules of lint
(target named, answer hidden, side words, no compound question) are left to the reviewer, whose
judgement is what review is for. A failing draft is left out with the reason; the rest is released.
Reasons never repeat an identifier or a control character.
"""

from __future__ import annotations

from collections.abc import Sequence

from vgmed_build.drafting.lint import (
    LintContext,
    LintLimits,
    find_identifier,
    plain_text_problem,
    question_form_problem,
    rule_length,
)
from vgmed_build.identifiers import Forbidden, find_forbidden, find_patterns


def limits_for(draft: dict) -> LintLimits:
    """lint's default limits, widened to the draft's own text: an edit may always be as long as the
    draft it replaces (generate may have allowed longer drafts with --max-question-chars)."""
    base = LintLimits()
    q, a = draft["question"].strip(), draft["answer"].strip()
    return LintLimits(
        min_chars=min(base.min_chars, len(q)),
        max_chars=max(base.max_chars, len(q)),
        max_words=max(base.max_words, len(q.split())),
        max_answer_chars=max(base.max_answer_chars, len(a)),
        max_answer_words=max(base.max_answer_words, len(a.split())),
    )


def text_problem(question: str, answer: str, draft: dict, forbid: Sequence[Forbidden] = ()) -> str | None:
    """Why this question and answer (the reviewed text of ``draft``) may not be released, or None."""
    length = rule_length({"question": question, "answer": answer}, LintContext([], limits=limits_for(draft)))
    if length:
        return length
    fields = (("question", question), ("answer", answer))
    for name, text in fields:
        problem = plain_text_problem(text)
        if problem:
            return f"the {name} contains {problem}"
    form = question_form_problem(question)
    if form:
        return form
    for name, text in fields:
        found = find_identifier(text)
        if found:
            return f"the {name} contains {found[0]} (not repeated here)"
        messages = find_patterns(text) + find_forbidden(text, list(forbid))
        if messages:
            return f"the {name} {messages[0]}"
    return None
