"""Attention capture and knockout against eager ``output_attentions=True`` on tiny models of every family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vgmed_eval.adapters import MODEL_ADAPTERS, load_adapter
from vgmed_eval.attention import ATTN_NAME, blocked_positions, capture, install, knockout

FAMILIES = MODEL_ADAPTERS.names()


@pytest.fixture(scope="module", params=FAMILIES)
def adapter(request):
    return load_adapter(f"builtin:tiny-{request.param}")


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (70, 110, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 255, (120, 64, 3), dtype=np.uint8))]


QUESTIONS = ["Is there a liver in the image?", "Where is the lesion? Answer with a single word."]


def _eager_attentions(adapter, inputs):
    adapter.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = adapter.model(**inputs, output_attentions=True)
    finally:
        install(adapter.model)
    return out.attentions


def test_capture_equals_eager_last_row_batched(adapter):
    batch = adapter.build_inputs(_images(), QUESTIONS)
    assert adapter.model.config.get_text_config()._attn_implementation == ATTN_NAME
    assert (batch.inputs["attention_mask"] == 0).any(), "prompts of different length must be left-padded"
    layers = list(range(adapter.n_layers))
    with torch.no_grad(), capture(adapter.model, layers, batch.grid_positions) as cap:
        adapter.model(**batch.inputs)
    eager = _eager_attentions(adapter, batch.inputs)
    for layer in layers:
        for b, pos in enumerate(batch.grid_positions):
            ref = eager[layer][b, :, -1, pos].float()
            got = cap.maps[layer][b, :, : len(pos)]
            torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-4)
            assert not torch.isnan(got).any()


def test_capture_question_rows_equals_eager_mean(adapter):
    batch = adapter.build_inputs(_images(), QUESTIONS)
    with torch.no_grad(), capture(adapter.model, [1], batch.grid_positions, rows="question",
                                       question_from=batch.question_start) as cap:
        adapter.model(**batch.inputs)
    eager = _eager_attentions(adapter, batch.inputs)
    spans = adapter.image_token_spans(batch.inputs["input_ids"])
    for b, pos in enumerate(batch.grid_positions):
        start = int(spans[b].max()) + 1
        assert start == int(batch.question_start[b])
        ref = eager[1][b, :, start:, :][:, :, pos].float().mean(1)
        torch.testing.assert_close(cap.maps[1][b, :, : len(pos)], ref, atol=1e-6, rtol=1e-4)


def test_batched_capture_equals_single_rows(adapter):
    """Left padding must not change a row's map."""
    images = _images()
    batch = adapter.build_inputs(images, QUESTIONS)
    with torch.no_grad(), capture(adapter.model, [2], batch.grid_positions) as cap:
        adapter.model(**batch.inputs)
    for b in range(2):
        single = adapter.build_inputs([images[b]], [QUESTIONS[b]])
        with torch.no_grad(), capture(adapter.model, [2], single.grid_positions) as one:
            adapter.model(**single.inputs)
        n = len(single.grid_positions[0])
        torch.testing.assert_close(cap.maps[2][b, :, :n], one.maps[2][0], atol=1e-5, rtol=1e-4)


def test_capture_rejects_bad_layers(adapter):
    with pytest.raises(ValueError, match="out of range"):
        with capture(adapter.model, [adapter.n_layers + 3], [torch.tensor([0])]):
            pass


def test_knockout_blocks_and_leaves_earlier_positions(adapter):
    """Blocked image tokens get zero weight from rows after the image; earlier rows are untouched.
    Batched with left padding, a different block per row."""
    batch = adapter.build_inputs(_images(), QUESTIONS)
    n_pos = batch.inputs["input_ids"].shape[1]
    picks = [torch.arange(0, len(batch.grid_positions[0]), 2), torch.arange(1, len(batch.grid_positions[1]), 3)]
    block = blocked_positions(batch.grid_positions, picks, n_pos)
    layer = adapter.n_layers - 1  # a full-attention layer in every tiny family (Gemma 3 slides elsewhere)
    with torch.no_grad():
        base = adapter.model(**batch.inputs, output_hidden_states=True)
        with knockout(adapter.model, [layer], block, from_position=batch.question_start), \
                capture(adapter.model, [layer], batch.grid_positions) as cap:
            ko = adapter.model(**batch.inputs, output_hidden_states=True)
    for b, pick in enumerate(picks):
        n = len(batch.grid_positions[b])
        weights = cap.maps[layer][b, :, :n]
        kept = torch.ones(n, dtype=torch.bool)
        kept[pick] = False
        assert torch.all(weights[:, pick] == 0) and torch.all(weights[:, kept] > 0)
        start = int(batch.question_start[b])
        assert torch.allclose(ko.hidden_states[-1][b, :start], base.hidden_states[-1][b, :start], atol=1e-6)
        assert not torch.allclose(ko.logits[b, -1], base.logits[b, -1], atol=1e-6)


def test_knockout_decode_with_cache_equals_recomputation(adapter):
    """Greedy decode with the block applied to cached steps equals a full forward with the block."""
    batch = adapter.build_inputs(_images()[:1], QUESTIONS[:1])
    n_pos = batch.inputs["input_ids"].shape[1] + 4
    start = int(batch.question_start[0])
    block = blocked_positions(batch.grid_positions, [torch.arange(0, len(batch.grid_positions[0]), 3)], n_pos)
    layers = list(range(adapter.n_layers))
    with torch.no_grad():
        with knockout(adapter.model, layers, block, from_position=start, decode=True):
            gen = adapter.model.generate(**batch.inputs, max_new_tokens=4, do_sample=False,
                                         output_logits=True, return_dict_in_generate=True)
        full_inputs = dict(batch.inputs)
        full_inputs["input_ids"] = gen.sequences[:, :-1]
        extra = gen.sequences.shape[1] - 1 - batch.inputs["input_ids"].shape[1]
        pad = torch.nn.functional.pad
        full_inputs["attention_mask"] = pad(batch.inputs["attention_mask"], (0, extra), value=1)
        for key in ("mm_token_type_ids", "token_type_ids"):
            if key in full_inputs:
                full_inputs[key] = pad(full_inputs[key], (0, extra), value=0)
        with knockout(adapter.model, layers, block, from_position=start):
            full = adapter.model(**full_inputs, use_cache=False)
    steps = torch.stack(gen.logits, 1)[0]  # (new, vocab)
    ref = full.logits[0, -steps.shape[0]:]
    torch.testing.assert_close(steps, ref, atol=1e-4, rtol=1e-4)
