"""One shape for every name -> entry table of the project (source kinds, VQA benchmarks, model families).

An entry is added one way, :meth:`Registry.register`. A table may also list names with the module that
registers each: those names are known (to ``--help``, to an error's list) before anything is imported,
and :meth:`Registry.get` imports a name's module only when that name is asked for, so a mistyped name
is refused at once, with the closest known name suggested, and no heavy module is loaded for it.
That list is read from the package's own modules (:func:`declared_in`: their source, not their import),
so adding an entry is adding one module: there is no second list to keep in step.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> entries of one kind; ``what`` names the kind in messages ("source kind", "benchmark")."""

    def __init__(self, what: str, error: type[Exception] = LookupError, modules: Mapping[str, str] | None = None,
                 known: str = "known") -> None:
        self.what = what
        self.error = error  # raised for an unknown name: the caller's own error class
        self.modules = dict(modules or {})  # name -> the module that registers it (imported on demand)
        self.known = known  # how the list of names is introduced in the unknown-name message
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add (or replace) ``name``; returns ``entry`` so a module can register and keep it in one line."""
        self._entries[name] = entry
        return entry

    def names(self) -> list[str]:
        """Every known name, sorted, without importing any module."""
        return sorted({*self.modules, *self._entries})

    def __contains__(self, name: object) -> bool:
        return name in self.modules or name in self._entries

    def get(self, name: str) -> T:
        """The entry of ``name``, importing its module first if it has one; ``error`` for an unknown name."""
        if name not in self._entries:
            if name not in self.modules:
                raise self.unknown(name)
            importlib.import_module(self.modules[name])
            if name not in self._entries:
                raise LookupError(f"{self.modules[name]} does not register the {self.what} {name!r}")
        return self._entries[name]

    def unknown(self, name: str) -> Exception:
        """The error for a name that is not known: the closest known name, then every one."""
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return self.error(f"unknown {self.what} {name!r}{hint}; {self.known}: {', '.join(self.names())}")



Declarations = Callable[[str], Iterator[str]]  # the names one module's source text registers


def declared_in(package: str, folder: Path, names: Declarations) -> dict[str, str]:
    """Name -> module for every module of ``package`` (the ``.py`` files in ``folder``) whose source
    declares names as ``names`` reads them: the table of a lazy :class:`Registry`, without importing any
    (the source is read as text: a few milliseconds, where importing would load torch or pydicom)."""
    table: dict[str, str] = {}
    for path in sorted(folder.glob("*.py")):
        for name in names(path.read_text(encoding="utf-8")):
            if name in table:
                raise LookupError(f"{name!r} is registered by both {table[name]} and {package}.{path.stem}")
            table[name] = f"{package}.{path.stem}"
    return table


def calls(function: str) -> Declarations:
    """The names a module registers by calling ``function`` (e.g. ``SOURCE_KINDS.register``) at the start
    of a line of its top level, with the name written out as the first argument."""
    pattern = re.compile(rf"^{re.escape(function)}\(\s*(\"[^\"]+\"|'[^']+')", re.MULTILINE)
    return lambda source: (ast.literal_eval(m[1]) for m in pattern.finditer(source))


def class_attribute(attribute: str) -> Declarations:
    """The names a module registers as a class attribute ``attribute = "name"`` or ``attribute = ("a", "b")``
    of its top-level classes (e.g. an adapter's ``family``), written on one line."""
    pattern = re.compile(rf"^    {re.escape(attribute)} = (.+)$", re.MULTILINE)

    def names(source: str) -> Iterator[str]:
        for m in pattern.finditer(source):
            value = ast.literal_eval(m[1].split("  #")[0].strip())
            yield from (value,) if isinstance(value, str) else value

    return names
