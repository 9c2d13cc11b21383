"""Model adapters, one module per family; :func:`load_adapter` picks one by ``config.model_type``."""

from __future__ import annotations

from pathlib import Path

from vgmed_eval.adapters import gemma3, llava, qwen  # noqa: F401  (registers the families)
from vgmed_eval.adapters.base import ADAPTERS, DTYPES, MODEL_TYPES, Adapter, Batch
from vgmed_eval.chat_templates import read_template
from vgmed_eval.placement import Placement, dispatch

TINY_PREFIX = "builtin:tiny-"


def load_adapter(spec: str, dtype: str = "auto", device: str = "cpu", chat_template: Path | None = None,
                 placement: Placement | None = None) -> Adapter:
    """``builtin:tiny-<family>``, a local checkpoint directory or a hub id -> a ready adapter.

    ``dtype``: auto (checkpoint's own; float32 for tiny models), float32, float16 or bfloat16.
    ``chat_template``: a template file that replaces the checkpoint's template.
    ``placement``: spread the model over several devices (``--device-map``) instead of ``device``.
    """
    if dtype != "auto" and dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    template = read_template(chat_template) if chat_template is not None else None
    if spec.startswith(TINY_PREFIX):
        family = spec[len(TINY_PREFIX):]
        if family not in ADAPTERS:
            raise ValueError(f"unknown tiny family {family!r}; available: {', '.join(sorted(ADAPTERS))}")
        adapter = ADAPTERS[family].tiny()
        adapter.model.to(dtype=DTYPES.get(dtype, None) or adapter.model.dtype)
        adapter.model = dispatch(adapter.model, placement) if placement else adapter.model.to(device)
        adapter.chat_template = template or adapter.chat_template
        return adapter
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(spec).model_type
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{spec}: model_type {model_type!r} has no adapter; supported: "
                         f"{', '.join(sorted(MODEL_TYPES))}")
    return MODEL_TYPES[model_type].from_pretrained(spec, dtype=DTYPES.get(dtype, "auto"), device=device,
                                                   chat_template=template, placement=placement)


__all__ = ["ADAPTERS", "MODEL_TYPES", "Adapter", "Batch", "TINY_PREFIX", "load_adapter"]
