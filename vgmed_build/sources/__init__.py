"""Source adapters: one module per dataset format, all yielding the records of :mod:`.base`."""

from __future__ import annotations

import importlib

from vgmed_build.sources.base import SOURCE_ADAPTERS, SourceAdapter, SourceError, SourceSpec

# Adding a format: write a module that calls base.register(...) and list it here.
ADAPTER_MODULES = [
    "vgmed_build.sources.nifti",
    "vgmed_build.sources.dicom",
    "vgmed_build.sources.images2d",
    "vgmed_build.sources.slake",
    "vgmed_build.sources.samed2d",
    "vgmed_build.sources.totalsegmentator",
    "vgmed_build.sources.coco",
]


def get_adapter(kind: str) -> SourceAdapter:
    """The adapter for a source kind, with a clear error listing the known kinds."""
    for name in ADAPTER_MODULES:
        importlib.import_module(name)
    if kind not in SOURCE_ADAPTERS:
        raise SourceError(f"unknown source kind {kind!r}; known kinds: {', '.join(sorted(SOURCE_ADAPTERS))}")
    return SOURCE_ADAPTERS[kind]


__all__ = ["SOURCE_ADAPTERS", "SourceAdapter", "SourceError", "SourceSpec", "get_adapter"]
