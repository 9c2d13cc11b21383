"""What every source adapter yields, so the rest of ingest never knows the file format.

An adapter lists :class:`SourceItem` s (one unit of work each: a volume + label map, a DICOM series +
SEG/RTSTRUCT, a 2D image + masks). Loading an item gives either a :class:`Volume` (3D, with a
voxel -> world affine in RAS millimetres) or an :class:`Image2D` (pixels as they are, no geometry).
Adapters raise :class:`SourceError` with a message naming the file and what is wrong; the ingest
driver stores it as an error record and goes on with the next item.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class SourceError(ValueError):
    """A problem with one source file or item; the message names the file and the problem."""


@dataclass
class SourceSpec:
    """One entry of the sources file (or one ``--source KIND:PATH`` flag)."""

    name: str
    kind: str
    path: Path
    modality: str | None = None          # e.g. CT, MRI, PET, X-ray, Ultrasound, Endoscopy, Dermoscopy, Fundus
    body_part: str = ""
    labels: dict[str, str] = field(default_factory=dict)         # raw label (value or file tag) -> label name
    display_names: dict[str, str] = field(default_factory=dict)  # label name -> name used in questions
    synonyms: dict[str, list[str]] = field(default_factory=dict)  # label name -> accepted synonyms
    categories: dict[str, str] = field(default_factory=dict)      # label name -> organ / lesion / tissue / ...
    dataset: str = ""
    licence: str = ""
    options: dict[str, Any] = field(default_factory=dict)         # rendering / selection options, see ingest docs


@dataclass
class Volume:
    """A 3D image with its labels, in world space (RAS+, millimetres) through ``affine``.

    Exactly one of ``label_map`` (integer map, names in ``label_names``) or ``masks`` (possibly
    overlapping boolean masks by label name, e.g. DICOM SEG segments or RTSTRUCT ROIs) is set.
    """

    image: np.ndarray                          # (I, J, K) float32 intensities
    affine: np.ndarray                         # (4, 4) voxel index -> RAS mm
    modality: str
    label_map: np.ndarray | None = None        # (I, J, K) non-negative integers, 0 = background
    label_names: dict[int, str] = field(default_factory=dict)
    masks: dict[str, np.ndarray] | None = None  # label name -> (I, J, K) bool


@dataclass
class Image2D:
    """A 2D image rendered as it is (no world geometry, so side is 'unknown')."""

    pixels: np.ndarray                         # (H, W) or (H, W, 3) uint8
    modality: str
    label_map: np.ndarray | None = None        # (H, W) non-negative integers
    label_names: dict[int, str] = field(default_factory=dict)
    masks: dict[str, np.ndarray] | None = None  # label name -> (H, W) bool


@dataclass
class SourceItem:
    """One unit of ingest work. ``key`` is relative to the source root and never holds header data."""

    key: str
    files: list[Path]                          # inputs, hashed into the resume fingerprint
    load: Callable[[], Volume | Image2D]


class SourceAdapter(Protocol):
    kind: str

    def items(self, spec: SourceSpec) -> Iterator[SourceItem | SourceError]:
        """List the items of a source; unusable entries come back as SourceError values."""
        ...


ADAPTERS: dict[str, SourceAdapter] = {}


def register(adapter: SourceAdapter) -> SourceAdapter:
    """Register a source adapter under its ``kind`` (used by ``--source KIND:PATH``)."""
    ADAPTERS[adapter.kind] = adapter
    return adapter
