"""InternVL family (transformers' native ``internvl``: InternVL2.5 / InternVL3 ``-hf`` checkpoints,
InternVL-Chat checkpoints converted by ``vgmed-eval convert``, e.g. MedRegA).

Dynamic tiling (``crop_to_patches``, transformers' default for this processor): the image is resized
to the ``cols x rows`` arrangement of 448 px tiles whose aspect ratio is closest to its own (at most
``max_patches`` tiles), cut into those tiles in row-major order, and, when there is more than one,
followed by a thumbnail (the whole image resized to one tile). Each tile goes through the vision
tower on its own (32 x 32 patches of 14 px) and pixel shuffle (``downsample_ratio`` 0.5) turns every
2 x 2 patches into one token: 16 x 16 = 256 tokens per tile, ``<img>`` + tokens of every tile +
``</img>``.

Metric grid (:attr:`InternVLAdapter.grid`): ``whole`` (default) is the 16 x 16 grid of the whole
image, the single tile or the thumbnail, the same for every image as for MedRegA, which runs
without tiling (the authors' ``gt_tokens_medrega``: 448 px, 16 x 16); ``tiles`` is the mosaic of all
tiles, re-ordered into one row-major grid. The other tokens stay in the softmax (all keys). The
geometry is :class:`vgmed_eval.geometry.TileLayout`.

The placeholder is expanded here by hand, as the Qwen adapter does: transformers' InternVL processor
needs a video processor, which needs torchvision (tests build the real processor and check that the
tokens and pixels are the same).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from vgmed_eval.adapters.base import Adapter, build_tiny, register, size_value, tiny_text_config
from vgmed_eval.adapters.qwen import _read_chat_template
from vgmed_eval.adapters.tiny import synthetic_tokenizer
from vgmed_eval.geometry import TILE_GRIDS, GridGeometry, TileLayout, TokenCover, tile_layout

_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The tokens InternVL's code and transformers' processor use (tokenizer attributes in -hf checkpoints).
_MARKS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
          "video_token": "<video>"}
# Where a chat template puts the image: "<image>" (InternVL's own code), "<IMG_CONTEXT>" (-hf templates).
_PLACEHOLDERS = ("<image>", "<IMG_CONTEXT>")
_TINY_TILE = 224  # tiny tile: 16 x 16 patches of 14 px -> 8 x 8 tokens


def _v1_shuffle(shuffle):
    """InternVL 1.x's pixel shuffle ("ps_version v1") and VILA's 2 x 2 merge: transformers' (v2) result
    without its final swap of the two spatial axes, so the LLM sees each tile's tokens column by column,
    as those checkpoints were trained (``vgmed-eval convert`` writes ``ps_version`` into the config); an odd
    side (VILA's 27 x 27 SigLIP patches) is first padded with a zero row / column at the bottom / right."""
    def v1(features, scale_factor: float = 0.5):
        n, h, w, c = features.shape
        padded = features.new_zeros(n, h + h % 2, w + w % 2, c)
        padded[:, :h, :w] = features
        return shuffle(padded, scale_factor).transpose(1, 2).contiguous()
    return v1


@register
class InternVLAdapter(Adapter):
    family = "internvl"
    model_types = ("internvl",)
    model_class = "InternVLForConditionalGeneration"
    grid = "whole"  # or "tiles" (see the module docstring)

    def __init__(self, model, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        if getattr(model.config, "ps_version", "v2") == "v1":
            model.model.pixel_shuffle = _v1_shuffle(model.model.pixel_shuffle)

    @classmethod
    def load_kwargs(cls, path: str) -> dict:
        """A converted VILA checkpoint has a SigLIP vision config, which InternVLConfig would read as an
        InternViT one: its config is built here with the SigLIP class."""
        from transformers import InternVLConfig, SiglipVisionConfig
        from transformers.utils import cached_file

        data = json.loads(Path(cached_file(path, "config.json")).read_text(encoding="utf-8"))
        vision = data.get("vision_config") or {}
        if vision.get("model_type") != "siglip_vision_model":
            return {}
        data = {k: v for k, v in data.items() if k not in ("vision_config", "model_type")}
        return {"config": InternVLConfig(**{**data, "vision_config": SiglipVisionConfig(**vision)})}

    @classmethod
    def load_processing(cls, path: str):
        from transformers import AutoTokenizer, GotOcr2ImageProcessorPil

        tokenizer = AutoTokenizer.from_pretrained(path)
        image_processor = GotOcr2ImageProcessorPil.from_pretrained(path)
        # InternVLProcessor tiles whatever the image processor's own flag says (its default kwargs set
        # crop_to_patches); a checkpoint that must not tile says so with max_patches 1.
        image_processor.crop_to_patches = True
        return tokenizer, image_processor, _read_chat_template(path) or tokenizer.chat_template, None

    @staticmethod
    def layout(ip, config, width: int, height: int) -> TileLayout:
        """How the image processor tiles a ``width x height`` image for this model."""
        cells = math.isqrt(int(config.image_seq_length))
        patch = config.vision_config.patch_size
        return tile_layout(width, height, tile=size_value(ip.size, "height"), cells=cells,
                           min_tiles=int(ip.min_patches), max_tiles=int(ip.max_patches),
                           tiling=bool(ip.crop_to_patches), transposed=getattr(config, "ps_version", "v2") == "v1",
                           patch=int(patch[0] if isinstance(patch, (list, tuple)) else patch))

    @classmethod
    def grid_geometry(cls, ip, config, width: int, height: int) -> GridGeometry:
        return cls.layout(ip, config, width, height).grid(cls.grid)

    def geometry(self, width: int, height: int) -> GridGeometry:
        return self.layout(self.image_processor, self.model.config, width, height).grid(self.grid)

    def encode(self, images, prompts, add_special_tokens):
        features = self.image_processor(images=images, crop_to_patches=bool(self.image_processor.crop_to_patches),
                                        return_tensors="pt")
        per_tile = int(self.model.config.image_seq_length)
        context = self.tokenizer.convert_ids_to_tokens(self.image_token_id)
        vocab = self.tokenizer.get_vocab()
        # InternVL wraps the image in <img> ... </img>; VILA (converted to this class) has no such tokens
        start, end = (("<img>", "</img>") if "<img>" in vocab and "</img>" in vocab else ("", ""))
        texts = []
        for prompt, n in zip(prompts, features["num_patches"].tolist(), strict=True):
            found = [p for p in _PLACEHOLDERS if p in prompt]
            if len(found) != 1 or prompt.count(found[0]) != 1:
                raise ValueError(f"prompt must hold exactly one image placeholder ({' or '.join(_PLACEHOLDERS)}): "
                                 f"{prompt!r}")
            texts.append(prompt.replace(found[0], start + context * (per_tile * n) + end))
        enc = self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=add_special_tokens)
        enc["pixel_values"] = features["pixel_values"]
        return enc

    def _layouts(self, input_ids, geometries: list[GridGeometry]) -> list[tuple]:
        """Per row, (positions of all image tokens, :class:`TileLayout`), checked against each other."""
        out = []
        for b, (span, geom) in enumerate(zip(self.image_token_spans(input_ids), geometries, strict=True)):
            lay = self.layout(self.image_processor, self.model.config, geom.image_w, geom.image_h)
            if len(span) != lay.n_tokens:
                raise RuntimeError(f"row {b}: {len(span)} image tokens but {lay.cols}x{lay.rows} tiles"
                                   f"{' + thumbnail' if lay.thumbnail else ''} need {lay.n_tokens}; the "
                                   "geometry does not match the processor")
            out.append((span, lay))
        return out

    def grid_positions(self, input_ids, geometries: list[GridGeometry]) -> list:
        """The metric grid's cells among each row's image tokens (tiles, then the thumbnail)."""
        import torch

        return [span[torch.as_tensor(lay.token_index(self.grid))] for span, lay in self._layouts(input_ids, geometries)]

    def token_covers(self, input_ids, geometries: list[GridGeometry], grid_positions) -> list[TokenCover]:
        """Every tile's and the thumbnail's tokens with the metric-grid cells each shows
        (:meth:`TileLayout.cover`): a knockout of cells reaches every token showing only those cells."""
        return [lay.cover(self.grid).at(span.numpy()) for span, lay in self._layouts(input_ids, geometries)]

    @classmethod
    def tiny(cls, seed: int = 0) -> Adapter:
        from transformers import (
            GotOcr2ImageProcessorPil,
            InternVLConfig,
            InternVLForConditionalGeneration,
            InternVLVisionConfig,
            Qwen2Config,
        )

        tok = synthetic_tokenizer(["<|im_start|>", "<|im_end|>", "<image>", *_MARKS.values()], _TEMPLATE, bos=None,
                                  eos="<|im_end|>", pad="<|endoftext|>", extra=_MARKS)
        vision = InternVLVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, image_size=_TINY_TILE, patch_size=14)
        text = Qwen2Config(**tiny_text_config(len(tok)), pad_token_id=tok.pad_token_id,
                           eos_token_id=tok.eos_token_id)
        cells = _TINY_TILE // 14 // 2
        config = InternVLConfig(vision_config=vision, text_config=text, image_seq_length=cells * cells,
                                image_token_id=tok.convert_tokens_to_ids(_MARKS["context_image_token"]))
        ip = GotOcr2ImageProcessorPil(size={"height": _TINY_TILE, "width": _TINY_TILE}, crop_to_patches=True,
                                      min_patches=1, max_patches=4)
        model = build_tiny(InternVLForConditionalGeneration, config, seed)
        return cls(model, tok, ip, _TEMPLATE, None, name="builtin:tiny-internvl")


def set_grid(adapter: Adapter, grid: str | None) -> None:
    """``--internvl-grid whole|tiles``: the metric grid of an InternVL-family model (None: its default, whole).
    Other families have one grid: ``tiles`` is an error there, ``whole`` changes nothing."""
    if grid is None:
        return
    if grid not in TILE_GRIDS:
        raise ValueError(f"--internvl-grid must be one of {TILE_GRIDS}, got {grid!r}")
    if not isinstance(adapter, InternVLAdapter):
        if grid != "whole":
            raise ValueError(f"--internvl-grid {grid} applies to InternVL-family models only, not {adapter.family}")
        return
    adapter.grid = grid
