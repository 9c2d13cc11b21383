"""VQA's question prompts: a word or phrase for open questions, a letter for options."""

from __future__ import annotations

from vgmed_eval.prompts import short_answer
from vgmed_eval.vqa.benchmarks import LETTERS, VQAItem

# HuatuoGPT-Vision's multiple-choice instruction (the protocol of OmniMedVQA, MMMU and PMC-VQA there).
OPTION_LETTER = "Answer with the option's letter from the given choices directly."


def question_prompt(item: VQAItem) -> str:
    """The user text for one question (the adapter's chat template adds the image and roles)."""
    if item.options:
        lines = [f"{LETTERS[i]}. {opt}" for i, opt in enumerate(item.options)]
        return "\n".join([item.question, *lines, OPTION_LETTER])
    return short_answer(item.question)
