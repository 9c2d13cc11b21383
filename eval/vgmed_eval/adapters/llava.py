"""LLaVA-1.5 (llava-hf checkpoints, LLaVA-Med converted) and LLaVA-NeXT adapters.

LLaVA-1.5: CLIP preprocessing. llava-hf checkpoints ship ``CLIPImageProcessor`` (shortest-edge
resize + centre crop: the sides of a non-square image are cut off); checkpoints whose processor
sets ``do_pad`` (``LlavaImageProcessor``, LLaVA's original ``expand2square``) pad to a square with
the mean colour first. The grid is ``crop / patch`` (24 x 24 at 336 px, CLS dropped).

LLaVA-NeXT: the image tokens are the 24 x 24 *base* grid (the whole image resized to 336 x 336,
aspect not kept) followed by the high-resolution grid with one newline token per row. The metrics
use the base grid: its geometry is the same for every image, so maps and ratios are comparable
across images and with LLaVA-1.5. Attention is still normalised over all keys (softmax over the
whole sequence) before the base-grid columns are taken.
"""

from __future__ import annotations

from vgmed_eval.adapters.base import Adapter, build_tiny, register, size_value, tiny_text_config
from vgmed_eval.adapters.tiny import synthetic_tokenizer
from vgmed_eval.chat_templates import recognise
from vgmed_eval.geometry import GridGeometry, clip_geometry, stretch_geometry

_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {{ message['content'][0]['text'] }}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
_NEXT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}[INST] "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %} [/INST]"
    "{% else %} {{ message['content'][0]['text'] }}</s>{% endif %}{% endfor %}"
)
_TINY_SIDE = 112  # tiny CLIP input: 8 x 8 patches of 14 px


def _tiny_clip(vision_side: int = _TINY_SIDE):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(image_size=vision_side, patch_size=14, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=2, num_attention_heads=2, projection_dim=32)


@register
class LlavaAdapter(Adapter):
    family = "llava"
    model_types = ("llava",)
    model_class = "LlavaForConditionalGeneration"

    @classmethod
    def known_template(cls, path: str) -> str | None:
        """HuatuoGPT-Vision-7B-hf and LLaVA-Med ports without a template get their family's prompt."""
        prompt = recognise(path)
        return prompt.template if prompt else None

    @staticmethod
    def grid_geometry(ip, config, width: int, height: int) -> GridGeometry:
        patch = int(config.vision_config.patch_size)
        shortest = size_value(ip.size, "shortest_edge")
        resize = shortest if shortest else (size_value(ip.size, "height"), size_value(ip.size, "width"))
        crop = None
        if getattr(ip, "do_center_crop", False):
            crop = (size_value(ip.crop_size, "height"), size_value(ip.crop_size, "width"))
        return clip_geometry(width, height, resize=resize, crop=crop, patch=patch,
                             pad_to_square=bool(getattr(ip, "do_pad", False)))

    @classmethod
    def tiny(cls, seed: int = 0) -> Adapter:
        from transformers import (
            CLIPImageProcessorPil,
            LlamaConfig,
            LlavaConfig,
            LlavaForConditionalGeneration,
            LlavaProcessor,
        )

        tok = synthetic_tokenizer(["<image>"], _TEMPLATE, bos="<s>", eos="</s>", pad="<pad>")
        text = LlamaConfig(**tiny_text_config(len(tok)), pad_token_id=tok.pad_token_id,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        grid = (_TINY_SIDE // 14) ** 2
        config = LlavaConfig(vision_config=_tiny_clip(), text_config=text,
                             image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=grid,
                             vision_feature_layer=-2, vision_feature_select_strategy="default")
        ip = CLIPImageProcessorPil(size={"shortest_edge": _TINY_SIDE},
                                   crop_size={"height": _TINY_SIDE, "width": _TINY_SIDE})
        proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14,
                              vision_feature_select_strategy="default", chat_template=_TEMPLATE,
                              num_additional_image_tokens=1)
        model = build_tiny(LlavaForConditionalGeneration, config, seed)
        return cls(model, tok, ip, _TEMPLATE, proc, name="builtin:tiny-llava")


@register
class LlavaNextAdapter(LlavaAdapter):
    family = "llava_next"
    model_types = ("llava_next",)
    model_class = "LlavaNextForConditionalGeneration"

    @staticmethod
    def grid_geometry(ip, config, width: int, height: int) -> GridGeometry:
        """The base grid: the whole image resized to the square vision input."""
        side = size_value(ip.size, "height") or size_value(ip.size, "shortest_edge")
        n = side // int(config.vision_config.patch_size)
        return stretch_geometry(width, height, side, side, n, n)

    def grid_positions(self, input_ids, geometries):
        """The first rows*cols image tokens of each row are the base grid; the rest is high-res."""
        spans = self.image_token_spans(input_ids)
        out = []
        for b, (span, geom) in enumerate(zip(spans, geometries, strict=True)):
            n = geom.rows * geom.cols
            if len(span) < n:
                raise RuntimeError(f"row {b}: {len(span)} image tokens, fewer than the {n}-cell base grid")
            out.append(span[:n])
        return out

    @classmethod
    def tiny(cls, seed: int = 0) -> Adapter:
        from transformers import (
            LlamaConfig,
            LlavaNextConfig,
            LlavaNextForConditionalGeneration,
            LlavaNextImageProcessorPil,
            LlavaNextProcessor,
        )

        tok = synthetic_tokenizer(["<image>", "[INST]", "[/INST]"], _NEXT_TEMPLATE, bos="<s>", eos="</s>",
                                  pad="<pad>")
        text = LlamaConfig(**tiny_text_config(len(tok)), pad_token_id=tok.pad_token_id,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        s = _TINY_SIDE
        pinpoints = [[s, 2 * s], [2 * s, s], [2 * s, 2 * s]]
        config = LlavaNextConfig(vision_config=_tiny_clip(), text_config=text,
                                 image_token_index=tok.convert_tokens_to_ids("<image>"),
                                 image_grid_pinpoints=pinpoints, image_seq_length=(s // 14) ** 2,
                                 vision_feature_layer=-2, vision_feature_select_strategy="default")
        ip = LlavaNextImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                                        image_grid_pinpoints=pinpoints)
        proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=14,
                                  vision_feature_select_strategy="default", chat_template=_NEXT_TEMPLATE,
                                  num_additional_image_tokens=1)
        model = build_tiny(LlavaNextForConditionalGeneration, config, seed)
        return cls(model, tok, ip, _NEXT_TEMPLATE, proc, name="builtin:tiny-llava_next")
