"""`vgmed-eval`: the evaluator's command line (grounding, heads, report, vqa, convert, reproduce)."""

from __future__ import annotations

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

COMMAND_LINE = commands.CommandLine(
    "vgmed-eval",
    "Evaluate where multimodal LLMs look on a VGMED release (grounding metrics per layer and head), "
    "pick visually sensitive heads, and run medical VQA with and without VGRefine.",
    __version__,
    COMMAND_MODULES,
)
build_parser = COMMAND_LINE.build_parser
main = COMMAND_LINE.main

if __name__ == "__main__":
    sys.exit(main())
