"""`vgmed-eval`: the evaluator's command line (grounding, heads, report, vqa).

Each command lives in its own module exposing ``register(subparsers)``; handlers return an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from vgmed_eval import __version__

COMMAND_MODULES = [
    "vgmed_eval.grounding",
    "vgmed_eval.heads",
    "vgmed_eval.report",
    "vgmed_eval.vqa.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vgmed-eval",
        description="Evaluate where multimodal LLMs look on a VGMED release (grounding metrics per layer "
        "and head), pick visually sensitive heads, and run medical VQA with and without VGRefine.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vgmed-eval {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # TODO(lead): drop once every command module exists
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
