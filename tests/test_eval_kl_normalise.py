"""``--kl-normalise all-layers`` (the authors' submission notebook): the model distribution of KL is each
layer's normalised map over its sum across *every* layer, not its own layer's; each layer's KL then
grows by ln(total / that layer's sum), ln L exactly when the L layers' sums are equal. Checked against a
plain-loop KL here, and end to end on a grounding run's saved maps."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from eval_fixtures import make_release

from vgmed_eval.cli import main as eval_main
from vgmed_eval.metrics import chance_scores, kl_divergence
from vgmed_eval.numerics import ATTENTION_FLOOR as EPS
from vgmed_eval.protocol import PUBLISHED, VGMED


def loop_kl(maps: list[list[float]], gt: list[bool], over_layers: bool) -> list[float]:
    """KL(GT || q) per layer, q = the layer's map over its own sum or over the sum of all layers."""
    k = sum(gt)
    grand = sum(sum(row) for row in maps)
    out = []
    for row in maps:
        total = grand if over_layers else sum(row)
        out.append(sum((1 / k) * math.log((1 / k) / max(v / total, EPS))
                       for v, inside in zip(row, gt, strict=True) if inside))
    return out


@pytest.mark.parametrize("layers", [2, 6, 28])
def test_offset_is_ln_layers_for_equal_sums(layers):
    rng = np.random.default_rng(layers)
    n = rng.random((layers, 30)) + 0.01
    n /= n.sum(-1, keepdims=True)  # every layer sums to 1
    gt = rng.random(30) < 0.3
    gt[0] = True
    per_layer, all_layers = kl_divergence(n, gt), kl_divergence(n, gt, "all-layers")
    assert np.allclose(per_layer, loop_kl(n.tolist(), gt.tolist(), False), rtol=1e-12)
    assert np.allclose(all_layers, loop_kl(n.tolist(), gt.tolist(), True), rtol=1e-12)
    assert np.allclose(all_layers - per_layer, math.log(layers), rtol=1e-12)


def test_offset_is_the_layer_share_in_general_and_per_head():
    rng = np.random.default_rng(7)
    n = rng.random((5, 3, 20)) * rng.random((5, 3, 1)) * 10  # (layers, heads, cells), uneven sums
    gt = np.zeros(20, bool)
    gt[[2, 3, 9]] = True
    got = kl_divergence(n, gt, "all-layers") - kl_divergence(n, gt)
    for head in range(3):  # each head over its own layers
        sums = n[:, head].sum(-1)
        assert np.allclose(got[:, head], np.log(sums.sum() / sums), rtol=1e-10)
        assert np.allclose(kl_divergence(n, gt, "all-layers")[:, head],
                           loop_kl(n[:, head].tolist(), gt.tolist(), True), rtol=1e-12)
    assert abs(got.mean() - math.log(5)) < 1.0 and not np.allclose(got, math.log(5))  # ~ ln L, not exactly
    with pytest.raises(ValueError, match="layer or all-layers"):
        kl_divergence(n, gt, "heads")


def test_uniform_chance_follows():
    gt = np.zeros(16, bool)
    gt[:4] = True
    n = np.random.default_rng(0).random((4, 16))
    assert np.allclose(chance_scores(n, gt, [])["kl_uniform"], math.log(16 / 4))
    assert np.allclose(chance_scores(n, gt, [], "all-layers")["kl_uniform"], math.log(16 / 4) + math.log(4))


def test_grounding_flag_end_to_end(tmp_path):
    assert VGMED.kl_normalise == PUBLISHED.kl_normalise == "layer"  # the published figures: per layer
    root = make_release(tmp_path / "release", errors=False)
    out = tmp_path / "out"
    assert eval_main(["grounding", "--release", str(root), "--model", "builtin:tiny-llava", "--out", str(out),
                      "--save-maps", "--bootstrap", "10", "--chance-draws", "0", "--no-progress", "--limit", "3",
                      "--kl-normalise", "all-layers"]) == 0
    assert json.loads((out / "summary.json").read_text())["protocol"]["kl_normalise"] == "all-layers"
    table = pd.read_parquet(out / "per_layer.parquet")
    for qid, rows in table.groupby("id"):
        saved = np.load(out / "maps" / f"{qid}.npz")
        n_layers = len(saved["layers"])
        n = (saved["attn"].astype(np.float64) / np.maximum(saved["general"].astype(np.float64), EPS))
        gt = saved["gt"].reshape(-1).tolist()
        want = loop_kl(n.reshape(n_layers, -1).tolist(), gt, True)
        rows = rows.sort_values("layer")
        assert np.allclose(rows["kl"].to_numpy(), want, rtol=1e-9)
        assert np.allclose(rows["kl"] - rows["kl_box"], 0.0)  # the --gt box column beside it: same normalisation
        cells, k = len(gt), sum(gt)
        assert np.allclose(rows["kl_uniform"], math.log(cells / k) + math.log(n_layers))
