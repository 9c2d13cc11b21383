"""Fill one draft slot: a question (and answer) from the templates, or from the LLM.

A proposal carries its provenance (template, parameters, model, tokens, cost) and, when the LLM
failed for this slot, the error that the stored draft will show; lint comes after (drafting.records).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from vgmed_build.drafting.llm import LlmClient, LlmError, Usage
from vgmed_build.drafting.messages import attribute_messages, boxed_image_data_url, paraphrase_messages, previous_note
from vgmed_build.drafting.plan import DraftSpec, GenerateOptions
from vgmed_build.drafting.templates import (
    Prompts,
    Template,
    attribute_from_template,
    pick_slots,
    region_offset,
    target_name,
)


@dataclass
class Proposal:
    """A drafted question before lint, with its provenance."""

    question: str
    answer: str
    template: Template
    params: dict
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cache_hit: bool | None = None
    error: str | None = None
    absent: dict | None = None  # the absent structure asked about (label, display_name, synonyms, category)


class Proposer:
    """Drafts slots for ``generate``: templates offline, the LLM through ``client`` when one is set."""

    def __init__(self, build_dir: Path, options: GenerateOptions, prompts: Prompts, client: LlmClient | None,
                 structures: dict[str, list[dict]] | None = None):
        self.build_dir, self.opt, self.prompts, self.client = build_dir, options, prompts, client
        self.structures = structures or {}  # per source: the structures absent questions may name

    async def propose(self, region: dict, spec: DraftSpec) -> Proposal:
        name = target_name(region)
        base = {"slot": spec.slot}
        prompts = self.prompts.for_region(region)
        if spec.q_type == "position":
            tpl = prompts.position[pick_slots(region["id"], len(prompts.position), 1)[0]]
            return Proposal(tpl.ask_about(name), region["side"], tpl, base)
        if spec.absent is not None:
            return self._absent(region, spec, prompts)
        if spec.q_type == "localization":
            tpl = prompts.localization[spec.slot]
            question = tpl.ask_about(name)
            if spec.drafter == "templates":
                return Proposal(question, "yes", tpl, base)
            return await self._llm_paraphrase(region, spec, tpl, question)
        if spec.drafter == "templates":
            found = attribute_from_template(prompts, region, spec.slot)
            if found is None:  # planning only asks for slots a profile covers
                raise RuntimeError(f"region {region['id']}: no attribute profile")
            tpl, question, answer = found
            return Proposal(question, answer, tpl, {**base, "attribute": tpl.name.split(":", 1)[1]})
        return await self._llm_attribute(region, spec)

    def _absent(self, region: dict, spec: DraftSpec, prompts: Prompts) -> Proposal:
        """A localization question about a structure of the source that the image does not hold: answer
        "no", in a phrasing other than the region's own "yes" question."""
        target = next(s for s in self.structures[region["source"]["name"]] if s["label"] == spec.absent)
        n = len(prompts.localization)
        tpl = prompts.localization[(region_offset(region["id"], n) + spec.slot + 1) % n]
        params = {"slot": spec.slot, "absent": spec.absent}
        return Proposal(tpl.ask_about(target["display_name"]), "no", tpl, params, absent=target)

    def _llm_params(self, spec: DraftSpec) -> dict:
        return {"seed": self.opt.seed + spec.slot + 1000 * spec.attempt}

    async def _llm_attribute(self, region: dict, spec: DraftSpec) -> Proposal:
        url = None
        if self.opt.with_image:
            url = await asyncio.to_thread(boxed_image_data_url, self.build_dir, region)
        prompts = self.prompts.for_region(region)
        messages = attribute_messages(prompts, region, url, previous_note(spec))
        system, user = prompts.llm_attribute
        tpl = Template("llm_attribute", system.text + "\n" + user.text)
        params = {
            "slot": spec.slot,
            "attempt": spec.attempt,
            "with_image": self.opt.with_image,
            **self._llm_params(spec),
        }
        return await self._ask(messages, "llm_attribute", tpl, params, answer=None)

    async def _llm_paraphrase(self, region: dict, spec: DraftSpec, loc: Template, question: str) -> Proposal:
        prompts = self.prompts.for_region(region)
        messages = paraphrase_messages(prompts, region, question, previous_note(spec))
        system, user = prompts.llm_paraphrase
        tpl = Template(f"llm_paraphrase+{loc.name}", system.text + "\n" + user.text + "\n" + loc.text)
        params = {"slot": spec.slot, "attempt": spec.attempt, "original": question, **self._llm_params(spec)}
        return await self._ask(messages, "llm_paraphrase", tpl, params, answer="yes")

    async def _ask(self, messages: list, schema: str, tpl: Template, params: dict, answer: str | None) -> Proposal:
        assert self.client is not None
        call_params = {"seed": params["seed"]}
        params = {
            **params,
            "temperature": self.client.config.temperature,
            "max_tokens": self.client.config.max_tokens,
        }
        model = self.opt.model
        try:
            reply = await self.client.complete(messages, schema, call_params)
        except LlmError as exc:
            return _llm_proposal("", "", tpl, params, model, exc.usage, exc.cost_usd, False, f"llm: {exc}")
        data = reply.data
        if "attribute" in data:
            params["attribute"] = data["attribute"]
        question, answer = data["question"].strip(), answer or data["answer"].strip()
        return _llm_proposal(question, answer, tpl, params, model, reply.usage, reply.cost_usd, reply.cache_hit)


def _llm_proposal(
    question: str,
    answer: str,
    tpl: Template,
    params: dict,
    model: str | None,
    usage: Usage,
    cost_usd: float,
    cache_hit: bool,
    error: str | None = None,
) -> Proposal:
    """An LLM proposal with its tokens and cost; an estimate (the server's usage was unusable) says so."""
    if usage.estimated:
        params = {**params, "usage_estimated": True}
    return Proposal(
        question, answer, tpl, params, model, usage.prompt_tokens, usage.completion_tokens, cost_usd, cache_hit, error
    )
