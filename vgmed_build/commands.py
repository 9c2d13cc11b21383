"""The shape both command lines share: subcommands contributed by modules, handlers returning exit codes.

Each program lists its commands in a table (name, module, one-line summary); the module exposes
``add_commands(subparsers)`` and sets ``func`` on its parsers, so adding a command touches its own module
and one table entry, and only the module of the command being run is imported. Every command reports
a failure the same way (``error: ...`` on stderr, see :func:`fail`) and exits with one of the codes
below (docs/cli.md).
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

from vgmed_build.helptext import DocstringHelpFormatter
from vgmed_build.interrupt import run_guarded

EXIT_OK = 0
EXIT_ITEM_ERRORS = 1  # the command ran; some items failed (each one reported), everything else is stored
EXIT_FAILED = 2  # the command could not run (bad arguments or input, no build, server unreachable)
EXIT_INCOMPLETE = 3  # stopped on purpose before the end (generate's budget) / the server is not running
# Libraries of the optional extras (pyproject.toml), by import name: a command that needs one names the extra.
EXTRAS = {"torch": "eval", "transformers": "eval", "accelerate": "eval", "matplotlib": "eval", "pandas": "eval",
          "datasets": "hub", "dask": "dask", "distributed": "dask"}
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


class HelpFormatter(DocstringHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Plain text from docstrings (helptext.py); shows defaults, except the uninformative None/False of unset
    options and off switches."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help uses :class:`HelpFormatter` and whose subcommands are made by
    :class:`_Subcommands`: every command of both programs, nested ones included, gets the formatter and
    the shared options without naming them."""

    def __init__(self, *args, formatter_class: type[argparse.HelpFormatter] = HelpFormatter, **kwargs) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)
        self.register("action", "parsers", _Subcommands)


def _add_shared_options(parser: argparse.ArgumentParser, default: object) -> None:
    """``-v`` and ``--no-progress``, accepted before or after any command (``default`` SUPPRESS on a
    command, so that a command parser never resets what was given before it)."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="log debug messages, with logger names, including third-party libraries' request logs",
    )
    parser.add_argument("--no-progress", action="store_true", default=default, help="hide progress bars")


class _Subcommands(argparse._SubParsersAction):
    """Subcommands that take their one-line summary from the program's command table (one place for it)
    and accept the shared options."""

    def __init__(self, *args, summaries: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.summaries = summaries or {}

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        if name in self.summaries:
            if "help" in kwargs:
                raise TypeError(f"the summary of command {name!r} belongs in the program's command table")
            kwargs["help"] = self.summaries[name]
        parser = super().add_parser(name, **kwargs)
        _add_shared_options(parser, argparse.SUPPRESS)
        return parser


def add_build_arg(p: argparse.ArgumentParser, help: str = "build directory (holds catalog.sqlite)") -> None:
    """The ``--build DIR`` option every build command takes."""
    p.add_argument("--build", required=True, type=Path, metavar="DIR", help=help)


@dataclass(frozen=True)
class Command:
    """A top-level command: its name, the module whose ``add_commands(subparsers)`` adds it, its summary
    (shown by the program's ``--help`` without importing the module)."""

    name: str
    module: str
    summary: str


def build_parser(
    prog: str, description: str, version: str, commands: tuple[Command, ...], modules: list[str] | None = None
) -> argparse.ArgumentParser:
    """The program's parser with the commands of ``modules`` (default: every command's module) in full;
    any other command is listed by its summary only, so building it imports nothing heavy."""
    parser = CommandParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"{prog} {version}")
    _add_shared_options(parser, False)
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, summaries={c.name: c.summary for c in commands}
    )
    for name in modules if modules is not None else dict.fromkeys(c.module for c in commands):
        importlib.import_module(name).add_commands(sub)
    for command in commands:
        if command.name not in sub.choices:
            sub.add_parser(command.name)  # listed in --help; never run (its module was not asked for)
    return parser


@dataclass(frozen=True)
class CommandLine:
    """One program (`vgmed-build`, `vgmed-eval`): its name, --help text, version and command table."""

    prog: str
    description: str
    version: str
    commands: tuple[Command, ...]

    def build_parser(self, argv: list[str] | None = None) -> argparse.ArgumentParser:
        """The parser with every command in full, or, given ``argv``, with only the module of the command
        it names imported: ``--help`` and a typo answer at once, without torch, nibabel or pydicom."""
        if argv is None:
            return build_parser(self.prog, self.description, self.version, self.commands)
        word = next((a for a in argv if not a.startswith("-")), None)  # top-level options take no value
        modules = [c.module for c in self.commands if c.name == word]
        return build_parser(self.prog, self.description, self.version, self.commands, modules)

    def main(self, argv: list[str] | None = None) -> int:
        """Run the command ``argv`` names (default: the process's arguments); returns its exit code.

        A command whose libraries come with an extra that is not installed says which one to install."""
        argv = sys.argv[1:] if argv is None else argv
        try:
            return run(self.build_parser(argv), argv)
        except ModuleNotFoundError as exc:
            extra = EXTRAS.get((exc.name or "").split(".")[0])
            if extra is None:
                raise
            command = next((a for a in argv if not a.startswith("-")), "")
            return fail(f"{self.prog} {command} needs {exc.name}, which comes with the {extra!r} extra: "
                        f"pip install 'vgmed[{extra}]'")


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
    return run_guarded(args.func, args)  # Ctrl-C, SIGTERM, a full disk: one line and the resume hint
