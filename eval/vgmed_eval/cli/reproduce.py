"""`vgmed-eval reproduce`: its options, and the pipeline of :mod:`vgmed_eval.reproduce` they ask for."""

from __future__ import annotations

import logging
from pathlib import Path

from vgmed_build import commands
from vgmed_eval import reproduce, run_manifest
from vgmed_eval.cli.options import parse_benchmark
from vgmed_eval.distributed import World
from vgmed_eval.model_options import add_model_options
from vgmed_eval.protocol import PROTOCOLS
from vgmed_eval.published import MODELS
from vgmed_eval.reproduce import (
    HEADS_CHOICES,
    Options,
    vgrefine_heads,
)
from vgmed_eval.vqa.benchmarks import BENCHMARKS

log = logging.getLogger(__name__)


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "reproduce",
        description=reproduce.__doc__,
    )
    p.add_argument("--vgmed", required=True, type=Path, metavar="DIR", help="the VGMED release directory")
    p.add_argument("--out", required=True, type=Path, help="output directory (created; a rerun resumes)")
    p.add_argument("--benchmark", action="append", type=parse_benchmark, default=[], metavar="NAME=DATA",
                   help=f"a VQA benchmark and its local copy, repeatable; names: {', '.join(BENCHMARKS.names())}")
    p.add_argument("--control-release", type=Path, metavar="DIR",
                   help="a natural-image control release for the grounding step (default: --vgmed itself when it "
                        "holds COCO_*.jsonl, as the published release does)")
    p.add_argument("--images", type=Path, metavar="DIR",
                   help="where the release's pictures live when not under --vgmed (a published download: SLAKE "
                        "folder ids -> DIR/<id>/source.jpg, COCO ids -> DIR/COCO_val2014_<id>.jpg); passed to "
                        "grounding and to the vgmed-* VQA steps")
    p.add_argument("--published-as", choices=MODELS,
                   help="the published model to compare with (default: recognised from --model's name)")
    p.add_argument("--top-k", type=int, default=20, help="VGRefine triage heads (the paper: 20)")
    p.add_argument("--heads", choices=HEADS_CHOICES,
                   help="the VGRefine heads of the VQA steps: published = the authors' heads of the compared model "
                        "(knockout layer 16 and 20 heads for HuatuoGPT-Vision-7B; the default under --protocol "
                        "published when they exist); measured = this run's heads step (the default otherwise)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N questions of each set (a quick look)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="greedy decoding length limit for VQA")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (grounding CIs, paired VQA)")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="vgmed",
                   help="passed to grounding, heads and vqa: vgmed's defaults, or published = every choice the "
                        "authors' code makes (docs/eval.md)")
    p.add_argument("--heads-split", choices=("all", "dev", "control"), default="all",
                   help="the grounding questions the measured heads are chosen on (heads --split): all, a fixed dev "
                        "part of the release, or the natural-image control")
    p.add_argument("--allow-tuning-on-test", action="store_true",
                   help="run a VQA step even when its benchmark shares (near-)identical images with the questions "
                        "the measured heads were chosen on; refused otherwise (the step fails and says why)")
    add_model_options(p, placement=False)  # passed to every step
    p.set_defaults(func=cmd_reproduce)


def manifest(args, o: Options) -> dict:
    """run.json of a reproduction: its own flags and protocol, the model as its grounding step loaded it, and
    each step's run.json."""
    steps = {"grounding": o.out / "grounding", **{f"vqa {name}": o.out / "vqa" / name for name in o.benchmarks}}
    recorded = {name: run_manifest.read(folder) for name, folder in steps.items()}
    body = run_manifest.build("reproduce", vars(args), model=o.model, protocol=PROTOCOLS[o.protocol].as_dict(),
                              seeds={"bootstrap_seed": 0}, extra={"steps": recorded})
    loaded = next((r["model"] for r in recorded.values() if r and r.get("model")), None)
    body["model"] = loaded or body["model"]
    return body


def cmd_reproduce(args) -> int:
    if not args.vgmed.is_dir():
        return commands.fail(f"--vgmed {args.vgmed}: not a directory")
    names = [name for name, _ in args.benchmark]
    if len(set(names)) != len(names):
        return commands.fail(f"--benchmark: a name given twice ({', '.join(names)})")
    o = Options(model=args.model, vgmed=args.vgmed, out=args.out, benchmarks=dict(args.benchmark),
                control=args.control_release, images=args.images, device=args.device, dtype=args.dtype,
                batch_size=args.batch_size, limit=args.limit, top_k=args.top_k, max_new_tokens=args.max_new_tokens,
                bootstrap=args.bootstrap, chat_template=args.chat_template, internvl_grid=args.internvl_grid,
                published_as=args.published_as,
                protocol=args.protocol, heads=args.heads, heads_split=args.heads_split,
                allow_tuning_on_test=args.allow_tuning_on_test)
    try:
        vgrefine_heads(o)
    except ValueError as exc:
        return commands.fail(str(exc))
    report = reproduce.reproduce(o)
    if World.from_env().main:
        run_manifest.write(o.out, manifest(args, o))
    failed = [name for name, s in report["steps"].items() if s["status"] in ("failed", "not run")]
    log.info("report: %s%s", o.out / "report.md", f" ({len(failed)} step(s) failed: {', '.join(failed)})"
             if failed else "")
    return commands.EXIT_ITEM_ERRORS if failed else commands.EXIT_OK
