"""`vgmed-eval heads`: its options, and the choice of :mod:`vgmed_eval.heads` they ask for."""

from __future__ import annotations

import json
import os
from pathlib import Path

from vgmed_build import commands
from vgmed_eval import heads
from vgmed_eval.heads import DIRECTION, SPLITS, heads_of
from vgmed_eval.protocol import PROTOCOLS


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "heads",
        description=heads.__doc__,
    )
    p.add_argument("--results", required=True, type=Path,
                   help="output directory of `vgmed-eval grounding` (per_layer.parquet, per_head.parquet)")
    p.add_argument("--top-k", type=int, default=20, help="number of heads to keep")
    p.add_argument("--metric", default="attention_ratio", choices=sorted(DIRECTION),
                   help="ranking metric (attention_ratio: higher is better; kl, js: lower is better)")
    p.add_argument("--out", required=True, type=Path, help="heads JSON file to write")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default=None,
                   help="refuse grounding results measured under another protocol (the ranking itself is the "
                        "same in both: top-k by mean metric); the heads file records the run's protocol")
    p.add_argument("--split", choices=SPLITS, default="all",
                   help="the questions the heads are chosen on: all = the whole run (as published); dev = those on "
                        "the images of a fixed, hash-defined part of the release (--dev-fraction); control = the "
                        "natural-image control run in RESULTS/control. heads.json records which (selected_on)")
    p.add_argument("--dev-fraction", type=float, default=0.2,
                   help="--split dev: the share of the release's images in the dev part")
    p.set_defaults(func=cmd_heads)


def cmd_heads(args) -> int:
    try:
        body = heads_of(args.results, top_k=args.top_k, metric=args.metric, protocol=args.protocol, split=args.split,
                        dev_fraction=args.dev_fraction)
    except ValueError as exc:
        return commands.fail(str(exc))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Written whole, then renamed: ranks of a launched `reproduce` write the same file and read it next.
    scratch = args.out.with_name(f"{args.out.name}.{os.getpid()}.partial")
    scratch.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    os.replace(scratch, args.out)
    print(f"heads: knockout layer {body['knockout_layer']}, {body['k']} heads -> {args.out}")
    return commands.EXIT_OK
