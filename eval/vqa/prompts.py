"""Prompts of the published protocol: a word or phrase for short answers, a letter for options."""

from __future__ import annotations

from vgmed_eval.vqa.benchmarks import LETTERS, VQAItem

SHORT_ANSWER = "Answer the question using a single word or phrase."
# HuatuoGPT-Vision's multiple-choice instruction (the protocol of OmniMedVQA, MMMU and PMC-VQA there).
OPTION_LETTER = "Answer with the option's letter from the given choices directly."
# The question-independent reference prompt of the grounding metrics and of VGRefine's triage.
GENERAL_PROMPT = f"Write a general description of the image. {SHORT_ANSWER}"


def question_prompt(item: VQAItem) -> str:
    """The user text for one question (the adapter's chat template adds the image and roles)."""
    if item.options:
        lines = [f"{LETTERS[i]}. {opt}" for i, opt in enumerate(item.options)]
        return "\n".join([item.question, *lines, OPTION_LETTER])
    return f"{item.question} {SHORT_ANSWER}"
