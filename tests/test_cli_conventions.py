"""Every command of `vgmed-build` and `vgmed-eval` follows the conventions of docs/cli.md.

Both real parsers are built and every (sub)parser is walked: each uses the shared help formatter,
each option and subcommand says what it is for, and each command's handler is ``cmd_<command>``
(``cmd_<group>_<sub>`` under a group, dashes as underscores). Each handler's source is then read
with ``ast``: none ends the process itself (``raise SystemExit``, ``sys.exit``) or reports its
failure with ``log.error``; a failure is ``return commands.fail(message, code)``, so that every command
reports it the same way, and every exit code is one of ``commands.EXIT_*``, by name.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from vgmed_build import cli as build_cli
from vgmed_build import commands
from vgmed_eval import cli as eval_cli

PARSERS = {"vgmed-build": build_cli.build_parser, "vgmed-eval": eval_cli.build_parser}
UNDOCUMENTED = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


Walked = Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Walked:
    """(command path, parser) for the parser and every subparser below it, aliases once."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield from walk(sub, (*path, name))


def subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def every_parser() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for prog, build in PARSERS.items():
        for path, parser in walk(build()):
            yield " ".join((prog, *path)), parser


def handlers() -> dict[str, object]:
    """Command line -> its handler, for every parser that runs something (not a group)."""
    out = {}
    for prog, build in PARSERS.items():
        for path, parser in walk(build()):
            name = " ".join((prog, *path))
            if path and subcommands(parser) is None:
                out[name] = (path, parser.get_default("func"))
    return out


def test_every_parser_uses_the_shared_help_formatter():
    wrong = [name for name, parser in every_parser() if parser.formatter_class is not commands.HelpFormatter]
    assert not wrong, f"parsers without formatter_class=commands.HelpFormatter: {wrong}"


def test_every_option_and_subcommand_has_help():
    missing = []
    for name, parser in every_parser():
        for action in parser._actions:
            if not isinstance(action, UNDOCUMENTED) and not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
        sub = subcommands(parser)
        if sub is not None:
            missing += [f"{name} {choice.dest}" for choice in sub._choices_actions if not choice.help]
    assert not missing, f"options or subcommands without help text: {missing}"


def test_every_handler_is_named_after_its_command():
    wrong = []
    for name, (path, func) in handlers().items():
        expected = "cmd_" + "_".join(path).replace("-", "_")
        if getattr(func, "__name__", None) != expected:
            wrong.append(f"{name}: {getattr(func, '__qualname__', func)!r}, expected {expected}")
    assert not wrong, f"handlers not named cmd_<command>: {wrong}"


def _bare_exit_code(node: ast.AST) -> bool:
    """``return 0`` / ``return 1 if ... else 0``: a number where ``commands.EXIT_*`` names the meaning."""
    if not isinstance(node, ast.Return) or node.value is None:
        return False
    values = [node.value.body, node.value.orelse] if isinstance(node.value, ast.IfExp) else [node.value]
    return any(isinstance(v, ast.Constant) and type(v.value) is int for v in values)


def _reports_failure_its_own_way(node: ast.AST) -> bool:
    """``raise SystemExit(...)``, a call of ``sys.exit`` / ``exit`` / ``quit``, or ``log.error(...)``."""
    if isinstance(node, ast.Raise) and node.exc is not None:
        exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
        return isinstance(exc, ast.Name) and exc.id == "SystemExit"
    if isinstance(node, ast.Call):
        f = node.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
            return (f.value.id, f.attr) in {("sys", "exit"), ("log", "error"), ("logger", "error"),
                                            ("logging", "error")}
        return isinstance(f, ast.Name) and f.id in ("exit", "quit")
    return False


@pytest.mark.parametrize("command", sorted(handlers()))
def test_every_handler_fails_through_commands_fail(command):
    _, func = handlers()[command]
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    found = [f"line {node.lineno}" for node in ast.walk(tree) if _reports_failure_its_own_way(node)]
    assert not found, f"{command}: {func.__module__}.{func.__name__} exits or logs an error instead of returning " \
                      f"commands.fail(...) ({', '.join(found)} of the function)"
    bare = [f"line {node.lineno}" for node in ast.walk(tree) if _bare_exit_code(node)]
    assert not bare, f"{command}: {func.__module__}.{func.__name__} returns a bare number instead of a " \
                     f"commands.EXIT_* code ({', '.join(bare)} of the function)"


# An environment variable read in the code: os.environ.get("X"), env.get("X"), a constant X_ENV = "X".
_ENV_READ = re.compile(r"""(?:environ|env)\.get\(\s*["']([A-Z][A-Z0-9_]+)["']|_ENV\s*=\s*["']([A-Z][A-Z0-9_]+)["']""")


def test_every_environment_variable_the_code_reads_is_in_the_docs_table():
    root = Path(__file__).resolve().parents[1]
    read = set()
    for folder in (root / "vgmed_build", root / "eval" / "vgmed_eval"):
        for path in folder.rglob("*.py"):
            read |= {a or b for a, b in _ENV_READ.findall(path.read_text(encoding="utf-8"))}
    table = (root / "docs" / "cli.md").read_text(encoding="utf-8").split("## Environment variables", 1)[1]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table.split("\n## ", 1)[0]))
    assert {"OPENAI_API_KEY", "LABEL_STUDIO_URL", "VGMED_LABELSTUDIO_WORKERS", "RANK"} <= read  # the scan works
    assert read - documented == set()
