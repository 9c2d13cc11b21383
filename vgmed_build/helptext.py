"""`--help` text from docstrings: plain text for a terminal, paragraphs and lists kept.

A command's description is its module's docstring, written for readers of the source: Sphinx roles
(:func:`fail`), ``literals`` and bullet lists. argparse prints markup as it is and runs every list
into one paragraph; the formatter here strips the markup (in option help too) and keeps paragraphs,
list items (with a hanging indent) and indented lines (command examples) as they are written.
"""

from __future__ import annotations

import argparse
import inspect
import re
import textwrap

_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`(~?)([^`]+)`")  # :func:`x`, :py:class:`~a.b`
_LITERAL = re.compile(r"``(.+?)``")
_ITEM = re.compile(r"(\s*)([-*+•]|\d+[.)])\s+(.*)")
VERBATIM_INDENT = 4  # lines indented this much more than the text around them are shown as written


def plain(text: str) -> str:
    """Sphinx roles and ``literals`` as the bare words: :func:`fail` -> fail, :class:`~a.B` -> B, ``--out`` -> --out."""
    text = _ROLE.sub(lambda m: m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2), text)
    return _LITERAL.sub(r"\1", text)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def render(text: str, width: int, indent: str = "") -> str:
    """``text`` (a docstring) as plain text ``width`` columns wide: each paragraph filled, each list item
    on its own line(s) with a hanging indent, blank lines and more deeply indented lines kept."""
    out: list[str] = []
    block: list[str] = []  # words of the paragraph or item being read
    lead = ""  # the current item's first-line prefix ("- ") or "" for a paragraph
    pad = ""  # the current item's indentation

    def flush() -> None:
        if block:
            out.append(textwrap.fill(" ".join(block), max(width, 20), initial_indent=indent + pad + lead,
                                     subsequent_indent=indent + pad + " " * len(lead)))
            block.clear()

    for line in inspect.cleandoc(plain(text)).splitlines():
        item = _ITEM.fullmatch(line)
        if not line.strip():
            flush()
            out.append("")
        elif item:
            flush()
            pad, lead = item.group(1), item.group(2) + " "
            block.append(item.group(3))
        elif _indent(line) >= len(pad) + len(lead) + VERBATIM_INDENT or (not block and _indent(line) > len(pad)):
            flush()
            out.append(indent + line.rstrip())
        else:
            if not block:
                pad, lead = "", ""
            block.append(line.strip())
    flush()
    return "\n".join(out).strip("\n")


class DocstringHelpFormatter(argparse.HelpFormatter):
    """Descriptions rendered by :func:`render`, option help without markup."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return render(text, width, indent)

    def _expand_help(self, action: argparse.Action) -> str:
        return plain(super()._expand_help(action))
