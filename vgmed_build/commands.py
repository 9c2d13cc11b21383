"""The shape both command lines share: subcommands contributed by modules, handlers returning exit codes.

Each listed module exposes ``register(subparsers)`` and sets ``func`` on its parsers, so adding a
command touches its own module and one list.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from pathlib import Path


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the uninformative None/False of unset options and off switches."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def add_build_arg(p: argparse.ArgumentParser, help: str = "build directory (holds catalog.sqlite)") -> None:
    """The ``--build DIR`` option every build command takes."""
    p.add_argument("--build", required=True, type=Path, metavar="DIR", help=help)


def build_parser(prog: str, description: str, version: str, modules: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"{prog} {version}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def run(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv``, set up logging, and return the chosen handler's exit code."""
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args) or 0)
