"""One shape for every name -> entry table of the project (source kinds, VQA benchmarks, model families).

An entry is added one way, :meth:`Registry.register`. A table may also list names with the module that
registers each: those names are known (to ``--help``, to an error's list) before anything is imported,
and :meth:`Registry.get` imports a name's module only when that name is asked for, so a mistyped name
is refused at once, with the closest known name suggested, and no heavy module is loaded for it.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
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
