"""Model adapters, one module per family; :func:`load_adapter` picks one by ``config.model_type``."""

from __future__ import annotations

from vgmed_eval.adapters import gemma3, llava, qwen  # noqa: F401  (registers the families)
from vgmed_eval.adapters.base import ADAPTERS, DTYPES, MODEL_TYPES, Adapter, Batch

TINY_PREFIX = "builtin:tiny-"


def load_adapter(spec: str, dtype: str = "auto", device: str = "cpu") -> Adapter:
    """``builtin:tiny-<family>``, a local checkpoint directory or a hub id -> a ready adapter.

    ``dtype``: auto (checkpoint's own; float32 for tiny models), float32, float16 or bfloat16.
    """
    if dtype != "auto" and dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    if spec.startswith(TINY_PREFIX):
        family = spec[len(TINY_PREFIX):]
        if family not in ADAPTERS:
            raise ValueError(f"unknown tiny family {family!r}; available: {', '.join(sorted(ADAPTERS))}")
        adapter = ADAPTERS[family].tiny()
        adapter.model.to(device=device, dtype=DTYPES.get(dtype, None) or adapter.model.dtype)
        return adapter
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(spec).model_type
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{spec}: model_type {model_type!r} has no adapter; supported: "
                         f"{', '.join(sorted(MODEL_TYPES))}")
    return MODEL_TYPES[model_type].from_pretrained(spec, dtype=DTYPES.get(dtype, "auto"), device=device)


__all__ = ["ADAPTERS", "MODEL_TYPES", "Adapter", "Batch", "TINY_PREFIX", "load_adapter"]
