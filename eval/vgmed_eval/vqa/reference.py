"""The published VGRefine recipe, re-created as an independent reference (slow on purpose).

Three full passes per question at batch 1, all with eager attention: the question pass and the
general-prompt pass return every layer's attention (``output_attentions=True``), and the answer is
generated with the knockout applied as an explicit additive ``-inf`` mask on the knockout layers.
It shares no code path with :mod:`vgmed_eval.vgrefine` except the pure triage functions, so tests use
it to check the fast path (prefix caches, SDPA, boolean blocks) and the benchmark uses it as the
published baseline.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import AttentionInterface, AttentionMaskInterface, GenerationConfig
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.masking_utils import eager_mask

from vgmed_eval.attention import blocked_tokens, install
from vgmed_eval.prompts import GENERAL_PROMPT
from vgmed_eval.vgrefine import VGRefineConfig, low_attention, triage_scores

REF_NAME = "vgmed_reference_eager"


@dataclass
class _Block:
    layers: frozenset[int]
    blocked: torch.Tensor  # (n_positions,) bool over absolute key positions
    start: int  # first query position that is blocked
    stop: int | None  # first query position no longer blocked (None: every later position)


_ACTIVE: list[_Block] = []


def _reference_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, softcap=None,
                         **kwargs):
    """Plain eager attention; adds -inf on (query >= start, blocked key) pairs of the blocked layers.

    Absolute positions are ``kv_len - q_len ..`` for queries and ``0 ..`` for keys: right for batch 1
    with a cache that holds every key (no sliding-window cropping) or without a cache.
    """
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    groups = query.shape[1] // key.shape[1]
    k, v = repeat_kv(key, groups), repeat_kv(value, groups)
    scores = torch.matmul(query, k.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask
    for block in _ACTIVE:
        if module.layer_idx in block.layers:
            q_len, kv_len = query.shape[2], k.shape[2]
            q_pos = torch.arange(kv_len - q_len, kv_len)
            rows = q_pos >= block.start
            if block.stop is not None:
                rows &= q_pos < block.stop
            cols = block.blocked[:kv_len]
            additive = torch.zeros(q_len, kv_len, dtype=scores.dtype)
            additive[rows[:, None] & cols[None, :]] = float("-inf")
            scores = scores + additive.to(scores.device)
    weights = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    return torch.matmul(weights, v).transpose(1, 2).contiguous(), weights


@contextlib.contextmanager
def reference_attention(model, vision: str = "sdpa") -> Iterator[None]:
    """Switch the LLM to the reference eager function (vision tower: ``vision``), then back."""
    AttentionInterface.register(REF_NAME, _reference_attention)
    AttentionMaskInterface.register(REF_NAME, eager_mask)
    model.set_attn_implementation({"text_config": REF_NAME, "vision_config": vision})
    try:
        yield
    finally:
        install(model)


@contextlib.contextmanager
def reference_block(layers, blocked: torch.Tensor, start: int, stop: int | None) -> Iterator[None]:
    block = _Block(frozenset(layers), blocked.cpu(), start, stop)
    _ACTIVE.append(block)
    try:
        yield
    finally:
        _ACTIVE.remove(block)


@dataclass
class ReferenceResult:
    tokens: list[int]
    low: torch.Tensor | None  # (N,) knocked-out cells (None for a plain answer)
    step_logits: list[torch.Tensor]  # logits that chose each generated token


def _extend(adapter, inputs: dict, token: int) -> dict:
    """The inputs of a full recomputation with one more (text) token appended."""
    out = dict(inputs)
    for key in adapter.sequence_keys:
        if key in out:
            value = 1 if key == "attention_mask" else token if key == "input_ids" else 0
            out[key] = torch.cat([out[key], out[key].new_full((1, 1), value)], dim=1)
    return out


@torch.no_grad()
def greedy(adapter, inputs: dict, max_new_tokens: int, eos: set[int], recompute: bool) -> ReferenceResult:
    """Plain greedy decoding at batch 1: a full recomputation per token, or ``model.generate`` with
    the model's own KV cache (what the public code runs)."""
    model = adapter.model
    if not recompute:
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=sorted(eos),
                                  pad_token_id=adapter.tokenizer.pad_token_id, output_logits=True,
                                  return_dict_in_generate=True)
        out = model.generate(**inputs, generation_config=config)
        new = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
        tokens = new[: next((i for i, t in enumerate(new) if t in eos), len(new))]
        return ReferenceResult(tokens, None, [step[0].float().cpu() for step in out.logits[: len(tokens) + 1]])
    tokens, logits_seen = [], []
    for _ in range(max_new_tokens):
        logits = model(**inputs, use_cache=False).logits[0, -1].float().cpu()
        logits_seen.append(logits)
        token = int(logits.argmax())
        if token in eos:
            break
        tokens.append(token)
        inputs = _extend(adapter, inputs, token)
    return ReferenceResult(tokens, None, logits_seen)


def _maps(attentions, grid: torch.Tensor, layers, rows: str, first_row: int) -> dict[int, torch.Tensor]:
    if rows == "last":
        return {layer: attentions[layer][:, :, -1, grid].float().cpu() for layer in layers}
    return {layer: attentions[layer][:, :, first_row:, grid].float().mean(dim=2).cpu() for layer in layers}


@torch.no_grad()
def published_vgrefine(adapter, image: Image.Image, text: str, config: VGRefineConfig, max_new_tokens: int,
                       eos: set[int], recompute: bool = True) -> ReferenceResult:
    """Question pass + general pass (all attentions), triage, then generation with the knockout."""
    model = adapter.model
    q = adapter.build_inputs([image], [text])
    g = adapter.build_inputs([image], [GENERAL_PROMPT])
    grid = q.grid_positions[0].cpu()
    first = int(adapter.image_token_spans(q.inputs["input_ids"])[0].max()) + 1
    first_g = int(adapter.image_token_spans(g.inputs["input_ids"])[0].max()) + 1
    layers = config.triage_layers
    qmaps = _maps(model(**q.inputs, output_attentions=True).attentions, grid, layers, config.rows, first)
    gmaps = _maps(model(**g.inputs, output_attentions=True).attentions, grid, layers, config.rows, first_g)
    low = low_attention(triage_scores(qmaps, gmaps, config.heads)[0], config)
    length = q.inputs["input_ids"].shape[1]
    blocked = blocked_tokens(q.covers, [low], length + max_new_tokens + 1)[0]
    stop = length if config.mode == "prefill" else None
    with reference_block(config.knockout_layers, blocked, first, stop):
        result = greedy(adapter, q.inputs, max_new_tokens, eos, recompute)
    result.low = low
    return result
