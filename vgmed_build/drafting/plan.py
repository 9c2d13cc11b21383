"""What `generate` still has to draft: the slots of each region, minus what is stored already.

Work is planned per region as a list of draft slots with stable ids (sha256(region|q_type|slot)).
A slot already stored as ok/rejected by the same drafter (and model) is skipped, so reruns and resumes
redo nothing; 'error' drafts are retried, and with ``regenerate_rejected`` a rejected LLM draft is
asked again with its rejection shown to the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Literal

from vgmed_build.catalog import Catalog
from vgmed_build.drafting.balance import Balance, ImageAbsence, absent_slots, balance_source
from vgmed_build.drafting.lint import LintLimits, names_a_side
from vgmed_build.drafting.llm import LlmConfig
from vgmed_build.drafting.templates import Prompts, attribute_choices, pick_slots, region_offset, target_name
from vgmed_build.identifiers import stable_id


def draft_id(region_id: str, q_type: str, slot: int, absent: bool = False) -> str:
    return stable_id(region_id, q_type, slot, "absent") if absent else stable_id(region_id, q_type, slot)


def absent_candidates(region: dict, structures: list[dict]) -> list[str] | None:
    """Labels of the structures of the region's source with no labelled pixel in its image (what a "no"
    question may ask about); None when ingest did not record the image's labels."""
    present = region.get("image_labels")
    return None if present is None else [s["label"] for s in structures if s["label"] not in present]


def absent_targets(region: dict, candidates: list[str], image_regions: list[str], quota: int,
                   per_region: int) -> list[str]:
    """The absent structures the region asks "no" about: its share (drafting.balance.absent_slots) of
    its image's ``quota`` questions, each about a different one of ``candidates``, starting at a place
    of the image's own, so the regions of one image never ask about the same structure."""
    if quota <= 0 or not candidates or region["label"] not in image_regions:
        return []
    start = region_offset(region["image_id"], len(candidates))
    slots = absent_slots(image_regions.index(region["label"]), len(image_regions), quota, per_region)
    return [candidates[(start + j) % len(candidates)] for j in slots]


def plan_balance(catalog: Catalog, structures: dict[str, list[dict]], per_region: int) -> dict[str, Balance]:
    """Per source, its "no" questions balanced against its "yes" ones (drafting.balance), read image by
    image from the catalog."""
    out = {}
    for source, rows in groupby(catalog.image_region_counts(), key=lambda r: r[0]):
        labels = {s["label"] for s in structures.get(source, [])}
        out[source] = balance_source(
            (ImageAbsence(image_id, n, 0 if present is None else len(labels - set(present)))
             for _, image_id, n, present in rows),
            per_region,
        )
    return out


@dataclass
class GenerateOptions:
    drafter: str = "templates"
    localization_per_region: int = 1
    absent_per_region: int = 1  # localization questions about an absent structure (answer "no")
    attributes_per_region: int = 1
    position_questions: bool = False
    paraphrase: bool = False
    with_image: bool = False
    regenerate_rejected: bool = False
    force: bool = False
    limit: int | None = None
    seed: int = 0
    prompts_dir: Path | None = None
    lint_limits: LintLimits = field(default_factory=LintLimits)
    llm: LlmConfig | None = None
    batch: bool = False  # LLM requests through the provider's batch service (drafting.batch)
    progress: bool = True

    @property
    def needs_llm(self) -> bool:
        return self.drafter == "llm" or self.paraphrase

    @property
    def model(self) -> str | None:
        """The model that drafts, when an LLM does."""
        return self.llm.model if self.needs_llm and self.llm else None


@dataclass(frozen=True)
class DraftSpec:
    """One draft slot of one region, and how to fill it."""

    q_type: str
    slot: int
    drafter: Literal["templates", "llm"]
    attempt: int = 0  # > 0 when re-asking the LLM for a rejected draft
    previous: tuple[str, str] | None = None  # (rejected question, reason) shown to the LLM
    absent: str | None = None  # localization about this absent structure's label (answer "no")

    def draft_id(self, region_id: str) -> str:
        return draft_id(region_id, self.q_type, self.slot, self.absent is not None)


@dataclass(frozen=True)
class Existing:
    """What the catalog holds for one draft slot."""

    status: str
    drafter: str | None
    model: str | None
    question: str
    reason: str | None
    attempt: int


def load_existing(catalog: Catalog, region_id: str) -> dict[str, Existing]:
    """The region's stored drafts by id, reduced to what planning and lint need."""
    return {
        i: Existing(status, drafter, model, question or "", reason, int(attempt or 0))
        for i, status, drafter, model, question, reason, attempt in catalog.draft_states(region_id)
    }


class Planner:
    """The draft slots one region still needs under ``options``, given what the catalog holds: read
    region by region, so nothing held grows with the number of drafts."""

    def __init__(self, catalog: Catalog, options: GenerateOptions, prompts: Prompts):
        self.catalog, self.opt, self.prompts = catalog, options, prompts
        self.structures = catalog.source_structures() if options.absent_per_region > 0 else {}
        self.balance = plan_balance(catalog, self.structures, options.absent_per_region) if self.structures else {}

    def work_for(self, region: dict) -> tuple[list[DraftSpec], int]:
        """The slots to draft now (with their rejection history) and how many are done already."""
        existing = load_existing(self.catalog, region["id"])
        slots = [(s, existing.get(s.draft_id(region["id"]))) for s in self._slots(region)]
        work = [self._with_history(old, s) for s, old in slots if self._needs_work(old, s)]
        return work, len(slots) - len(work)

    def ok_questions(self, region_id: str, redone: set[str]) -> list[str]:
        """The region's stored ok questions, except those of the drafts in ``redone`` (read again when its
        drafts are stored: a region's drafts of this run are not in the catalog before that)."""
        existing = load_existing(self.catalog, region_id)
        return [e.question for i, e in existing.items() if e.status == "ok" and i not in redone]

    def _slots(self, region: dict) -> list[DraftSpec]:
        p, o = self.prompts.for_region(region), self.opt
        loc_drafter = "llm" if o.paraphrase else "templates"
        specs = [
            DraftSpec("localization", s, loc_drafter)
            for s in pick_slots(region["id"], len(p.localization), o.localization_per_region)
        ]
        n_attr = (
            o.attributes_per_region
            if o.drafter == "llm"
            else min(o.attributes_per_region, len(attribute_choices(p, region)))
        )
        absent = self._absent(region)
        specs += [DraftSpec("localization", k, "templates", absent=label) for k, label in enumerate(absent)]
        specs += [DraftSpec("attribute", s, o.drafter) for s in range(n_attr)]
        lateral = region.get("side") in ("left", "right")
        if o.position_questions and lateral and p.position and not names_a_side(target_name(region)):
            specs.append(DraftSpec("position", 0, "templates"))
        return specs

    def _absent(self, region: dict) -> list[str]:
        """The absent structures the region asks "no" about, under its source's balance."""
        source = region["source"]["name"]
        candidates = absent_candidates(region, self.structures.get(source, []))
        if not candidates or source not in self.balance:
            return []
        image_regions = self.catalog.image_region_labels(region["image_id"])
        n = self.opt.absent_per_region
        quota = ImageAbsence(region["image_id"], len(image_regions), len(candidates)).base(n)
        quota += self.balance[source].extra.get(region["image_id"], 0)
        return absent_targets(region, candidates, image_regions, quota, n)

    def unbalanced(self) -> dict[str, Balance]:
        """The sources whose images have too few absent structures for as many "no" as "yes"."""
        return {source: b for source, b in self.balance.items() if b.short > 0}

    def _needs_work(self, old: Existing | None, spec: DraftSpec) -> bool:
        if old is None or self.opt.force or old.status == "error":
            return True
        if old.drafter != spec.drafter or (spec.drafter == "llm" and old.model != self.opt.model):
            return True
        return old.status == "rejected" and self.opt.regenerate_rejected and spec.drafter == "llm"

    def _with_history(self, old: Existing | None, spec: DraftSpec) -> DraftSpec:
        if old and old.status == "rejected" and self.opt.regenerate_rejected and spec.drafter == "llm":
            return DraftSpec(spec.q_type, spec.slot, spec.drafter, old.attempt + 1, (old.question, old.reason or ""))
        return spec
