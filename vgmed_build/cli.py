"""`vgmed-build`: the dataset pipeline's command line (one module per stage, see COMMAND_MODULES)."""

from __future__ import annotations

import sys

from vgmed_build import __version__, commands

# Modules that contribute subcommands, in the order they appear in --help.
COMMAND_MODULES = [
    "vgmed_build.ingest.cli",
    "vgmed_build.drafting.cli",
    "vgmed_build.review.cli",
    "vgmed_build.release",
    "vgmed_build.validate",
    "vgmed_build.export",
    "vgmed_build.demo",
]

COMMAND_LINE = commands.CommandLine(
    "vgmed-build",
    "Build a clinician-validated VGMED visual grounding benchmark from medical segmentation datasets: "
    "ingest -> generate -> review push/pull -> release.",
    __version__,
    COMMAND_MODULES,
)
build_parser = COMMAND_LINE.build_parser
main = COMMAND_LINE.main

if __name__ == "__main__":
    sys.exit(main())
