"""`vgmed-eval`: the evaluator's command line (grounding, heads, report, vqa, convert, reproduce)."""

from __future__ import annotations

import argparse
import sys

from vgmed_eval import __version__

from vgmed_build import commands

COMMAND_MODULES = [
    "vgmed_eval.grounding",
    "vgmed_eval.heads",
    "vgmed_eval.report",
    "vgmed_eval.vqa.cli",
    "vgmed_eval.convert",
    "vgmed_eval.reproduce",
]


def build_parser() -> argparse.ArgumentParser:
    return commands.build_parser(
        "vgmed-eval",
        "Evaluate where multimodal LLMs look on a VGMED release (grounding metrics per layer and head), "
        "pick visually sensitive heads, and run medical VQA with and without VGRefine.",
        __version__,
        COMMAND_MODULES,
    )


def main(argv: list[str] | None = None) -> int:
    return commands.run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
