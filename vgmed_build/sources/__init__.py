"""Source adapters: one module per dataset format, all yielding the records of :mod:`.base`."""

from __future__ import annotations

import difflib
import importlib

from vgmed_build.sources.base import SOURCE_ADAPTERS, SourceAdapter, SourceError, SourceSpec

# Every source kind and the module that registers it (base.register): adding a format is a module and a
# line here. Only the module of the kind asked for is imported, so a mistyped kind is refused at once.
ADAPTER_MODULES = {
    "nifti": "vgmed_build.sources.nifti",
    "msd": "vgmed_build.sources.nifti",
    "nnunet": "vgmed_build.sources.nifti",
    "dicom": "vgmed_build.sources.dicom",
    "images2d": "vgmed_build.sources.images2d",
    "slake": "vgmed_build.sources.slake",
    "samed2d": "vgmed_build.sources.samed2d",
    "totalsegmentator": "vgmed_build.sources.totalsegmentator",
    "coco": "vgmed_build.sources.coco",
}


def get_adapter(kind: str) -> SourceAdapter:
    """The adapter for a source kind, with a clear error listing the known kinds."""
    if kind not in ADAPTER_MODULES:
        close = difflib.get_close_matches(kind, ADAPTER_MODULES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SourceError(f"unknown source kind {kind!r}{hint}; known kinds: {', '.join(sorted(ADAPTER_MODULES))}")
    importlib.import_module(ADAPTER_MODULES[kind])
    return SOURCE_ADAPTERS[kind]


__all__ = ["ADAPTER_MODULES", "SOURCE_ADAPTERS", "SourceAdapter", "SourceError", "SourceSpec", "get_adapter"]
