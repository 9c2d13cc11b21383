"""`--gt mask` / `--gt soft` cells and the chance levels (issue 25), against answers known by hand and
an independent implementation written here: it walks every cell back to its footprint in the original
image (the inverse of the preprocessing) and sums, pixel by pixel, the area each mask pixel shares with
it, where vgmed_eval.ground_truth maps pixels forwards onto the canvas one axis at a time."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vgmed_eval.geometry import NoCellError, clip_geometry, qwen_geometry, stretch_geometry
from vgmed_eval.ground_truth import (
    NoMaskError,
    Target,
    boxes_shape,
    coverage,
    ground_truth,
    mask_shape,
    question_truths,
    random_offsets,
)
from vgmed_eval.metrics import chance_scores, scores


def reference_coverage(geometry, mask: np.ndarray) -> np.ndarray:
    """Fraction of each cell's area covered by the mask, cell by cell and pixel by pixel."""
    out = np.zeros((geometry.rows, geometry.cols))
    pixels = np.argwhere(mask)
    for r in range(geometry.rows):
        for c in range(geometry.cols):
            fx0, fy0, fx1, fy1 = geometry.cell_to_image(r, c)  # the cell's footprint in image pixels
            area = 0.0
            for i, j in pixels:
                w = min(j + 1, fx1) - max(j, fx0)
                h = min(i + 1, fy1) - max(i, fy0)
                if w > 0 and h > 0:
                    area += w * h
            out[r, c] = area / ((fx1 - fx0) * (fy1 - fy0))
    return out


# Each family's grid as its processor builds it (configs of the released checkpoints).
FAMILIES = {
    "llava-1.5 (pad to square, 336, 24 x 24)": lambda w, h: clip_geometry(
        w, h, resize=336, crop=(336, 336), patch=14, pad_to_square=True),
    "clip crop (shortest edge 336, centre crop)": lambda w, h: clip_geometry(
        w, h, resize=336, crop=(336, 336), patch=14, pad_to_square=False),
    "llava-next base grid (stretch 336)": lambda w, h: stretch_geometry(w, h, 336, 336, 24, 24),
    "qwen2.5-vl (smart resize, 14 px patches merged 2 x 2)": lambda w, h: qwen_geometry(
        w, h, patch=14, merge=2, min_pixels=56 * 56, max_pixels=28 * 28 * 1280),
    "gemma 3 (stretch 896, 16 x 16 tokens)": lambda w, h: stretch_geometry(w, h, 896, 896, 16, 16),
}


def test_one_full_cell_half_a_cell_and_a_diagonal_line():
    geometry = stretch_geometry(48, 48, 336, 336, 24, 24)  # one cell = 2 x 2 image pixels
    full = np.zeros((48, 48), bool)
    full[4:6, 6:8] = True  # exactly cell (row 2, col 3)
    soft = ground_truth("soft", geometry, Target([(6, 4, 8, 6)], full))
    expected = np.zeros((24, 24))
    expected[2, 3] = 1.0
    assert np.allclose(soft, expected)
    assert np.array_equal(ground_truth("mask", geometry, Target([(6, 4, 8, 6)], full)), expected > 0)

    half = np.zeros((48, 48), bool)
    half[4:6, 6:7] = True  # the left half of that cell
    expected[2, 3] = 0.5
    assert np.allclose(ground_truth("soft", geometry, Target([(6, 4, 7, 6)], half)), expected)
    assert ground_truth("mask", geometry, Target([(6, 4, 7, 6)], half)).sum() == 1

    line = np.eye(48, dtype=bool)  # one pixel wide: half of every diagonal cell, nothing else
    target = Target([(0, 0, 48, 48)], line)
    assert np.allclose(ground_truth("soft", geometry, target), 0.5 * np.eye(24))
    assert np.array_equal(ground_truth("mask", geometry, target), np.eye(24, dtype=bool))
    assert ground_truth("box", geometry, target).sum() == 24 * 24  # the box rule: every cell


def test_padding_of_a_non_square_image_by_hand():
    """300 x 200 padded to 300 x 300 (50 px above and below), resized to 336: 56 canvas px = 4 cells of
    padding at the top, the image in rows 4..19, padding in rows 20..23."""
    geometry = FAMILIES["llava-1.5 (pad to square, 336, 24 x 24)"](300, 200)
    everything = np.ones((200, 300), bool)
    soft = ground_truth("soft", geometry, Target([(0, 0, 300, 200)], everything))
    expected = np.zeros((24, 24))
    expected[4:20] = 1.0
    assert np.allclose(soft, expected)
    # and a soft box equals the soft mask of the same rectangle
    assert np.allclose(ground_truth("soft", geometry, Target([(0, 0, 300, 200)])), expected)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("size", [(37, 23), (23, 41), (30, 30)])
def test_soft_and_mask_cells_on_each_family_grid(family, size):
    width, height = size
    geometry = FAMILIES[family](width, height)
    rng = np.random.default_rng(width * height)
    mask = np.zeros((height, width), bool)
    mask[3:height - 4, 5:width - 6] = rng.random((height - 7, width - 11)) < 0.3
    mask[height // 2, :] = True  # a line across the whole image
    target = Target([(0, 0, width, height)], mask)
    reference = reference_coverage(geometry, mask)
    assert np.allclose(ground_truth("soft", geometry, target), reference, atol=1e-9)
    assert np.array_equal(ground_truth("mask", geometry, target), reference > 1e-9)
    # a solid rectangle touches exactly the cells the published box rule gives its box
    box = (4, 2, width - 7, height - 5)
    solid = np.zeros((height, width), bool)
    solid[box[1]:box[3], box[0]:box[2]] = True
    assert np.array_equal(ground_truth("mask", geometry, Target([box], solid)), geometry.boxes_to_cells([box]))
    # soft weights add up to the target's area in cells where nothing is cropped
    if "crop" not in family:
        cell_px = geometry.cell_w * geometry.cell_h / (geometry.scale_x * geometry.scale_y)
        assert ground_truth("soft", geometry, Target([box], solid)).sum() == pytest.approx(solid.sum() / cell_px)


def test_overlapping_boxes_are_not_counted_twice():
    geometry = stretch_geometry(20, 20, 20, 20, 4, 4)  # one cell = 5 x 5 pixels
    shape = boxes_shape([(0, 0, 5, 5), (0, 0, 5, 5), (2, 0, 7, 5)], 20, 20)
    cover = coverage(geometry, shape)
    assert cover[0, 0] == pytest.approx(1.0) and cover[0, 1] == pytest.approx(2 / 5)
    assert cover.sum() == pytest.approx(1.4)


def test_mask_ground_truth_needs_a_mask_and_a_cell():
    geometry = stretch_geometry(20, 20, 20, 20, 4, 4)
    with pytest.raises(NoMaskError, match="no mask"):
        ground_truth("mask", geometry, Target([(0, 0, 5, 5)]))
    crop = clip_geometry(40, 20, resize=20, crop=(20, 20), patch=5, pad_to_square=False)  # the sides are cut
    edge = np.zeros((20, 40), bool)
    edge[5:10, 0:3] = True
    with pytest.raises(NoCellError):
        ground_truth("soft", crop, Target([(0, 5, 3, 10)], edge))


def js_by_hand(k: int, n: int) -> float:
    """JS between GT uniform on k of n cells and the uniform map: on the GT cells p = 1/k, q = 1/n,
    m = (1/k + 1/n)/2; elsewhere p = 0, q = 1/n, m = 1/(2n)."""
    kl_pm = math.log((1 / k) / ((1 / k + 1 / n) / 2))
    kl_qm = k / n * math.log((1 / n) / ((1 / k + 1 / n) / 2)) + (n - k) / n * math.log(2)
    return 0.5 * kl_pm + 0.5 * kl_qm


@pytest.mark.parametrize("k", [1, 7, 50])
def test_uniform_map_scores_by_hand(k):
    n_cells = 64
    gt = np.zeros(n_cells, bool)
    gt[:k] = True
    n = np.random.default_rng(k).random((3, n_cells))
    chance = chance_scores(n, gt, [])
    assert np.allclose(chance["attention_ratio_uniform"], 1.0)  # mean over GT / mean over all of a constant
    assert np.allclose(chance["kl_uniform"], math.log(n_cells / k))
    assert np.allclose(chance["js_uniform"], js_by_hand(k, n_cells))
    assert np.isnan(chance["attention_ratio_random"]).all()  # no draws, no random chance level
    weights = np.random.default_rng(1).random(n_cells) * gt  # soft weights: a uniform map still scores 1
    assert np.allclose(chance_scores(n, weights, [])["attention_ratio_uniform"], 1.0)


def test_weighted_metrics_reduce_to_the_published_ones():
    rng = np.random.default_rng(0)
    n = rng.random((2, 5, 36))
    gt = rng.random(36) < 0.2
    boolean, weighted = scores(n, gt), scores(n, gt.astype(float))
    for metric in boolean:
        assert np.allclose(boolean[metric], weighted[metric])
    w = rng.random(36) * gt
    assert np.allclose(scores(n, w)["attention_ratio"], (n @ w / w.sum()) / n.mean(-1))


def test_random_regions_lie_inside_the_image_and_keep_their_size():
    geometry = FAMILIES["llava-1.5 (pad to square, 336, 24 x 24)"](300, 200)
    mask = np.zeros((200, 300), bool)
    mask[150:190, 10:60] = True
    target = Target([(10, 150, 60, 190)], mask)
    a = question_truths("soft", geometry, target, np.random.default_rng([0, 1]), draws=20)
    b = question_truths("soft", geometry, target, np.random.default_rng([0, 1]), draws=20)
    assert len(a.chance) == 20 and all(np.array_equal(x, y) for x, y in zip(a.chance, b.chance, strict=True))
    cell_px = geometry.cell_w * geometry.cell_h / (geometry.scale_x * geometry.scale_y)
    for draw in a.chance:  # same area, never in the padding rows
        assert draw.sum() == pytest.approx(mask.sum() / cell_px)
        assert not draw[:4].any() and not draw[20:].any()
    assert set(a.by_kind) == {"box", "mask", "soft"}
    moves = random_offsets(np.random.default_rng(3), mask_shape(mask).extent, 300, 200, 500)
    assert min(dx for dx, _ in moves) >= -10 and max(dx for dx, _ in moves) <= 240
    assert min(dy for _, dy in moves) >= -150 and max(dy for _, dy in moves) <= 10
    assert len(set(moves)) > 100  # spread over the places, not one


@pytest.mark.parametrize("kind", ["box", "mask", "soft"])
def test_a_uniform_attention_map_is_exactly_at_chance(kind):
    """With the model looking everywhere alike, every random region has attention ratio 1, as the target
    has; KL of a draw is ln(N / k) for the k cells it touches (box, mask), which moving changes by alignment."""
    geometry = stretch_geometry(48, 48, 336, 336, 24, 24)
    mask = np.zeros((48, 48), bool)
    mask[10:20, 30:41] = True
    truths = question_truths(kind, geometry, Target([(30, 10, 41, 20)], mask), np.random.default_rng(0), 8)
    flat = np.ones((2, 576))
    draws = [d.reshape(-1) for d in truths.chance]
    chance = chance_scores(flat, truths.primary.reshape(-1), draws)
    assert np.allclose(chance["attention_ratio_random"], 1.0)
    assert np.allclose(chance["attention_ratio_uniform"], 1.0)
    if kind != "soft":
        by_hand = np.mean([math.log(576 / d.sum()) for d in draws])
        assert np.allclose(chance["kl_random"], by_hand)
        assert {int(d.sum()) for d in draws} <= {5 * 6, 5 * 7, 6 * 6, 6 * 7}  # 10 x 11 px on 2 x 2 px cells
