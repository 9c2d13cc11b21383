"""`vgmed-build`: the dataset pipeline's command line.

Each stage lives in its own module and registers its subcommands here through a
``register(subparsers)`` function; a subcommand's handler takes the parsed arguments and returns
the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from vgmed_build import __version__

# Modules that contribute subcommands, in the order they appear in --help.
COMMAND_MODULES = [
    "vgmed_build.ingest",
    "vgmed_build.drafting.cli",
    "vgmed_build.review.cli",
    "vgmed_build.release",
    "vgmed_build.demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vgmed-build",
        description="Build a clinician-validated VGMED visual grounding benchmark from medical "
        "segmentation datasets: ingest -> generate -> review push/pull -> release.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vgmed {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # TODO(lead): drop once every stage module exists
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
