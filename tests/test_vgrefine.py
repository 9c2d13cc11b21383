"""VGRefine on tiny random models of every family against the eager re-creation of the published recipe.

The reference (vgmed_eval.vqa.reference) runs three full passes at batch 1 with eager attention,
returns every attention map, applies the knockout as an explicit additive -inf mask and recomputes
the whole sequence for every generated token (no KV cache at all).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vgmed_eval.adapters import MODEL_ADAPTERS, load_adapter
from vgmed_eval.vgrefine import (
    HeadsFileError,
    VGRefineConfig,
    VGRefiner,
    load_heads,
    low_attention,
    triage_scores,
)
from vgmed_eval.vqa.reference import greedy, published_vgrefine, reference_attention

FAMILIES = MODEL_ADAPTERS.names()
QUESTIONS = ["is there a mass in the liver ?", "what organ is shown ?", "is the lung normal ? answer yes or no ."]
MAX_NEW = 3


@pytest.fixture(scope="module", params=FAMILIES)
def adapter(request):
    return load_adapter(f"builtin:tiny-{request.param}")


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))]  # same size as the first


def _config(adapter, mode: str, **kw) -> VGRefineConfig:
    n = adapter.n_layers
    return VGRefineConfig(heads=((1, 0), (n - 1, 1), (n - 1, 2)), knockout_layers=(1, n - 1), mode=mode, **kw)


def _queries(refiner, pairs):
    """Queries with every image's prefix computed in one batched call."""
    images = list({id(image): image for image, _ in pairs}.values())
    prefixes = dict(zip([id(im) for im in images], refiner.prefixes(images), strict=True))
    return [refiner.query(prefixes[id(image)], image, text) for image, text in pairs]


# ---------------------------------------------------------------------------------- triage (pure)
def test_triage_scores_match_loop():
    rng = np.random.default_rng(2)
    q = {layer: torch.tensor(rng.random((3, 4, 10)), dtype=torch.float32) for layer in (1, 2)}
    g = {layer: torch.tensor(rng.random((4, 10)) + 0.1, dtype=torch.float32) for layer in (1, 2)}
    heads = [(1, 0), (2, 3), (2, 1)]
    got = triage_scores(q, g, heads)
    for b in range(3):
        for n in range(10):
            ratios = [q[lay][b, h, n].item() / np.mean([g[lay][k, n].item() for k in range(4)]) for lay, h in heads]
            ref = np.mean(ratios)
            assert got[b, n].item() == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("p", [50.0, 80.0, 95.0])
def test_percentile_threshold_matches_numpy(p):
    scores = torch.tensor(np.random.default_rng(3).random(576))
    low = low_attention(scores, VGRefineConfig(heads=((0, 0),), knockout_layers=(0,), percentile=p))
    assert np.array_equal(low.numpy(), scores.numpy() < np.percentile(scores.numpy(), p))
    assert abs(int((~low).sum()) - round(576 * (1 - p / 100))) <= 1  # the top (100-p)% survive


def test_minmax_threshold():
    scores = torch.tensor([2.0, 4.0, 6.0, 10.0])
    cfg = VGRefineConfig(heads=((0, 0),), knockout_layers=(0,), threshold="minmax", minmax_cutoff=0.4)
    assert low_attention(scores, cfg).tolist() == [True, True, False, False]  # normalised 0, .25, .5, 1


def test_config_and_heads_file_errors(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        VGRefineConfig(heads=((0, 0),), knockout_layers=(0,), mode="decode")
    with pytest.raises(ValueError, match="percentile"):
        VGRefineConfig(heads=((0, 0),), knockout_layers=(0,), percentile=120)
    path = tmp_path / "heads.json"
    path.write_text(json.dumps({"model": "m", "knockout_layer": 2, "heads": [[1, 0], [2, 3]], "k": 2}))
    assert load_heads(path) == (((1, 0), (2, 3)), 2, "m")
    path.write_text('{"knockout_layer": 2,\n "heads": [1, 2]}')
    with pytest.raises(HeadsFileError, match="heads.json: expected"):
        load_heads(path)
    path.write_text('{"knockout_layer": 2,\n "heads": [[1, 2]],}')
    with pytest.raises(HeadsFileError, match=r"heads.json:2: invalid JSON"):
        load_heads(path)
    with pytest.raises(HeadsFileError, match="not found"):
        load_heads(tmp_path / "missing.json")


# --------------------------------------------------------------------------- every model family
def _close(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


def test_shared_prefix_equals_full_recompute(adapter):
    """Baseline answers from prefix caches (images of equal size share one prefix pass; rows of three images
    and three prompt lengths in one batch) == full recomputation per question."""
    img_a, img_b, img_c = _images()
    pairs = [(img_a, QUESTIONS[0]), (img_a, QUESTIONS[1]), (img_b, QUESTIONS[2]), (img_c, QUESTIONS[1])]
    refiner = VGRefiner(adapter, None, max_new_tokens=MAX_NEW, keep_logits=True)
    base, refined = refiner.answer(_queries(refiner, pairs), baseline=True, refined=False)
    assert refined is None
    for (image, text), got in zip(pairs, base, strict=True):
        ref = greedy(adapter, adapter.build_inputs([image], [text]).inputs, MAX_NEW, refiner.eos, recompute=True)
        _close(got.step_logits, ref.step_logits)
        assert got.tokens == ref.tokens


@pytest.mark.parametrize("mode,rows", [("consistent", "last"), ("prefill", "last"), ("consistent", "question")])
def test_knockout_equals_eager_additive_mask(adapter, mode, rows):
    img_a, img_b, _ = _images()
    pairs = [(img_a, QUESTIONS[0]), (img_b, QUESTIONS[2])]  # two images, two prompt lengths, one batch
    cfg = _config(adapter, mode, percentile=50.0, rows=rows)
    refiner = VGRefiner(adapter, cfg, max_new_tokens=MAX_NEW, keep_logits=True)
    base, answers = refiner.answer(_queries(refiner, pairs))  # baseline and VGRefine rows decode together
    with reference_attention(adapter.model):
        refs = [published_vgrefine(adapter, image, text, cfg, MAX_NEW, refiner.eos) for image, text in pairs]
    for got, ref in zip(answers, refs, strict=True):
        assert got.knocked_out == int(ref.low.sum()) > 0
        _close(got.step_logits, ref.step_logits)
        assert got.tokens == ref.tokens
    for got, (image, text) in zip(base, pairs, strict=True):
        ref = greedy(adapter, adapter.build_inputs([image], [text]).inputs, MAX_NEW, refiner.eos, recompute=True)
        _close(got.step_logits, ref.step_logits)


def test_prefill_and_consistent_agree_on_first_token_then_differ(adapter):
    img_a = _images()[0]
    got = {}
    for mode in ("prefill", "consistent"):
        refiner = VGRefiner(adapter, _config(adapter, mode), max_new_tokens=MAX_NEW, keep_logits=True)
        got[mode] = refiner.answer(_queries(refiner, [(img_a, QUESTIONS[0])]), baseline=False)[1][0]
    prefill, consistent = got["prefill"], got["consistent"]
    torch.testing.assert_close(prefill.step_logits[0], consistent.step_logits[0], atol=0, rtol=0)
    assert prefill.tokens[:1] == consistent.tokens[:1]
    # From the second token on, the decoding query sees the blocked image tokens only in prefill mode.
    assert (prefill.step_logits[1] - consistent.step_logits[1]).abs().max() > 1e-4


def test_general_map_cached_per_image(adapter):
    img_a = _images()[0]
    refiner = VGRefiner(adapter, _config(adapter, "consistent"), max_new_tokens=2)
    queries = _queries(refiner, [(img_a, QUESTIONS[0])])
    refiner.answer(queries)
    general = {layer: m.clone() for layer, m in queries[0].prefix.general.items()}
    assert set(general) == set(refiner.config.triage_layers)
    more = [refiner.query(queries[0].prefix, img_a, q) for q in QUESTIONS[1:]]
    refiner.answer(more)
    for layer, m in general.items():  # reused, not recomputed
        assert queries[0].prefix.general[layer] is not None and torch.equal(queries[0].prefix.general[layer], m)
