"""`--help` of every command of both programs is plain text: no Sphinx markup, the docstring's lists kept as lists.

Every (sub)parser of `vgmed-build` and `vgmed-eval` is built and walked as test_cli_conventions.py does,
and its help is rendered by its own formatter, as `--help` prints it.
"""

from __future__ import annotations

import re

import pytest
from test_cli_conventions import every_parser

from vgmed_build.helptext import plain, render

MARKUP = re.compile(r":[a-z]+:`|``")
ITEM = re.compile(r"^\s*(?:[-*]|\d+[.)])\s+(\S+(?: \S+)?)", re.MULTILINE)

PARSERS = list(every_parser())


@pytest.mark.parametrize("name,parser", PARSERS, ids=[name for name, _ in PARSERS])
def test_help_is_plain_text_with_its_lists(name, parser, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    text = parser.format_help()
    assert not MARKUP.search(text), f"{name} --help shows markup: {MARKUP.search(text).group(0)!r}"
    # every list item of the description starts its own line, with the words it starts with in the docstring
    for first_words in ITEM.findall(plain(parser.description or "")):
        assert re.search(rf"^\s*(?:[-*]|\d+[.)]) {re.escape(first_words)}", text, re.MULTILINE), (name, first_words)


def test_at_least_the_known_listed_descriptions_are_walked():
    described = {name for name, parser in PARSERS if ITEM.search(parser.description or "")}
    assert {"vgmed-eval report", "vgmed-eval reproduce"} <= described


def test_render_keeps_paragraphs_items_and_examples():
    doc = """Title line, with :func:`fail` and :class:`~vgmed_build.commands.HelpFormatter`.

    A paragraph that
    runs over lines and names ``--out``.

    - first item that is long enough to wrap at thirty columns
      and goes on here
    - second item
    1. numbered

        vgmed-eval grounding --release R   (an example, kept as written)
    """
    assert render(doc, 30).splitlines() == [
        "Title line, with fail and",
        "HelpFormatter.",
        "",
        "A paragraph that runs over",
        "lines and names --out.",
        "",
        "- first item that is long",
        "  enough to wrap at thirty",
        "  columns and goes on here",
        "- second item",
        "1. numbered",
        "",
        "    vgmed-eval grounding --release R   (an example, kept as written)",
    ]
