"""A release's ``manifest.json`` and the file tree it lists, as streams: a manifest lists every file
of the release (4.6 M images for SA-Med2D-20M, ~200 bytes each), so neither writing nor reading it
may hold that list. The head (everything but ``files``) is small and read whole; the ``files`` object
is written entry by entry and read entry by entry (ijson); paths are put in order in a temporary
SQLite file (:func:`sorted_unique`), never in a list.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ijson

from vgmed_build.catalog.scratch import sorted_unique
from vgmed_build.errors import VgmedError

FILES = "files"
FILE_ENTRY = ("properties", FILES, "additionalProperties")  # the schema of one entry of files
# Bytes ijson parses at a time: it turns a whole block into events before yielding the first, so its
# memory follows the block (~5x: a 64 KB block, its default, peaks at 0.6 MB; 8 KB at ~0.06 MB).
PARSE_BLOCK = 1 << 13


def walk(root: Path, prefix: str = "") -> Iterator[tuple[str, os.DirEntry]]:
    """``(relative posix path, entry)`` of everything under ``root``, in no order, one entry at a time
    (no folder's listing is held); symbolic links to folders are listed, not entered."""
    with os.scandir(root / prefix if prefix else root) as entries:
        for entry in entries:
            rel = prefix + entry.name
            yield rel, entry
            if entry.is_dir(follow_symlinks=False):
                yield from walk(root, rel + "/")


def files_in_order(root: Path) -> Iterator[str]:
    """The relative paths of the files under ``root`` in ``sorted`` order (as
    ``sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())`` gives them)."""
    return sorted_unique(rel for rel, entry in walk(root) if entry.is_file())


def write_manifest(path: Path, head: dict[str, Any], files: Iterable[tuple[str, dict[str, Any]]]) -> None:
    """Write ``json.dumps({**head, "files": dict(files)}, indent=2, ensure_ascii=False) + "\\n"``, byte
    for byte, one entry of ``files`` at a time (``files`` comes last; each entry is indented as json
    indents it: a JSON text holds no "\\n" but its own, strings escape theirs; split on "\\n" only, since
    U+2028 or U+0085 may stand unescaped in a string)."""
    opening, closing = json.dumps({**head, FILES: {}}, indent=2, ensure_ascii=False).rsplit(f'"{FILES}": {{}}', 1)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f'{opening}"{FILES}": {{')
        separator = "\n"
        for rel, entry in files:
            item = json.dumps({rel: entry}, indent=2, ensure_ascii=False)[2:-2]  # the pair, without { }
            fh.write(separator + "\n".join(f"  {line}" for line in item.split("\n")))
            separator = ",\n"
        fh.write(("\n  }" if separator == ",\n" else "}") + closing + "\n")


class _Unusual(VgmedError):
    """A manifest the streamed reading does not take (not an object, ``files`` given twice, JSON that
    only ``json.loads`` accepts such as NaN): it is read whole instead (caught here, never shown)."""


@dataclass(frozen=True)
class Manifest:
    """A manifest as ``json.loads`` reads it, except for the entries of its ``files`` object.

    ``head``: the manifest with ``files`` emptied to ``{}`` (left as it is when not an object: then
    :meth:`files` yields nothing). ``whole``: the files object when the manifest had to be read whole.
    """

    path: Path
    head: Any
    whole: dict[str, Any] | None = None

    def files(self) -> Iterator[tuple[str, Any]]:
        """The ``(path, entry)`` pairs of ``files``, in the manifest's order (a path given twice comes
        twice: keep the last, as ``json.loads`` does); ValueError when the file changed since
        :func:`read_manifest` and no longer parses."""
        if self.whole is not None:
            yield from self.whole.items()
        elif isinstance(self.head, dict) and self.head.get(FILES) == {}:
            with open(self.path, "rb") as fh:
                try:
                    yield from ijson.kvitems(fh, FILES, use_float=True, buf_size=PARSE_BLOCK)
                except ijson.JSONError as exc:  # it read as JSON a moment ago
                    raise ValueError(f"changed while it was read ({exc})") from exc


def read_manifest(path: Path) -> Manifest:
    """Read ``path``'s head in one streamed pass (the ``files`` entries are skipped, not built).

    Raises what ``json.loads(path.read_text(encoding="utf-8"))`` raises (OSError, UnicodeDecodeError,
    json.JSONDecodeError) with the same messages: a manifest the stream cannot read is read that way.
    """
    try:
        with open(path, "rb") as fh:
            return Manifest(path, _head(ijson.parse(fh, use_float=True, buf_size=PARSE_BLOCK)))
    except (ijson.JSONError, _Unusual, StopIteration, ValueError):  # ValueError: UnicodeDecodeError too
        whole = json.loads(path.read_text(encoding="utf-8"))
        files = whole.get(FILES) if isinstance(whole, dict) else None
        if not isinstance(files, dict):
            return Manifest(path, whole)
        return Manifest(path, {**whole, FILES: {}}, files)


def _head(events: Iterator[tuple[str, str, Any]]) -> dict[str, Any]:
    """The top-level object of ``events`` with the members of ``files`` skipped."""
    if next(events)[1] != "start_map":
        raise _Unusual
    head: dict[str, Any] = {}
    for _, event, key in events:
        if event == "end_map":
            break
        _, first, value = next(events)
        if key == FILES and FILES in head:
            raise _Unusual
        if key == FILES and first == "start_map":
            _skip(events)
            head[FILES] = {}
            continue
        builder = ijson.ObjectBuilder()
        builder.event(first, value)
        depth = 1 if first in ("start_map", "start_array") else 0
        while depth:
            _, event, value = next(events)
            depth += event in ("start_map", "start_array")
            depth -= event in ("end_map", "end_array")
            builder.event(event, value)
        head[key] = builder.value
    for _ in events:  # trailing text after the object is an error, as for json.loads
        raise _Unusual
    return head


def _skip(events: Iterator[tuple[str, str, Any]]) -> None:
    """Consume the events of an object whose ``start_map`` was read."""
    depth = 1
    while depth:
        event = next(events)[1]
        depth += event in ("start_map", "start_array")
        depth -= event in ("end_map", "end_array")
