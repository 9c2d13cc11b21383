"""`vgmed-build demo`: the whole chain on the bundled real sample, offline, on a laptop.

ingest (bundled MNI152 + CT/SEG sample + a small COCO-style natural-image control) -> generate
(templates) -> local Label Studio + review push -> preview release (unreviewed items, clearly
marked) -> validate -> vgmed-eval grounding with a built-in tiny random model, medical and natural
-> heads -> VQA on the attribute questions, baseline vs VGRefine -> report plots (with the
medical-vs-natural curve and the VQA table and chart). Each step is the same CLI a user runs, so the
demo doubles as a worked example; every step is idempotent, so running the demo twice is cheap.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from vgmed_build import cli
from vgmed_build.catalog.base import CatalogError, check_build_dir
from vgmed_build.commands import EXIT_ITEM_ERRORS, EXIT_OK, fail

DEFAULT_BUILD = Path("build/demo")
TINY_MODEL = "builtin:tiny-llava"
SAMPLE_SOURCES = Path(__file__).parents[1] / "sample" / "sources.toml"  # the package's bundled sample
PREVIEW = "release-preview"  # the preview release's folder in the build directory


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        description="Run ingest -> generate -> Label Studio push -> preview release -> validate -> "
        "grounding evaluation with a tiny built-in model -> report, on the bundled real sample data. "
        "Everything runs offline; the local Label Studio server keeps running so you can log in and review.",
    )
    p.add_argument("--build", type=Path, default=DEFAULT_BUILD, help="build directory to create or reuse")
    p.add_argument(
        "--no-labelstudio",
        action="store_true",
        help="skip starting a local Label Studio server and pushing drafts (no review step)",
    )
    p.add_argument(
        "--no-eval",
        action="store_true",
        help="skip the evaluator steps (they need the 'eval' extra: torch + transformers)",
    )
    p.add_argument(
        "--model", default=TINY_MODEL, help="model for the evaluator step (hub id, local path or builtin:tiny-<family>)"
    )
    p.set_defaults(func=cmd_demo)


Step = tuple[str, list[str], Callable[[list[str]], int]]  # title, argv, the command line that runs it


def cmd_demo(args: argparse.Namespace) -> int:
    build: Path = args.build
    try:
        check_build_dir(build)
    except CatalogError as exc:
        return fail(str(exc))
    for title, argv, main in _steps(args):
        print(f"\n=== {title}: vgmed-{'build' if main is cli.main else 'eval'} {' '.join(argv)}", flush=True)
        code = main(argv)
        if code:
            return fail(f"demo step '{title}' failed with exit code {code}", EXIT_ITEM_ERRORS)
    print(f"\nDone. Build directory: {build.resolve()}")
    if not args.no_labelstudio:
        print(f"Drafts wait for review in Label Studio; login: `vgmed-build labelstudio status --build {build}`")
    print(f"Preview release: {(build / PREVIEW).resolve()}  (unreviewed items; a real release needs review)")
    return EXIT_OK


def _steps(args: argparse.Namespace) -> Iterator[Step]:
    """The demo's commands in order; each is yielded once the ones before it have succeeded."""
    build: Path = args.build
    yield "ingest", ["ingest", "--build", str(build), "--sources", str(SAMPLE_SOURCES)], cli.main
    yield "stats", ["stats", "--build", str(build)], cli.main
    yield "generate", ["generate", "--build", str(build), "--drafter", "templates", "--position-questions"], cli.main
    if not args.no_labelstudio:
        yield "Label Studio", ["labelstudio", "start", "--build", str(build)], cli.main
        yield "review push", ["review", "push", "--build", str(build)], cli.main
    release = build / PREVIEW
    if release.exists():
        shutil.rmtree(release)
    yield "preview release", ["release", "--build", str(build), "--out", str(release), "--include-unreviewed"], cli.main
    yield "validate", ["validate", str(release)], cli.main
    if args.no_eval:
        return
    if importlib.util.find_spec("torch") is None:
        print("\n(skipping the evaluator: install the 'eval' extra for torch + transformers)")
        return
    from vgmed_eval import cli as eval_cli

    results = build / "eval" / "grounding"
    # The sample's COCO-style photos are the release's control files: the report's
    # medical-vs-natural curve (the paper's Figure 3) comes from the same release.
    yield "grounding", ["grounding", "--release", str(release), "--control-release", str(release),
                        "--model", args.model, "--out", str(results), "--save-maps"], eval_cli.main
    heads = build / "eval" / "heads.json"
    # the tiny model has 4 x 4 heads: the default 20 would keep them all
    yield "heads", ["heads", "--results", str(results), "--top-k", "8", "--out", str(heads)], eval_cli.main
    vqa = build / "eval" / "vqa"
    yield "VQA, baseline vs VGRefine", ["vqa", "--benchmark", "vgmed-attribute", "--data", str(release),
                                        "--model", args.model, "--vgrefine", str(heads), "--compare",
                                        "--out", str(vqa)], eval_cli.main
    yield "report", ["report", "--results", str(results), "--out", str(build / "eval" / "report"),
                     "--vqa", str(vqa)], eval_cli.main
