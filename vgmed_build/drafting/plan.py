"""What `generate` still has to draft: the slots of each region, minus what is stored already.

Work is planned per region as a list of draft slots with stable ids (sha256(region|q_type|slot)).
A slot already stored as ok/rejected by the same drafter (and model) is skipped, so reruns and resumes
redo nothing; 'error' drafts are retried, and with ``regenerate_rejected`` a rejected LLM draft is
asked again with its rejection shown to the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vgmed_build.catalog import Catalog
from vgmed_build.drafting.lint import LintLimits, names_a_side
from vgmed_build.drafting.llm import LlmConfig
from vgmed_build.drafting.templates import Prompts, attribute_choices, pick_slots, region_offset, target_name
from vgmed_build.identifiers import stable_id


def draft_id(region_id: str, q_type: str, slot: int, absent: bool = False) -> str:
    return stable_id(region_id, q_type, slot, "absent") if absent else stable_id(region_id, q_type, slot)


def absent_targets(region: dict, structures: list[dict], n: int) -> list[str]:
    """Labels of up to ``n`` structures of the region's source with no labelled pixel in its image, for
    localization questions answered "no". The regions of one image take different ones (each starts
    at its rank among the image's structures), so an image asks about as many absent structures as it
    has regions where the source has that many; none when ingest did not record the image's labels."""
    present = region.get("image_labels")
    if present is None or n <= 0:
        return []
    candidates = [s["label"] for s in structures if s["label"] not in present]
    # Rank among the image's structures that are regions somewhere in the source (the others, e.g.
    # those always over max_area_ratio, host no question).
    hosts = sorted({s["label"] for s in structures} & {*present, region["label"]})
    rank = hosts.index(region["label"]) if region["label"] in hosts else 0
    start = region_offset(region["image_id"], len(candidates))
    return [candidates[(start + rank * n + k) % len(candidates)] for k in range(n) if rank * n + k < len(candidates)]


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
        absent = absent_targets(region, self.structures.get(region["source"]["name"], []), o.absent_per_region)
        specs += [DraftSpec("localization", k, "templates", absent=label) for k, label in enumerate(absent)]
        specs += [DraftSpec("attribute", s, o.drafter) for s in range(n_attr)]
        lateral = region.get("side") in ("left", "right")
        if o.position_questions and lateral and p.position and not names_a_side(target_name(region)):
            specs.append(DraftSpec("position", 0, "templates"))
        return specs

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
