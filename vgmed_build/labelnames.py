"""Label names a question should not carry: placeholders for unnamed values, raw dataset names.

A label value that neither the files nor the sources file name is stored as ``label_<value>``, so it
is never lost; an MSD / nnU-Net ``dataset.json`` name is taken as written (``Anterior``, ``PZ``,
``whole_tumor``). Either reaches a question verbatim ("Is the label_4 shown in this image?", "Does
this scan include an Anterior?"): ingest warns about both, and the drafting lint rejects a draft
that names a placeholder.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vgmed_build.sources.base import SourceSpec

PLACEHOLDER = re.compile(r"(?<![A-Za-z0-9])label_(?P<value>\d+)(?![A-Za-z0-9])")
# Kinds whose names come verbatim from a dataset's own label table.
_VERBATIM_KINDS = {"msd": "dataset.json", "nnunet": "dataset.json"}


def placeholder(value: int) -> str:
    """The stored name of a label value nothing names."""
    return f"label_{value}"


def is_placeholder(name: str) -> bool:
    return PLACEHOLDER.fullmatch(name) is not None


def looks_raw(name: str) -> bool:
    """A name written as an identifier or a heading (capitals, digits, underscores), not as a question
    would say it: ``Anterior``, ``PZ``, ``whole_tumor``."""
    return any(c.isupper() or c.isdigit() or c == "_" for c in name)


def name_warnings(spec: SourceSpec, labels: Iterable[str]) -> list[str]:
    """Warnings for the stored labels of one source: placeholders, and raw names of a dataset's label
    table that the sources file neither renamed (``labels``) nor gave a question name (``display_names``)."""
    chosen = set(spec.labels.values()) | set(spec.display_names)
    names = sorted(set(labels) - chosen)
    out = []
    unnamed = [n for n in names if is_placeholder(n)]
    if unnamed:
        value = PLACEHOLDER.fullmatch(unnamed[0]).group("value")
        out.append(
            f"source {spec.name!r}: {len(unnamed)} label value(s) have no name and are stored as placeholders "
            f"({', '.join(unnamed)}), which questions would carry as written; name them in the sources "
            f'file\'s labels table ("{value}" = "...") and ingest again (drafting rejects placeholder names)'
        )
    table = _VERBATIM_KINDS.get(spec.kind)
    raw = [n for n in names if table and not is_placeholder(n) and looks_raw(n)]
    if raw:
        out.append(
            f"source {spec.name!r}: label names taken as written in {table} ({', '.join(raw)}) reach questions "
            "verbatim; map them to the names a clinician would use "
            f'in the sources file\'s labels table ("{raw[0]}" = "...") or display_names'
        )
    return out
