"""What every source adapter yields, so the rest of ingest never knows the file format.

An adapter lists :class:`SourceItem` s (one unit of work each: a volume + label map, a DICOM series +
SEG/RTSTRUCT, a 2D image + masks). Loading an item gives either a :class:`Volume` (3D, with a
voxel -> world affine in RAS millimetres) or an :class:`Image2D` (pixels as they are, no geometry).
Adapters raise :class:`SourceError` with a message naming the file and what is wrong; the ingest
driver stores it as an error record and goes on with the next item.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vgmed_build.errors import VgmedError


class SourceError(VgmedError, ValueError):
    """A problem with one source file or item: ``path: problem``.

    ``path`` (the file or folder it is about, as the user names it) and ``item`` (the key of the item
    it belongs to; default ``path``) are fields, so output meant to be shared shows a pseudonym in
    their place: a message's text is never searched for a name, which would miss or mangle it.
    """

    def __init__(self, problem: str, path: str | Path | None = None, item: str | None = None) -> None:
        self.problem = problem
        self.path = escaped_name(str(path)) if path is not None else ""
        self.item = item if item is not None else self.path
        super().__init__(f"{self.path}: {problem}" if self.path else problem)

    def __reduce__(self) -> tuple:  # pickled by worker processes: keep the fields
        return type(self), (self.problem, self.path or None, self.item)


class ItemSkipped(Exception):
    """An item read correctly whose every structure the source's options leave out (too small, too
    large, crowd only). Expected with real data (thousands of COCO images), so the item is skipped and
    counted by ``reason``, not reported as an error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def escaped_name(text: str) -> str:
    """``text`` with the bytes of a non-UTF-8 file name shown as ``\\xNN`` (storable, printable).

    Python gives such names as lone surrogates, which SQLite, JSON files and UTF-8 output refuse.
    """
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


_UID_LIKE = re.compile(r"\d+(\.\d+){3,}")
# An absolute path, or the rest of one whose known start was already replaced (``<path>/sub/x.png``).
_ABSOLUTE_PATH = re.compile(r"(?:<path>)?(?<![\w.~:/-])/[^\s'\"]+")


def safe_message(exc: BaseException, typed: bool = True, paths: tuple[Path, ...] = ()) -> str:
    """A library's error message fit for an error record that may be shared: ``paths`` (the item's
    files and folder, whose names may carry a patient's; replaced first, as they may hold spaces), then
    any other absolute path, by ``<path>``, and UID-like strings by ``<uid>``; 200 characters at most.
    An error's file is a field of the error, not in its text."""
    text = f"{type(exc).__name__}: {exc}" if typed else str(exc)
    for path in sorted({str(p) for p in paths} | {str(p.resolve()) for p in paths}, key=len, reverse=True):
        text = text.replace(path, "<path>")
    return _UID_LIKE.sub("<uid>", _ABSOLUTE_PATH.sub("<path>", text))[:200]


def name_problem(item: SourceItem) -> SourceError | None:
    """The error of an item whose key or input file names are not UTF-8 (None when they all are).

    Such an item is refused by name rather than half-stored: its key would be stored in the
    catalog, shown to reviewers and written to logs.
    """
    for name in (item.key, *(path.name for path in item.files)):
        if escaped_name(name) != name:
            return SourceError(
                f"file or folder name '{escaped_name(name)}' is not valid UTF-8 "
                "(its bytes are shown as \\xNN); rename it",
                path=escaped_name(item.key),
            )
    return None


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
    """A 2D image rendered as it is (no world geometry, so side is 'unknown').

    ``instances`` (object datasets such as COCO): one mask per annotated object of a label. Each object
    gives one box, measured on the rendered (possibly enlarged) mask like every other box, and these
    replace the boxes of the union mask's connected components (touching objects stay separate).
    Adapters give masks, never boxes: a box measured at the source's scale would not follow the image.
    """

    pixels: np.ndarray                         # (H, W) or (H, W, 3) uint8
    modality: str
    label_map: np.ndarray | None = None        # (H, W) non-negative integers
    label_names: dict[int, str] = field(default_factory=dict)
    masks: dict[str, np.ndarray] | None = None  # label name -> (H, W) bool
    instances: dict[str, list[np.ndarray]] = field(default_factory=dict)  # label -> (H, W) bool per object
    categories: dict[str, str] = field(default_factory=dict)        # label -> category from the data
    # Labels annotated in the image without a usable mask (COCO crowds, specks): present all the same,
    # so never asked about as absent.
    unmasked: list[str] = field(default_factory=list)


@dataclass
class SourceItem:
    """One unit of ingest work. ``key`` is relative to the source root and never holds header data."""

    key: str
    files: list[Path]                          # inputs, hashed into the resume fingerprint
    load: Callable[[], Volume | Image2D]
    extra: str = ""                            # the item's data inside a shared file (COCO), fingerprinted too


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The longest side a rendered image may have: a slice resampled to a tiny pixel size (or enlarged
# towards min_side_px from an extreme aspect ratio) would otherwise allocate without bound.
MAX_SIDE_PX = 8192

# The types a source kind's own options may have, each with its check (TOML "false" is a string, not
# a boolean: a string never passes for a boolean or a number).
OPTION_TYPES: dict[str, Callable[[Any], bool]] = {
    "a string": lambda v: isinstance(v, str),
    "a boolean (true or false, unquoted)": lambda v: isinstance(v, bool),
    "an integer": _is_int,
    "a number": lambda v: _is_int(v) or (isinstance(v, float) and math.isfinite(v)),  # not NaN / inf
    "a list of strings": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "a list of integers": lambda v: isinstance(v, list) and all(_is_int(x) for x in v),
}
STRING, BOOLEAN, INTEGER, NUMBER, STRINGS, INTEGERS = OPTION_TYPES


class SourceAdapter(Protocol):
    """The contract of a source kind, declared once: its name, its own options and their types (the
    sources file is checked against them: see ``config.normalise_options``), and how to list items.
    Register an instance with ``sources.SOURCE_KINDS.register(kind, adapter)``; ``sources.get_adapter(kind)``
    finds it."""

    kind: str
    option_types: dict[str, str]  # the kind's own option names -> a key of OPTION_TYPES

    def items(self, spec: SourceSpec) -> Iterator[SourceItem | SourceError]:
        """List the items of a source; unusable entries come back as SourceError values."""
        ...
