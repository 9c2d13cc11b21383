"""``--device-map``: a tiny model spread by accelerate over CPU and disk offload (as far as a machine
without GPUs allows) gives the same grounding maps and the same VGRefine answers (capture, knockout,
KV cache) as the model on one device."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from accelerate.utils import compute_module_sizes
from eval_fixtures import make_release
from test_eval_distributed import _vqa_data

from vgmed_eval.adapters import load_adapter
from vgmed_eval.cli import main
from vgmed_eval.placement import Placement, input_device, parse_max_memory, rank_gpus, requested


def test_options():
    assert parse_max_memory("0=70GiB, 1=70GiB,cpu=1000") == {0: "70GiB", 1: "70GiB", "cpu": 1000}
    with pytest.raises(ValueError, match="'cpu' is not DEVICE=SIZE"):
        parse_max_memory("cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        parse_max_memory("gpu0=1GiB")
    assert [rank_gpus(r, 4, 8) for r in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    with pytest.raises(ValueError, match="8 processes per node but 4 GPUs"):
        rank_gpus(0, 8, 4)
    with pytest.raises(ValueError, match="need --device-map"):
        requested(None, max_memory="cpu=1GiB")


def _budget(family: str) -> int:
    """A CPU budget of 90% of the tiny model: LLM layers 0-1 stay on the CPU, layers 2-3 go to disk."""
    return compute_module_sizes(load_adapter(f"builtin:tiny-{family}").model)[""] * 9 // 10


@pytest.mark.parametrize("strategy", ["auto", "balanced"])
def test_split_model_is_really_split(strategy, tmp_path):
    adapter = load_adapter("builtin:tiny-llava", placement=Placement(strategy, {"cpu": _budget("llava")},
                                                                    str(tmp_path / "offload")))
    layers = {k.rsplit(".", 1)[1]: v for k, v in adapter.model.hf_device_map.items() if "language_model.layers." in k}
    assert layers == {"0": "cpu", "1": "cpu", "2": "disk", "3": "disk"}, adapter.model.hf_device_map
    assert str(input_device(adapter.model)) == "cpu" and any((tmp_path / "offload").iterdir())


def test_grounding_maps_equal_single_device(tmp_path):
    release = make_release(tmp_path / "release")
    common = ["grounding", "--release", str(release), "--model", "builtin:tiny-llava", "--batch-size", "3",
              "--bootstrap", "20", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    assert main([*common, "--out", str(tmp_path / "split"), "--device-map", "auto",
                 "--max-memory", f"cpu={_budget('llava')}", "--offload-folder", str(tmp_path / "off")]) == 0
    for name in ("per_layer.parquet", "per_head.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "one" / name),
                                      pd.read_parquet(tmp_path / "split" / name), check_exact=False, rtol=1e-5)


def test_vgrefine_answers_equal_single_device(tmp_path):
    data = _vqa_data(tmp_path / "data")
    heads = tmp_path / "heads.json"
    heads.write_text(json.dumps({"knockout_layer": 2, "heads": [[1, 0], [2, 1], [3, 2]]}))
    common = ["vqa", "--benchmark", "vgmed-attribute", "--data", str(data), "--model", "builtin:tiny-qwen2_vl",
              "--vgrefine", str(heads), "--compare", "--max-new-tokens", "3", "--batch-size", "2",
              "--bootstrap", "20", "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    assert main([*common, "--out", str(tmp_path / "split"), "--device-map", "balanced",
                 "--max-memory", f"cpu={_budget('qwen2_vl')}", "--offload-folder", str(tmp_path / "off")]) == 0
    for system in ("baseline", "vgrefine"):
        one = [json.loads(x) for x in (tmp_path / "one" / f"predictions_{system}.jsonl").read_text().splitlines()]
        split = [json.loads(x) for x in (tmp_path / "split" / f"predictions_{system}.jsonl").read_text().splitlines()]
        assert [(r["id"], r["response"], r["knocked_out"]) for r in one] == \
            [(r["id"], r["response"], r["knocked_out"]) for r in split] and one
