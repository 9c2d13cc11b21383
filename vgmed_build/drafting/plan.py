"""What `generate` still has to draft: the slots of each region, minus what is stored already.

Work is planned per region as a list of draft slots with stable ids (sha256(region|q_type|slot)).
A slot already stored as ok/rejected by the same drafter (and model) is skipped, so reruns and resumes
redo nothing; 'error' drafts are retried, and with ``regenerate_rejected`` a rejected LLM draft is
asked again with its rejection shown to the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Literal

from vgmed_build.catalog import Catalog
from vgmed_build.drafting.balance import Balance, ImageAbsence, YesCut, absent_slots, balance_source, cut_yes
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


UNBALANCED = ("drop-yes", "keep")  # --unbalanced: what a source that cannot balance does with its surplus "yes"


def _source_images(catalog: Catalog, structures: dict[str, list[dict]]) -> Iterator[tuple[str, Iterator[ImageAbsence]]]:
    """Per source, its images (regions, absent structures) in image id order, read from the catalog one
    row per image."""
    for source, rows in groupby(catalog.image_region_counts(), key=lambda r: r[0]):
        labels = {s["label"] for s in structures.get(source, [])}
        yield source, (ImageAbsence(image_id, n, None if present is None else len(labels - set(present)))
                       for _, image_id, n, present in rows)


def plan_balance(catalog: Catalog, structures: dict[str, list[dict]], per_region: int) -> dict[str, Balance]:
    """Per source, its "no" questions balanced against its "yes" ones (drafting.balance), read image by
    image from the catalog."""
    return {source: balance_source(images, per_region) for source, images in _source_images(catalog, structures)}


def plan_yes_cuts(catalog: Catalog, structures: dict[str, list[dict]], balance: dict[str, Balance],
                  per_region: int) -> dict[str, YesCut]:
    """Per source that cannot balance, which of its ``per_region`` localization "yes" per region it keeps
    (drafting.balance.cut_yes): a second pass over the images, holding one cut per source."""
    cuts = {}
    for source, images in _source_images(catalog, structures):
        if source in balance and (cut := cut_yes(images, balance[source], per_region)) is not None:
            cuts[source] = cut
    return cuts


@dataclass
class GenerateOptions:
    drafter: str = "templates"
    localization_per_region: int = 1
    absent_per_region: int = 1  # localization questions about an absent structure (answer "no")
    unbalanced: str = "drop-yes"  # a source with too few absent structures: "drop-yes" its surplus "yes", or "keep"
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
        short = any(b.short > 0 for b in self.balance.values())
        self.yes_cuts = (plan_yes_cuts(catalog, self.structures, self.balance, options.localization_per_region)
                         if short and options.unbalanced == "drop-yes" else {})
        self.surplus_stored = 0  # stored ok "yes" drafts of slots the cuts leave out (earlier runs')

    def work_for(self, region: dict) -> tuple[list[DraftSpec], int]:
        """The slots to draft now (with their rejection history) and how many are done already."""
        existing = load_existing(self.catalog, region["id"])
        yes = pick_slots(region["id"], len(self.prompts.for_region(region).localization),
                         self.opt.localization_per_region)
        candidates, image_regions = self._image_of(region)
        kept = self._yes_kept(region, candidates, image_regions)
        for s in yes[kept:]:  # left out to balance: what an earlier run stored of them stays, counted
            old = existing.get(draft_id(region["id"], "localization", s))
            self.surplus_stored += old is not None and old.status == "ok"
        specs = self._slots(region, yes[:kept], self._absent(region, candidates, image_regions))
        slots = [(s, existing.get(s.draft_id(region["id"]))) for s in specs]
        work = [self._with_history(old, s) for s, old in slots if self._needs_work(old, s)]
        return work, len(slots) - len(work)

    def ok_questions(self, region_id: str, redone: set[str]) -> list[str]:
        """The region's stored ok questions, except those of the drafts in ``redone`` (read again when its
        drafts are stored: a region's drafts of this run are not in the catalog before that)."""
        existing = load_existing(self.catalog, region_id)
        return [e.question for i, e in existing.items() if e.status == "ok" and i not in redone]

    def _slots(self, region: dict, yes: list[int], absent: list[str]) -> list[DraftSpec]:
        """The region's slots: its localization "yes" of template slots ``yes``, its "no" about the
        ``absent`` structures, then the rest."""
        p, o = self.prompts.for_region(region), self.opt
        loc_drafter = "llm" if o.paraphrase else "templates"
        specs = [DraftSpec("localization", s, loc_drafter) for s in yes]
        n_attr = (
            o.attributes_per_region
            if o.drafter == "llm"
            else min(o.attributes_per_region, len(attribute_choices(p, region)))
        )
        specs += [DraftSpec("localization", k, "templates", absent=label) for k, label in enumerate(absent)]
        specs += [DraftSpec("attribute", s, o.drafter) for s in range(n_attr)]
        lateral = region.get("side") in ("left", "right")
        if o.position_questions and lateral and p.position and not names_a_side(target_name(region)):
            specs.append(DraftSpec("position", 0, "templates"))
        return specs

    def _image_of(self, region: dict) -> tuple[list[str] | None, list[str]]:
        """The region's absent structures (:func:`absent_candidates`) and the labels of its image's
        regions, looked up once per region and only where its source's balance needs them."""
        source = region["source"]["name"]
        candidates = absent_candidates(region, self.structures.get(source, []))
        needed = candidates is not None and (source in self.yes_cuts or (candidates and source in self.balance))
        return candidates, self.catalog.image_region_labels(region["image_id"]) if needed else []

    def _absent(self, region: dict, candidates: list[str] | None, image_regions: list[str]) -> list[str]:
        """The absent structures the region asks "no" about, under its source's balance."""
        source = region["source"]["name"]
        if not candidates or source not in self.balance:
            return []
        n = self.opt.absent_per_region
        quota = ImageAbsence(region["image_id"], len(image_regions), len(candidates)).base(n)
        quota += self.balance[source].extra.get(region["image_id"], 0)
        return absent_targets(region, candidates, image_regions, quota, n)

    def _yes_kept(self, region: dict, candidates: list[str] | None, image_regions: list[str]) -> int:
        """How many of its localization "yes" the region keeps: all, unless its source cannot balance
        them and its surplus "yes" are left out (drafting.balance.YesCut)."""
        n, cut = self.opt.localization_per_region, self.yes_cuts.get(region["source"]["name"])
        if cut is None or candidates is None:
            return n
        img = ImageAbsence(region["image_id"], len(image_regions), len(candidates))
        return cut.kept(img, image_regions.index(region["label"]), n)

    def unbalanced(self) -> dict[str, tuple[int, int, int, int]]:
        """Per source whose images have too few absent structures for as many "no" as "yes": ("no"
        planned, "no" as many as its "yes" would be, "yes" left out to balance them, "yes" in all)."""
        n = self.opt.localization_per_region
        return {source: (b.planned, b.target, n * b.regions - b.yes_kept(n) if source in self.yes_cuts else 0,
                         n * b.regions)
                for source, b in self.balance.items() if b.short > 0}

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
