"""Gemma 3 / MedGemma adapter.

The image is resized straight to the SigLIP input (896 x 896, aspect not kept; pan & scan is
forced off), cut into 14 px patches (64 x 64) and average-pooled to ``mm_tokens_per_image`` tokens
(16 x 16 = 256), which sit between begin- and end-of-image tokens and attend to each other
bidirectionally during prefill.
"""

from __future__ import annotations

import math

from vgmed_eval.adapters.base import Adapter, build_tiny, register, size_value, tiny_text_config
from vgmed_eval.adapters.tiny import synthetic_tokenizer
from vgmed_eval.geometry import GridGeometry, stretch_geometry

_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
_TINY_SIDE = 224  # tiny SigLIP input: 16 x 16 patches pooled to an 8 x 8 grid


@register
class Gemma3Adapter(Adapter):
    family = "gemma3"
    model_types = ("gemma3",)
    model_class = "Gemma3ForConditionalGeneration"
    sequence_keys = (*Adapter.sequence_keys, "token_type_ids")  # image tokens, bidirectional in prefill

    @staticmethod
    def grid_geometry(ip, config, width: int, height: int) -> GridGeometry:
        side = math.isqrt(int(config.mm_tokens_per_image))
        return stretch_geometry(width, height, size_value(ip.size, "height"), size_value(ip.size, "width"),
                                side, side)

    def encode(self, images, prompts, add_special_tokens):
        """Gemma3Processor with pan & scan forced off (its crops have no single grid geometry)."""
        enc = self.processor(images=[[im] for im in images], text=prompts, padding=True, return_tensors="pt",
                             add_special_tokens=add_special_tokens, do_pan_and_scan=False)
        if "token_type_ids" not in enc:
            enc["token_type_ids"] = (enc["input_ids"] == self.image_token_id).long()
        return enc

    @classmethod
    def tiny(cls, seed: int = 0) -> Adapter:
        from transformers import (
            Gemma3Config,
            Gemma3ForConditionalGeneration,
            Gemma3ImageProcessorPil,
            Gemma3Processor,
            SiglipVisionConfig,
        )

        marks = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                 "image_token": "<image_soft_token>"}
        tok = synthetic_tokenizer(["<start_of_turn>", "<end_of_turn>", *marks.values()], _TEMPLATE,
                                  bos="<bos>", eos="<eos>", pad="<pad>", extra=marks)
        grid = 8
        text = tiny_text_config(len(tok), head_dim=16, query_pre_attn_scalar=16, sliding_window=32,
                                layer_types=["sliding_attention"] * 3 + ["full_attention"],
                                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id)
        vision = SiglipVisionConfig(image_size=_TINY_SIDE, patch_size=14, hidden_size=32,
                                    intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=grid * grid,
                              boi_token_index=tok.convert_tokens_to_ids(marks["boi_token"]),
                              eoi_token_index=tok.convert_tokens_to_ids(marks["eoi_token"]),
                              image_token_index=tok.convert_tokens_to_ids(marks["image_token"]))
        ip = Gemma3ImageProcessorPil(size={"height": _TINY_SIDE, "width": _TINY_SIDE},
                                     do_pan_and_scan=False)
        proc = Gemma3Processor(image_processor=ip, tokenizer=tok, chat_template=_TEMPLATE,
                               image_seq_length=grid * grid)
        model = build_tiny(Gemma3ForConditionalGeneration, config, seed)
        return cls(model, tok, ip, _TEMPLATE, proc, name="builtin:tiny-gemma3")
