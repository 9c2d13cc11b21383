"""`vgmed-build demo`: the whole chain on the bundled real sample, offline, on a laptop.

ingest (bundled MNI152 + CT/SEG sample + a small COCO-style natural-image control) -> generate
(templates) -> local Label Studio + review push -> preview release (unreviewed items, clearly
marked) -> validate -> vgmed-eval grounding with a built-in tiny random model, medical and natural
-> heads -> report plots (with the medical-vs-natural curve) -> VQA on the attribute questions,
baseline vs VGRefine. Each step is the same CLI a user runs, so the
demo doubles as a worked example; every step is idempotent, so running the demo twice is cheap.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
from pathlib import Path

from vgmed_build import cli
from vgmed_build.commands import HelpFormatter

DEFAULT_BUILD = Path("build/demo")
TINY_MODEL = "builtin:tiny-llava"
SAMPLE_SOURCES = Path(__file__).parent / "sample" / "sources.toml"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole chain on the bundled real sample data (offline)",
        description="Run ingest -> generate -> Label Studio push -> preview release -> validate -> "
        "grounding evaluation with a tiny built-in model -> report, on the bundled real sample data. "
        "Everything runs offline; the local Label Studio server keeps running so you can log in and review.",
        formatter_class=HelpFormatter,
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
    p.set_defaults(func=run)


def _step(title: str, argv: list[str], main=cli.main) -> None:
    print(f"\n=== {title}: vgmed-{'build' if main is cli.main else 'eval'} {' '.join(argv)}", flush=True)
    code = main(argv)
    if code:
        raise SystemExit(f"demo step '{title}' failed with exit code {code}")


def run(args: argparse.Namespace) -> int:
    build: Path = args.build
    _step("ingest", ["ingest", "--build", str(build), "--sources", str(SAMPLE_SOURCES)])
    _step("stats", ["stats", "--build", str(build)])
    _step("generate", ["generate", "--build", str(build), "--drafter", "templates", "--position-questions"])
    if not args.no_labelstudio:
        _step("Label Studio", ["labelstudio", "start", "--build", str(build)])
        _step("review push", ["review", "push", "--build", str(build)])
    release = build / "release-preview"
    if release.exists():
        shutil.rmtree(release)
    _step("preview release", ["release", "--build", str(build), "--out", str(release), "--include-unreviewed"])
    _step("validate", ["validate", str(release)])
    if not args.no_eval:
        if importlib.util.find_spec("torch") is None:
            print("\n(skipping the evaluator: install the 'eval' extra for torch + transformers)")
        else:
            from vgmed_eval import cli as eval_cli

            results = build / "eval" / "grounding"
            # The sample's COCO-style photos are the release's control files: the report's
            # medical-vs-natural curve (the paper's Figure 3) comes from the same release.
            _step("grounding", ["grounding", "--release", str(release), "--control-release", str(release),
                                "--model", args.model, "--out", str(results), "--save-maps"], eval_cli.main)
            heads = build / "eval" / "heads.json"
            _step("heads", ["heads", "--results", str(results), "--out", str(heads)], eval_cli.main)
            _step("report", ["report", "--results", str(results), "--out", str(build / "eval" / "report")],
                  eval_cli.main)
            _step("VQA, baseline vs VGRefine", ["vqa", "--benchmark", "vgmed-attribute", "--data", str(release),
                                                "--model", args.model, "--vgrefine", str(heads), "--compare",
                                                "--out", str(build / "eval" / "vqa")], eval_cli.main)
    print(f"\nDone. Build directory: {build.resolve()}")
    if not args.no_labelstudio:
        print(f"Drafts wait for review in Label Studio; login: `vgmed-build labelstudio status --build {build}`")
    print(f"Preview release: {release.resolve()}  (unreviewed items; a real release needs review)")
    return 0
