"""The shape both command lines share: subcommands contributed by modules, handlers returning exit codes.

Each listed module exposes ``register(subparsers)`` and sets ``func`` on its parsers, so adding a
command touches its own module and one list. Every command reports a failure the same way (``error:
...`` on stderr, see :func:`fail`) and exits with one of the codes below (docs/cli.md).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

EXIT_OK = 0
EXIT_ITEM_ERRORS = 1  # the command ran; some items failed (each one reported), everything else is stored
EXIT_FAILED = 2  # the command could not run (bad arguments or input, no build, server unreachable)
EXIT_INCOMPLETE = 3  # stopped on purpose before the end (generate's budget) / the server is not running
OWN_LOGGERS = ("vgmed_build", "vgmed_eval", "__main__")
_HEARING: list[list[str]] = []  # open :func:`failures` blocks


def fail(message: str, code: int = EXIT_FAILED) -> int:
    """Print ``error: message`` on stderr and return ``code``: the one way a command reports failure."""
    print(f"error: {message}", file=sys.stderr)
    for heard in _HEARING:
        heard.append(message)
    return code


@contextlib.contextmanager
def failures() -> Iterator[list[str]]:
    """The messages :func:`fail` reports inside the block, in order: a command that runs other commands
    (``vgmed-eval reproduce``) names why one of them failed."""
    heard: list[str] = []
    _HEARING.append(heard)
    try:
        yield heard
    finally:
        _HEARING.remove(heard)


class _OwnInfoFilter(logging.Filter):
    """INFO and DEBUG lines from vgmed only: third-party request logs (httpx, SDKs) need --verbose."""

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name.split(".")[0] in OWN_LOGGERS
        return own or record.levelno >= logging.WARNING


class _Formatter(logging.Formatter):
    """``error: ...`` / ``warning: ...`` as :func:`fail` prints, plain text for progress messages."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the uninformative None/False of unset options and off switches."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help uses :class:`HelpFormatter`. ``add_subparsers`` makes its
    subcommands (and theirs) of the parser's own class, so every command of both programs gets the
    formatter without naming it."""

    def __init__(self, *args, formatter_class: type[argparse.HelpFormatter] = HelpFormatter, **kwargs) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


def add_build_arg(p: argparse.ArgumentParser, help: str = "build directory (holds catalog.sqlite)") -> None:
    """The ``--build DIR`` option every build command takes."""
    p.add_argument("--build", required=True, type=Path, metavar="DIR", help=help)


def build_parser(prog: str, description: str, version: str, modules: list[str]) -> argparse.ArgumentParser:
    parser = CommandParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"{prog} {version}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log debug messages, with logger names, including third-party libraries' request logs",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


@dataclass(frozen=True)
class CommandLine:
    """One program (`vgmed-build`, `vgmed-eval`): its name, --help text, version and command modules."""

    prog: str
    description: str
    version: str
    modules: list[str]

    def build_parser(self) -> argparse.ArgumentParser:
        return build_parser(self.prog, self.description, self.version, self.modules)

    def main(self, argv: list[str] | None = None) -> int:
        """Run the command ``argv`` names (default: the process's arguments); returns its exit code."""
        return run(self.build_parser(), argv)


def run(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv``, set up logging, and return the chosen handler's exit code."""
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    if args.verbose:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(_Formatter("%(message)s"))
        handler.addFilter(_OwnInfoFilter())
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    return int(args.func(args) or 0)
