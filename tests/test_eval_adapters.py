"""Adapters load checkpoints from disk by ``config.model_type`` (as real ones would) and reject others."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlamaConfig, LlamaForCausalLM

from vgmed_eval.adapters import MODEL_ADAPTERS, load_adapter
from vgmed_eval.attention import capture


@pytest.mark.parametrize("family", MODEL_ADAPTERS.names())
def test_checkpoint_round_trip(family, tmp_path):
    """save_pretrained -> load_adapter(path): same adapter class, same tokens, same maps."""
    tiny = MODEL_ADAPTERS.get(family).tiny()
    tiny.model.save_pretrained(tmp_path)
    if tiny.processor is not None:
        tiny.processor.save_pretrained(tmp_path)
    else:  # Qwen: tokenizer + image processor + the processor's chat template file
        tiny.tokenizer.save_pretrained(tmp_path)
        tiny.image_processor.save_pretrained(tmp_path)
        (tmp_path / "chat_template.jinja").write_text(tiny.chat_template)
    loaded = load_adapter(str(tmp_path), dtype="float32")
    assert type(loaded) is type(tiny) and loaded.name == str(tmp_path)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 120, 3), dtype=np.uint8))
    a = tiny.build_inputs([image], ["Is there a liver in the image?"])
    b = loaded.build_inputs([image], ["Is there a liver in the image?"])
    assert torch.equal(a.inputs["input_ids"], b.inputs["input_ids"])
    assert a.geometries[0] == b.geometries[0]
    with torch.no_grad():
        with capture(tiny.model, [1], a.grid_positions) as ca:
            tiny.model(**a.inputs)
        with capture(loaded.model, [1], b.grid_positions) as cb:
            loaded.model(**b.inputs)
    torch.testing.assert_close(ca.maps[1], cb.maps[1])


def test_unsupported_models_are_named(tmp_path):
    LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, vocab_size=32)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type 'llama' has no adapter"):
        load_adapter(str(tmp_path))
    with pytest.raises(ValueError, match="unknown tiny family 'nope'"):
        load_adapter("builtin:tiny-nope")
    with pytest.raises(ValueError, match="unknown dtype"):
        load_adapter("builtin:tiny-llava", dtype="int8")


def test_dtype_and_grid_facts():
    adapter = load_adapter("builtin:tiny-gemma3", dtype="bfloat16")
    assert adapter.model.dtype == torch.bfloat16 and adapter.n_layers == 4 and adapter.n_heads == 4
    assert adapter.geometry(300, 100).shape == (8, 8)
    cells = adapter.box_to_cells((0, 0, 150, 50), 300, 100)  # the top-left quarter of a stretched image
    assert cells[:4, :4].all() and cells.sum() == 16
