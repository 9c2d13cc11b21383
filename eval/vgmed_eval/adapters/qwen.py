"""Qwen2-VL, Qwen2.5-VL (Lingshu, HuatuoGPT-Vision's Qwen2.5-VL release) and Qwen3-VL adapters.

Dynamic resolution: ``smart_resize`` rounds each side to a multiple of patch x merge (28 px, 32 px
for Qwen3-VL) within the pixel budget, the vision tower cuts 14/16 px patches, and every 2 x 2
patches become one LLM token: an (h/28) x (w/28) row-major grid between vision-start and
vision-end tokens. The placeholder is expanded here by hand (the full Qwen processors need
torchvision, which may not load beside a CPU torch build); ``mm_token_type_ids`` marks the image
tokens, as transformers 5 requires.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from PIL import Image

from vgmed_eval.adapters.base import Adapter, build_tiny, register, size_value, tiny_text_config
from vgmed_eval.adapters.tiny import synthetic_tokenizer
from vgmed_eval.geometry import GridGeometry, qwen_geometry, qwen_pre_resize
from vgmed_eval.protocol import QWEN_RESIZES

log = logging.getLogger(__name__)

_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ item['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
             "<|video_pad|>", "<|endoftext|>"]


def _read_chat_template(path: str) -> str | None:
    """The processor's chat template file (chat_template.jinja / .json) of a local or hub checkpoint."""
    for name in ("chat_template.jinja", "chat_template.json"):
        local = Path(path) / name
        if not local.exists():
            try:
                from huggingface_hub import hf_hub_download

                local = Path(hf_hub_download(path, name))
            except Exception:  # noqa: BLE001 - absent file or offline: try the next name
                continue
        text = local.read_text(encoding="utf-8")
        return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None


@register
class QwenVLAdapter(Adapter):
    family = "qwen2_vl"
    model_types = ("qwen2_vl",)
    model_class = "Qwen2VLForConditionalGeneration"
    sequence_keys = (*Adapter.sequence_keys, "mm_token_type_ids")  # marks the image tokens
    tiny_patch = 14
    # qwen-vl-utils' resize before the processor's (``--qwen-resize double``, the authors' runs)
    pre_resize = False

    @classmethod
    def load_processing(cls, path: str):
        from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

        tokenizer = AutoTokenizer.from_pretrained(path)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
        return tokenizer, image_processor, _read_chat_template(path) or tokenizer.chat_template, None

    @property
    def merge(self) -> int:
        return int(self.image_processor.merge_size)

    @staticmethod
    def grid_geometry(ip, config, width: int, height: int, pre_resize: bool = False) -> GridGeometry:
        return qwen_geometry(width, height, patch=int(ip.patch_size), merge=int(ip.merge_size),
                             min_pixels=size_value(ip.size, "shortest_edge"),
                             max_pixels=size_value(ip.size, "longest_edge"), pre_resize=pre_resize)

    def geometry(self, width: int, height: int) -> GridGeometry:
        return self.grid_geometry(self.image_processor, self.model.config, width, height, self.pre_resize)

    def pre_resized(self, image: Image.Image) -> Image.Image:
        """The picture as qwen-vl-utils' ``fetch_image`` hands it to the processor (PIL's bicubic resize,
        ``Image.resize``'s default); unchanged without ``pre_resize``."""
        if not self.pre_resize:
            return image
        size = qwen_pre_resize(image.width, image.height, int(self.image_processor.patch_size))
        return image.resize(size, Image.Resampling.BICUBIC)

    def encode(self, images, prompts, add_special_tokens):
        images = [self.pre_resized(im) for im in images]
        features = self.image_processor(images=images, return_tensors="pt")
        counts = (features["image_grid_thw"].prod(-1) // self.merge**2).tolist()
        pad = "<|image_pad|>"
        texts = []
        for prompt, n in zip(prompts, counts, strict=True):
            if prompt.count(pad) != 1:
                raise ValueError(f"prompt must hold exactly one {pad}: {prompt!r}")
            texts.append(prompt.replace(pad, pad * int(n)))
        enc = self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=add_special_tokens)
        enc["mm_token_type_ids"] = (enc["input_ids"] == self.image_token_id).long()
        enc["pixel_values"] = features["pixel_values"]
        enc["image_grid_thw"] = features["image_grid_thw"]
        return enc

    @classmethod
    def _tiny_vision(cls) -> dict:
        return dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, patch_size=14,
                    spatial_merge_size=2, temporal_patch_size=2)

    @classmethod
    def _tiny_text(cls, vocab: int) -> dict:
        return tiny_text_config(vocab, rope_parameters=dict(rope_type="default", mrope_section=[2, 3, 3],
                                                            rope_theta=1e6))

    @classmethod
    def tiny(cls, seed: int = 0) -> Adapter:
        import transformers
        from transformers import Qwen2VLImageProcessorPil

        tok = synthetic_tokenizer(_SPECIALS, _TEMPLATE, bos=None, eos="<|im_end|>", pad="<|endoftext|>")
        ids = {k: tok.convert_tokens_to_ids(t) for k, t in [
            ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
        text = dict(cls._tiny_text(len(tok)), pad_token_id=tok.pad_token_id, bos_token_id=None,
                    eos_token_id=tok.eos_token_id)
        config_cls = getattr(transformers, cls.model_class.replace("ForConditionalGeneration", "Config"))
        config = config_cls(text_config=text, vision_config=cls._tiny_vision(), **ids)
        factor = cls.tiny_patch * 2
        ip = Qwen2VLImageProcessorPil(patch_size=cls.tiny_patch, merge_size=2, temporal_patch_size=2,
                                      min_pixels=factor * factor * 16, max_pixels=factor * factor * 64)
        model = build_tiny(getattr(transformers, cls.model_class), config, seed)
        return cls(model, tok, ip, _TEMPLATE, None, name=f"builtin:tiny-{cls.family}")


@register
class Qwen25VLAdapter(QwenVLAdapter):
    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    model_class = "Qwen2_5_VLForConditionalGeneration"

    @classmethod
    def _tiny_vision(cls) -> dict:
        return dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                    patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                    fullatt_block_indexes=[1])


@register
class Qwen3VLAdapter(QwenVLAdapter):
    family = "qwen3_vl"
    model_types = ("qwen3_vl",)
    model_class = "Qwen3VLForConditionalGeneration"
    tiny_patch = 16

    @classmethod
    def _tiny_vision(cls) -> dict:
        return dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                    patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                    deepstack_visual_indexes=[0])

    @classmethod
    def _tiny_text(cls, vocab: int) -> dict:
        return tiny_text_config(vocab, head_dim=16, rope_parameters=dict(
            rope_type="default", mrope_section=[2, 3, 3], mrope_interleaved=True, rope_theta=1e6))



def set_pixel_bounds(adapter: Adapter, min_pixels: int | None, max_pixels: int | None, explicit: bool = True) -> None:
    """Qwen-VL's image bounds (``--min-pixels`` / ``--max-pixels``): what the processor resizes every image
    into, and so the token grid; the published runs use 784 and 50176 (224 x 224). Other families have
    no such bounds: given ``explicit``ly that is an error, from a protocol they do not apply."""
    if min_pixels is None and max_pixels is None:
        return
    if not isinstance(adapter, QwenVLAdapter):
        if not explicit:
            return
        raise ValueError(f"--min-pixels / --max-pixels apply to Qwen-VL models only, not {adapter.family}")
    ip = adapter.image_processor
    low = min_pixels if min_pixels is not None else size_value(ip.size, "shortest_edge")
    high = max_pixels if max_pixels is not None else size_value(ip.size, "longest_edge")
    if not 0 < low <= high:
        raise ValueError(f"--min-pixels {low} must be positive and at most --max-pixels {high}")
    ip.size = type(ip.size)(shortest_edge=low, longest_edge=high)


def set_resize(adapter: Adapter, mode: str, explicit: bool = True) -> None:
    """``--qwen-resize single|double``: double passes every picture through qwen-vl-utils' resize before
    the processor's, as the authors' runs do (pixels and grid both change). Other families: given
    ``explicit``ly, double is an error; from a protocol it does not apply."""
    if mode not in QWEN_RESIZES:
        raise ValueError(f"--qwen-resize must be one of {QWEN_RESIZES}, got {mode!r}")
    if not isinstance(adapter, QwenVLAdapter):
        if explicit and mode == "double":
            raise ValueError(f"--qwen-resize double applies to Qwen-VL models only, not {adapter.family}")
        return
    adapter.pre_resize = mode == "double"

