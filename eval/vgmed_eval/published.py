"""Published VQA figures of the paper's models, with where each comes from (for `vgmed-eval reproduce`).

The VGRefine authors' headline table does not name its metric; the figures are percentages on the
test splits. HuatuoGPT-Vision's own README reports the same base model differently, so both are
kept, each with its source, and a reproduction is read against both. The authors' paper also reports
OmniMedVQA and MMMU (Health & Medicine), but no stored copy shows those figures; the report fills
them from HuatuoGPT-Vision's README (74.0 / 50.6) and names that source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vgmed_eval.chat_templates import HUATUO, LLAVA_MED, recognise

# vgmed benchmark name -> the published table's column
COLUMNS = {"vqa-rad": "VQA-RAD", "slake": "SLAKE", "pathvqa": "PathVQA", "pmc-vqa": "PMC-VQA",
           "omnimedvqa": "OmniMedVQA", "mmmu-med": "MMMU H&M"}
PAPER = "VGRefine authors' project page, headline VQA table (metric not named there)"
HUATUO_README = "HuatuoGPT-Vision README (FreedomIntelligence/HuatuoGPT-Vision)"
# How each source's answers were decoded, as far as its public code says (docs/eval.md, "HuatuoGPT-Vision's
# evaluation code, option by option"): a sampled figure is not reproduced exactly by a greedy run.
DECODING = {
    PAPER: "not stated there; the authors' public HuatuoGPT-Vision wrapper (Medical-MLLMs-Fail cli_new.py) decodes "
           "greedily, 1 token, at least 1, as --protocol published does",
    HUATUO_README: "HuatuoGPT-Vision's eval.py through its chatbot: sampled (temperature 0.2, repetition penalty 1.2), "
                   "at most 256 new tokens, at least 1, seed 42; vgmed decodes greedily",
}


@dataclass(frozen=True)
class PublishedRow:
    model: str
    system: Literal["baseline", "vgrefine"]
    source: str
    values: dict[str, float]  # column -> percent


PUBLISHED_FIGURES = (
    PublishedRow("LLaVA-Med-7B", "baseline", PAPER,
                 {"VQA-RAD": 51.4, "SLAKE": 48.6, "PathVQA": 56.8, "PMC-VQA": 24.7}),
    PublishedRow("HuatuoGPT-Vision-7B", "baseline", PAPER,
                 {"VQA-RAD": 67.4, "SLAKE": 76.5, "PathVQA": 60.7, "PMC-VQA": 53.9}),
    PublishedRow("HuatuoGPT-Vision-7B", "vgrefine", PAPER,
                 {"VQA-RAD": 71.2, "SLAKE": 76.9, "PathVQA": 67.6, "PMC-VQA": 56.2}),
    PublishedRow("HuatuoGPT-Vision-7B", "baseline", HUATUO_README,
                 {"VQA-RAD": 63.7, "SLAKE": 76.2, "PathVQA": 57.9, "PMC-VQA": 54.3, "OmniMedVQA": 74.0,
                  "MMMU H&M": 50.6}),
)
# Where a published figure is over other questions than vgmed's reading of the benchmark: (column, source) -> why.
POPULATION_NOTES = {
    ("MMMU H&M", HUATUO_README): "the README's figure is over MMMU's test set; vgmed reads the validation split "
                                 "(the test answers are not public) and its single-image questions only",
}
MODELS = sorted({row.model for row in PUBLISHED_FIGURES})
_BY_PROMPT = {HUATUO.name: "HuatuoGPT-Vision-7B", LLAVA_MED.name: "LLaVA-Med-7B"}


def published_model(name: str) -> str | None:
    """The published 7B model a checkpoint path or hub id stands for, if it is recognised as one."""
    prompt = recognise(name)
    return _BY_PROMPT.get(prompt.name) if prompt and "7b" in str(name).lower() else None


def figure(model: str, system: str, benchmark: str, source: str = PAPER) -> float | None:
    """One published percentage, or None where nothing was published."""
    column = COLUMNS.get(benchmark)
    for row in PUBLISHED_FIGURES:
        if (row.model, row.system, row.source) == (model, system, source):
            return row.values.get(column) if column else None
    return None
