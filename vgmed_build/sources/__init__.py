"""Source adapters: one module per dataset format, all yielding the records of :mod:`.base`."""

from __future__ import annotations

from pathlib import Path

from vgmed_build.registry import Registry, calls, declared_in
from vgmed_build.sources.base import SourceAdapter, SourceError, SourceSpec

# Every source kind and the module that registers it (a line ``SOURCE_KINDS.register("kind", adapter)`` at
# the module's top level), read from the modules' source: adding a format is adding its module. Only the module
# of the kind asked for is imported, so a mistyped kind is refused at once.
SOURCE_KINDS: Registry[SourceAdapter] = Registry(
    "source kind", SourceError, known="known kinds",
    modules=declared_in(__name__, Path(__file__).parent, calls("SOURCE_KINDS.register")),
)

# The adapter for a source kind, with a clear error naming the closest and the known kinds.
get_adapter = SOURCE_KINDS.get

__all__ = ["SOURCE_KINDS", "SourceAdapter", "SourceError", "SourceSpec", "get_adapter"]
