"""`vgmed-eval convert`: its options, and the conversion of :mod:`vgmed_eval.convert` they ask for."""

from __future__ import annotations

import logging
from pathlib import Path

from vgmed_build import commands
from vgmed_eval import convert
from vgmed_eval.chat_templates import PROMPTS
from vgmed_eval.checkpoint_io import (
    ConvertError,
)

log = logging.getLogger(__name__)


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        description=convert.__doc__,
    )
    p.add_argument("src", type=Path, metavar="SRC",
                   help="local original checkpoint folder: LLaVA's (config.json with model_type llava_qwen2, "
                        "llava_mistral, llava or llava_llama), InternVL-Chat's (model_type internvl_chat, e.g. "
                        "MedRegA) or VILA 1.5's (llm/, vision_tower/, mm_projector/ folders, e.g. VILA-M3); "
                        "safetensors or .bin shards; tokenizer")
    p.add_argument("dst", type=Path, metavar="DST", help="new folder for the transformers checkpoint (must not exist "
                   "or be empty)")
    p.add_argument("--vision-tower", type=Path, metavar="DIR",
                   help="LLaVA layouts: local CLIP checkpoint to use as the vision tower (default: mm_vision_tower "
                        "of the config, relative to SRC, as HuatuoGPT-Vision bundles it)")
    p.add_argument("--chat-template", type=Path, metavar="FILE",
                   help="chat template (Jinja, or JSON with 'chat_template') to write instead of the family's prompt")
    p.add_argument("--prompt", choices=sorted(PROMPTS),
                   help="use this known prompt instead of the one recognised from the model type and folder name "
                        "(huatuo: HuatuoGPT-Vision, llava-med: mistral_instruct, vicuna: LLaVA-1.5, "
                        "internvl-hermes2: InternVL-Chat's Hermes-2); VILA needs this or --chat-template")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    try:
        p = convert.convert(args.src, args.dst, vision_tower=args.vision_tower, chat_template=args.chat_template,
                    prompt=args.prompt, progress=not args.no_progress)
    except ConvertError as exc:
        return commands.fail(f"convert: {exc}")
    log.info("%s (%s) -> %s", args.src, p.describe(), args.dst)
    return commands.EXIT_OK
