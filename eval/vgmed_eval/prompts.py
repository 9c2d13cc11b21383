"""Prompts of the published protocol that grounding, VGRefine and VQA share.

A neutral module (it imports nothing of the evaluator) so that grounding and VGRefine need not
depend on the VQA package; VQA's own question formatting (options, letters) lives in ``vqa/prompts``.
"""

from __future__ import annotations

SHORT_ANSWER = "Answer the question using a single word or phrase."
# The question-independent reference prompt of the grounding metrics and of VGRefine's triage.
GENERAL_PROMPT = f"Write a general description of the image. {SHORT_ANSWER}"


def short_answer(question: str) -> str:
    """The published prompt of an open question: the question, then the short-answer instruction."""
    return f"{question} {SHORT_ANSWER}"
