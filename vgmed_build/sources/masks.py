"""Pairing 2D images with their mask files, shared by the ``images2d`` and ``dicom`` adapters.

Masks come either as one binary file per class, found by a file-name pattern (default
``masks/{stem}_{label}.png``), or as one index mask per image whose values are named by the
sources file's ``labels`` (``mask_type = "index"``, default pattern ``masks/{stem}.png``). Patterns
are relative to the source root; ``{stem}`` is the image file name without extension and
``{label}`` the class tag in the mask's file name. Single-file X-ray / ultrasound DICOM images pair
with masks the same way, which is why this lives beside the adapters rather than in one of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from vgmed_build.sources.base import BOOLEAN, INTEGER, INTEGERS, STRING, SourceError, SourceSpec
from vgmed_build.sources.files import binary_mask, read_mask, rel, sized_mask

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DEFAULT_PATTERNS = {"binary": "masks/{stem}_{label}.png", "index": "masks/{stem}.png"}
MASK_OPTION_TYPES = {
    "masks": STRING,
    "mask_type": STRING,
    "class_name": STRING,
    "binary_threshold": INTEGER,
    "skip_empty": BOOLEAN,
    "ignore_values": INTEGERS,
}


@dataclass(frozen=True)
class MaskLayout:
    """Where an image's masks live and how to read them (from the source's ``options``)."""

    pattern: str                 # relative to the source root; {stem}, and {label} for binary masks
    mode: str = "binary"         # "binary": one file per class; "index": one label map per image
    threshold: int | None = None  # binary masks: values above it are foreground (lossy JPEG masks)
    skip_empty: bool = False     # drop empty binary masks instead of failing the item
    ignore_values: tuple[int, ...] = ()  # index masks: values that are neither background nor a label
    class_name: str = ""         # binary pattern without {label}: one mask per image, of this class

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> MaskLayout:
        mode = str(options.get("mask_type", "binary"))
        if mode not in DEFAULT_PATTERNS:
            raise SourceError(f"options.mask_type must be 'binary' or 'index', not {mode!r}")
        pattern = str(options.get("masks", DEFAULT_PATTERNS[mode]))
        if "{stem}" not in pattern:
            raise SourceError(f"options.masks pattern {pattern!r} needs a {{stem}} placeholder")
        class_name = str(options.get("class_name") or "")
        if mode == "binary" and ("{label}" in pattern) == bool(class_name):
            raise SourceError(
                f"binary mask pattern {pattern!r} needs a {{label}} placeholder, or (one mask per image) "
                "no placeholder and options.class_name"
            )
        if mode == "index" and "{label}" in pattern:
            raise SourceError(f"index mask pattern {pattern!r} must not contain {{label}}")
        threshold = options.get("binary_threshold")
        return cls(
            pattern=pattern,
            mode=mode,
            threshold=None if threshold is None else int(threshold),
            skip_empty=bool(options.get("skip_empty", False)),
            ignore_values=tuple(int(v) for v in options.get("ignore_values", ())),
            class_name=class_name,
        )

    def regex(self) -> re.Pattern[str]:
        """Matches a root-relative mask path, capturing stem and label (to tell masks from images)."""
        parts = re.split(r"(\{stem\}|\{label\})", self.pattern)
        body = "".join(
            "(?P<stem>.+?)" if p == "{stem}" else "(?P<label>[^/]+)" if p == "{label}" else re.escape(p)
            for p in parts
        )
        return re.compile(body + "$")

    def finder(self, root: Path, stems: Iterable[str], tags: list[str]) -> Callable[[str], dict[str, Path]]:
        """``stem -> mask files`` of one image: ``{tag: path}`` (binary), ``{class_name: path}`` or
        ``{"": path}`` (index). Without labels the mask folder is listed once here, and each mask is
        given to the image stem it names, so the cost stays linear in the number of images."""
        if self.mode == "index" or self.class_name or tags:
            return partial(self._named, root, tags)
        index: dict[str, dict[str, Path]] = {}
        known = set(stems)
        tokens = [t for t in re.split(r"(\{stem\}|\{label\})", self.pattern) if t]
        glob = "".join("*" if t in ("{stem}", "{label}") else _glob_escape(t) for t in tokens)
        for path in sorted(root.glob(glob)):
            parts = split_mask_name(tokens, rel(path, root), known)
            if parts is not None and path.is_file():
                index.setdefault(parts[0], {})[parts[1]] = path
        return lambda stem: dict(index.get(stem, {}))

    def _named(self, root: Path, tags: list[str], stem: str) -> dict[str, Path]:
        """Masks whose names are known: the one index mask, the one class mask, or one per listed tag."""
        pattern = self.pattern.replace("{stem}", stem)
        if self.mode == "index" or self.class_name:
            path = root / pattern
            return {self.class_name: path} if path.is_file() else {}
        found = {t: root / pattern.replace("{label}", t) for t in tags}
        return {t: p for t, p in found.items() if p.is_file()}

    def describe(self) -> str:
        """The pattern as written ({stem} stays: an image's name may carry a patient's, and messages
        name the image in a field of their own, pseudonymised in shared output)."""
        return self.pattern


def split_mask_name(tokens: list[str], name: str, stems: set[str]) -> tuple[str, str] | None:
    """(stem, label) of a root-relative mask path under a pattern's tokens, or None.

    The stem must be one of the real image stems, so ``a_b_cyst.png`` under ``{stem}_{label}.png``
    belongs to image ``a_b`` (label ``cyst``), not ``a`` (label ``b_cyst``); where several images fit,
    the longest stem wins. Neither part may hold a ``/``.
    """

    def walk(i: int, pos: int, stem: str | None, label: str | None) -> Iterator[tuple[str, str]]:
        if i == len(tokens):
            if pos == len(name) and stem is not None:
                yield stem, label or ""
            return
        token = tokens[i]
        if token not in ("{stem}", "{label}"):
            if name.startswith(token, pos):
                yield from walk(i + 1, pos + len(token), stem, label)
            return
        bound = stem if token == "{stem}" else label
        if bound is not None:  # a placeholder used twice must repeat the same text
            if name.startswith(bound, pos):
                yield from walk(i + 1, pos + len(bound), stem, label)
            return
        slash = name.find("/", pos)
        for end in range(pos + 1, len(name) + 1 if slash < 0 else slash + 1):
            part = name[pos:end]
            if token == "{label}":
                yield from walk(i + 1, end, stem, part)
            elif part in stems:
                yield from walk(i + 1, end, part, label)

    return max(walk(0, 0, None, None), key=lambda sl: len(sl[0]), default=None)


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def load_masks(
    layout: MaskLayout,
    files: dict[str, Path],
    shape: tuple[int, int],
    spec: SourceSpec,
    root: Path,
    item: str,
) -> dict[str, Any]:
    """Read and check an image's masks; returns Image2D keyword arguments (masks or label map)."""
    if layout.mode == "index":
        (path,) = files.values()
        arr = sized_mask(read_mask(path, rel(path, root)), shape, rel(path, root))
        names: dict[int, str] = {}
        for value in np.unique(arr):
            v = int(value)
            if v == 0 or v in layout.ignore_values:
                continue
            if str(v) not in spec.labels:
                raise SourceError(
                    f"mask value {v} has no name in the source's labels "
                    "(map it, or list it in options.ignore_values)",
                    path=rel(path, root),
                )
            if spec.labels[str(v)]:  # a label mapped to "" is dropped
                names[v] = spec.labels[str(v)]
        dropped = [*layout.ignore_values, *(v for v in np.unique(arr) if v and int(v) not in names)]
        label_map = np.where(np.isin(arr, dropped), 0, arr).astype(np.int32)
        return {"label_map": label_map, "label_names": names}
    masks: dict[str, np.ndarray] = {}
    for tag, path in sorted(files.items()):
        name = rel(path, root)
        mask = binary_mask(sized_mask(read_mask(path, name), shape, name), name, layout.threshold)
        if not mask.any():
            if layout.skip_empty:
                continue
            raise SourceError("mask is empty (set options.skip_empty to drop empty masks)", path=name)
        label = spec.labels.get(tag, tag)
        masks[label] = masks[label] | mask if label in masks else mask
    if not masks:
        raise SourceError("every mask of this image is empty", path=item)
    return {"masks": masks}


def wanted_tags(spec: SourceSpec, layout: MaskLayout) -> list[str]:
    """Binary masks to look up by name: the labels' keys, minus those mapped to "" (dropped)."""
    if layout.mode == "index" or layout.class_name:
        return []
    return sorted(t for t, name in spec.labels.items() if name)
