"""The model-adapter contract: one subclass per VLM family, registered by config ``model_type``.

An adapter owns a loaded model with its tokenizer, image processor and chat template, and knows
(1) how to turn images + questions into a left-padded batch with the model's own chat template,
(2) where the image tokens sit in that batch and which of them form the visual grid (row-major),
(3) the exact geometry from original pixels to grid cells (:mod:`vgmed_eval.geometry`).

Adding a family = one module in ``adapters/`` with a subclass decorated by :func:`register` that sets
``family`` and ``model_types`` and implements :meth:`Adapter.tiny` (docs/extending.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from vgmed_eval.attention import install, llm_layers
from vgmed_eval.families import MODEL_ADAPTERS, MODEL_TYPES
from vgmed_eval.geometry import GridGeometry, TokenCover
from vgmed_eval.placement import Placement, input_device

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def register(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: the family under its name and each of its config ``model_types`` (the tables of
    :mod:`vgmed_eval.families`, which read both from the class body: write them as literals)."""
    MODEL_ADAPTERS.register(cls.family, cls)
    for model_type in cls.model_types:
        MODEL_TYPES.register(model_type, cls)
    return cls


def size_value(size: Any, key: str) -> int | None:
    """Read ``size['shortest_edge']``-style fields from a dict or a transformers SizeDict."""
    if size is None:
        return None
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value is not None else None


@dataclass
class Batch:
    """Model inputs plus, per row, the grid's image-token positions, the image geometry and which grid
    cells each image token shows (what a knockout of cells blocks)."""

    inputs: dict[str, torch.Tensor]
    grid_positions: list[torch.Tensor]
    geometries: list[GridGeometry]
    question_start: torch.Tensor  # (B,) first position after the last image token of each row
    covers: list[TokenCover]

    @property
    def size(self) -> int:
        return len(self.geometries)


class Adapter:
    """Base class; subclasses set the class variables and implement the family-specific parts."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    model_class: ClassVar[str]  # transformers class name
    # The model inputs with a token dimension, which whoever cuts or extends a batch along the sequence
    # (VGRefine's shared prefixes, the reference's greedy recomputation) must treat alike; every other
    # input (pixel_values, image_grid_thw, image_sizes) is per image. A family whose :meth:`encode`
    # returns another one declares it (Gemma 3's token_type_ids, Qwen-VL's mm_token_type_ids).
    sequence_keys: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask")

    def __init__(self, model, tokenizer, image_processor, chat_template: str, processor=None, name: str = ""):
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.chat_template = chat_template
        self.processor = processor
        self.name = name or self.family
        tokenizer.padding_side = "left"
        install(model)

    # ----- loading -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str, dtype: torch.dtype | str = "auto", device: str = "cpu",
                        chat_template: str | None = None, placement: Placement | None = None) -> Adapter:
        """Load a checkpoint; ``chat_template`` (text) overrides the checkpoint's own template;
        ``placement`` spreads it over several devices (transformers' big-model loading)."""
        import transformers

        tokenizer, image_processor, template, processor = cls.load_processing(path)
        template = chat_template or template or cls.known_template(path)
        if not template:
            raise ValueError(f"{path}: the checkpoint has no chat template and is not one whose prompt vgmed knows "
                             "(HuatuoGPT-Vision, LLaVA-Med); give one with --chat-template FILE")
        model_cls = getattr(transformers, cls.model_class)
        model = model_cls.from_pretrained(path, dtype=dtype, attn_implementation="sdpa", **cls.load_kwargs(path),
                                          **(placement.hf_kwargs() if placement else {}))
        model = model if placement else model.to(device)
        return cls(model.eval(), tokenizer, image_processor, template, processor, name=path)

    @classmethod
    def load_kwargs(cls, path: str) -> dict:
        """Extra ``from_pretrained`` arguments a family needs (none by default)."""
        return {}

    @classmethod
    def known_template(cls, path: str) -> str | None:
        """The prompt of a recognised checkpoint that ships without a chat template (none by default)."""
        return None

    @classmethod
    def load_processing(cls, path: str):
        """(tokenizer, image_processor, chat_template or None, processor) from a checkpoint directory or hub id."""
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(path)
        template = processor.chat_template or processor.tokenizer.chat_template
        return processor.tokenizer, processor.image_processor, template, processor

    @classmethod
    def tiny(cls, seed: int = 0) -> Adapter:
        """A tiny random model of this family with offline processing (``builtin:tiny-<family>``)."""
        raise NotImplementedError(
            f"{cls.__name__} (family {cls.family!r}) must provide tiny(): a tiny random model with offline "
            "processing that every family's contract tests build (see docs/extending.md, 'A model family')")

    # ----- prompts and batches ---------------------------------------------------------------
    def prompt(self, text: str) -> str:
        """The user turn with one image before the text, rendered by the model's chat template."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=True
        )

    def build_inputs(self, images: list[Image.Image], texts: list[str]) -> Batch:
        """Left-padded batch of (image, user text) pairs on the model's device."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images for {len(texts)} prompts")
        images = [im.convert("RGB") for im in images]
        prompts = [self.prompt(t) for t in texts]
        bos = self.tokenizer.bos_token
        add_special = not (bos and prompts[0].startswith(bos))
        features = self.encode(images, prompts, add_special)
        device = self.device
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        geoms = [self.geometry(im.width, im.height) for im in images]
        positions = self.grid_positions(inputs["input_ids"], geoms)
        starts = torch.tensor([int(s.max()) + 1 for s in self.image_token_spans(inputs["input_ids"])])
        return Batch(inputs=inputs, grid_positions=positions, geometries=geoms, question_start=starts,
                     covers=self.token_covers(inputs["input_ids"], geoms, positions))

    def encode(self, images: list[Image.Image], prompts: list[str], add_special_tokens: bool):
        """Tokenise and expand image placeholders (default: the model's own processor)."""
        return self.processor(images=images, text=prompts, padding=True, return_tensors="pt",
                              add_special_tokens=add_special_tokens)

    @property
    def image_token_id(self) -> int:
        cfg = self.model.config
        value = getattr(cfg, "image_token_id", None)
        return int(value if value is not None else cfg.image_token_index)

    def image_token_spans(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        """Per batch row, the positions of all image tokens (in order)."""
        return [torch.nonzero(row == self.image_token_id).flatten().cpu() for row in input_ids]

    def grid_positions(self, input_ids: torch.Tensor, geometries: list[GridGeometry]) -> list[torch.Tensor]:
        """Per row, the image-token positions of the metric grid, row-major (length rows*cols)."""
        spans = self.image_token_spans(input_ids)
        for b, (span, geom) in enumerate(zip(spans, geometries, strict=True)):
            if len(span) != geom.rows * geom.cols:
                raise RuntimeError(
                    f"row {b}: {len(span)} image tokens but the {geom.rows}x{geom.cols} grid needs "
                    f"{geom.rows * geom.cols}; the geometry does not match the processor"
                )
        return spans

    def token_covers(self, input_ids: torch.Tensor, geometries: list[GridGeometry],
                     grid_positions: list[torch.Tensor]) -> list[TokenCover]:
        """Per row, the image tokens a knockout of grid cells blocks, with the cells each shows: by default
        the grid's own tokens, one cell each (a family whose other image tokens show the same regions, as
        InternVL's tiles and thumbnail do, maps those too)."""
        return [TokenCover.identity(g.rows, g.cols, p.cpu().numpy()) for g, p in
                zip(geometries, grid_positions, strict=True)]

    # ----- geometry ----------------------------------------------------------------------------
    @staticmethod
    def grid_geometry(image_processor, config, width: int, height: int) -> GridGeometry:
        """The family's preprocessing geometry from its image processor and model config (no model)."""
        raise NotImplementedError

    def geometry(self, width: int, height: int) -> GridGeometry:
        return self.grid_geometry(self.image_processor, self.model.config, width, height)

    def box_to_cells(self, box, width: int, height: int) -> np.ndarray:
        """Boolean (rows, cols) mask of grid cells touched by a pixel-edge xyxy box."""
        return self.geometry(width, height).box_to_cells(box)

    # ----- model facts --------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where inputs go (a model spread with --device-map has several devices)."""
        return input_device(self.model)

    @property
    def n_layers(self) -> int:
        return len(llm_layers(self.model))

    @property
    def n_heads(self) -> int:
        return int(self.model.config.get_text_config().num_attention_heads)


def tiny_text_config(vocab_size: int, **extra) -> dict:
    """Text settings that work for every family's tiny model (see notes/vlm-attention.md)."""
    # initializer_range 0.1 (not 0.02) gives peaked, image-dependent attention: nicer demo maps.
    base = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=4096,
                initializer_range=0.1)
    base.update(extra)
    return base


def build_tiny(model_cls, config, seed: int):
    """Instantiate a random model reproducibly, SDPA everywhere, eval mode, float32."""
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return model_cls(config).eval()
