"""Which questions a VQA run asks, and what its accuracy is over (``--population``).

``all`` (vgmed): every loaded question, closed and open, as the benchmark poses it. ``closed-mc``
(published): the population behind the published figures, HuatuoGPT-Vision's ``score_mix_llava``
protocol: open questions are skipped, closed ones are asked as multiple choice ("{q}\\nA. ...\\nAnswer
with the option's letter ...") and a closed question without options is skipped too. Benchmarks that
are multiple choice already (PMC-VQA, OmniMedVQA, MMMU) keep their options. VQA-RAD, SLAKE and PathVQA
closed questions get theirs here: yes / no for a yes/no answer, else the alternatives the question
itself names ("... left or right?") when the answer is one of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from vgmed_eval.protocol import POPULATIONS
from vgmed_eval.vqa.benchmarks import LETTERS, YES_NO, VQAItem

_ARTICLE = re.compile(r"^(?:the|a|an)\s+", re.I)


@dataclass
class Population:
    """The questions asked and what was set aside (counts and the first few ids, for the report)."""

    name: str
    items: list[VQAItem]
    loaded: int
    skipped_open: list[str] = field(default_factory=list)
    skipped_no_options: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {"name": self.name, "loaded": self.loaded, "asked": len(self.items),
                "skipped_open": len(self.skipped_open), "skipped_no_options": len(self.skipped_no_options),
                "skipped_no_options_ids": self.skipped_no_options[:20]}


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s-]", " ", text.lower()).split())


def named_alternatives(question: str) -> tuple[str, ...]:
    """The two alternatives a closed question names: the words after its last " or ", and as many words
    before it ("Is the lesion on the left or right?" -> left, right; "Is this a CT or an MRI?" -> CT, MRI)."""
    body = question.strip().rstrip("?.! ")
    head, sep, tail = body.rpartition(" or ")
    if not sep:
        return ()
    last = _ARTICLE.sub("", tail.strip()).split()
    before = head.replace(",", " ").split()
    if not last or len(before) < len(last):
        return ()
    return " ".join(before[-len(last):]), " ".join(last)


def as_multiple_choice(item: VQAItem) -> VQAItem | None:
    """A closed question with options and the gold letter, or None when no options can be given."""
    if item.options:
        return item
    gold = _norm(item.answer)
    if gold in YES_NO:
        return replace(item, options=YES_NO, answer=LETTERS[YES_NO.index(gold)])
    options = named_alternatives(item.question)
    hits = [i for i, o in enumerate(options) if _norm(o) == gold]
    if len(hits) != 1 or len(options) > len(LETTERS):
        return None
    return replace(item, options=options, answer=LETTERS[hits[0]])


def select(items: list[VQAItem], name: str) -> Population:
    """The questions of population ``name`` (see the module docstring)."""
    if name not in POPULATIONS:
        raise ValueError(f"population must be one of {POPULATIONS}, got {name!r}")
    if name == "all":
        return Population(name, list(items), len(items))
    pop = Population(name, [], len(items))
    for it in items:
        if it.kind == "open":
            pop.skipped_open.append(it.id)
            continue
        mc = as_multiple_choice(it)
        if mc is None:
            pop.skipped_no_options.append(it.id)
        else:
            pop.items.append(mc)
    return pop


def metric_label(population: str, scorer: str) -> str:
    """One line naming the population and the metric, for results and the reproduction report."""
    who = ("closed questions as multiple choice (open skipped)" if population == "closed-mc"
           else "all questions, closed and open, as posed")
    how = ("HuatuoGPT-Vision's letter match (score_mix_llava)" if scorer == "published"
           else "vgmed scoring (closed 0/1; open: every gold token recalled)")
    return f"accuracy over {who}; {how}"
