"""Model adapters, one module per family (found by :mod:`vgmed_eval.families`, imported when asked for);
:func:`load_adapter` picks one by ``config.model_type``."""

from __future__ import annotations

import argparse
from pathlib import Path

from vgmed_eval import placement as placements
from vgmed_eval.adapters.base import DTYPES, MODEL_ADAPTERS, MODEL_TYPES, Adapter, Batch
from vgmed_eval.adapters.internvl import set_grid
from vgmed_eval.adapters.qwen import set_pixel_bounds, set_resize
from vgmed_eval.chat_templates import read_template
from vgmed_eval.distributed import World
from vgmed_eval.placement import Placement, dispatch
from vgmed_eval.protocol import Protocol

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
        adapter = MODEL_ADAPTERS.get(spec[len(TINY_PREFIX):]).tiny()
        adapter.model.to(dtype=DTYPES.get(dtype, None) or adapter.model.dtype)
        adapter.model = dispatch(adapter.model, placement) if placement else adapter.model.to(device)
        adapter.chat_template = template or adapter.chat_template
        return adapter
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(spec).model_type
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{spec}: model_type {model_type!r} has no adapter; supported: "
                         f"{', '.join(MODEL_TYPES.names())}")
    return MODEL_TYPES.get(model_type).from_pretrained(spec, dtype=DTYPES.get(dtype, "auto"), device=device,
                                                   chat_template=template, placement=placement)


def adapter_from_args(args: argparse.Namespace, world: World, protocol: Protocol) -> Adapter:
    """The adapter a command's model options name (--model, --dtype, --device, --chat-template, the
    placement options, Qwen-VL's pixel bounds and resize, InternVL's grid), on this rank's device; ValueError
    says what to report."""
    return ready_adapter(args.model, dtype=args.dtype, device=world.device(args.device),
                         chat_template=args.chat_template,
                         placement=placements.requested(args.device_map, args.max_memory, args.offload_folder,
                                                    world.local_rank, world.local_size),
                         min_pixels=protocol.min_pixels, max_pixels=protocol.max_pixels,
                         explicit_pixels=args.min_pixels is not None or args.max_pixels is not None,
                         qwen_resize=protocol.qwen_resize,
                         explicit_resize=getattr(args, "qwen_resize", None) is not None,
                         internvl_grid=args.internvl_grid)


def ready_adapter(model: str, *, dtype: str = "auto", device: str = "cpu", chat_template: Path | None = None,
                  placement: Placement | None = None, min_pixels: int | None = None, max_pixels: int | None = None,
                  explicit_pixels: bool = True, qwen_resize: str = "single", explicit_resize: bool = True,
                  internvl_grid: str | None = None) -> Adapter:
    """:func:`load_adapter` with Qwen-VL's pixel bounds and ``--qwen-resize`` applied (given ``explicit_*``ly,
    settings a family lacks are an error; from a protocol they do not apply) and InternVL's metric grid
    (``--internvl-grid``; None: whole); ValueError names ``--model``."""
    try:
        adapter = load_adapter(model, dtype=dtype, device=device, chat_template=chat_template, placement=placement)
    except (OSError, ValueError, NotImplementedError) as exc:  # the last: a family without tiny()
        raise ValueError(f"--model {model}: cannot load: {exc}") from exc
    set_pixel_bounds(adapter, min_pixels, max_pixels, explicit=explicit_pixels)
    set_resize(adapter, qwen_resize, explicit=explicit_resize)
    set_grid(adapter, internvl_grid)
    return adapter


__all__ = ["MODEL_ADAPTERS", "MODEL_TYPES", "Adapter", "Batch", "TINY_PREFIX", "adapter_from_args", "load_adapter",
           "ready_adapter"]
