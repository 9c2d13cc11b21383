"""Source adapters: one module per dataset format, all yielding the records of :mod:`.base`."""

from __future__ import annotations

from vgmed_build.registry import Registry
from vgmed_build.sources.base import SourceAdapter, SourceError, SourceSpec

# Every source kind and the module that registers it (``SOURCE_KINDS.register``): adding a format is a
# module and a line here. Only the module of the kind asked for is imported, so a mistyped kind is
# refused at once.
SOURCE_KINDS: Registry[SourceAdapter] = Registry("source kind", SourceError, known="known kinds", modules={
    "nifti": "vgmed_build.sources.nifti",
    "msd": "vgmed_build.sources.nifti",
    "nnunet": "vgmed_build.sources.nifti",
    "dicom": "vgmed_build.sources.dicom",
    "images2d": "vgmed_build.sources.images2d",
    "slake": "vgmed_build.sources.slake",
    "samed2d": "vgmed_build.sources.samed2d",
    "totalsegmentator": "vgmed_build.sources.totalsegmentator",
    "coco": "vgmed_build.sources.coco",
})

# The adapter for a source kind, with a clear error naming the closest and the known kinds.
get_adapter = SOURCE_KINDS.get

__all__ = ["SOURCE_KINDS", "SourceAdapter", "SourceError", "SourceSpec", "get_adapter"]
