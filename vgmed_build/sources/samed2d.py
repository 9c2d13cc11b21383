"""The SA-Med2D-20M layout (Ye et al. 2023, the ``SAMed2Dv1`` folder of the released archive).

    <root>/SAMed2D_v1.json                   {"images/<stem>.png": ["masks/<stem>--<cls>_<inst>.png", ...]}
    <root>/SAMed2D_v1_class_mapping_id.json  {"<dataset>": {"<class name>": <class id>, ...}, ...}
    <root>/images/<modality>--<dataset>--<case>--<axis>_<slice>.png
    <root>/masks/<image stem>--<class:04d>_<instance:03d>.png     one binary (0/255) mask per instance

(the two JSON files may also sit in ``<root>/annotations/``). An image name has four ``--`` parts:
modality (``ct_00``, ``mr_t1``, ``pet_00``, ``ultrasound_00``, ``x_ray``, ``endoscopy_00``,
``dermoscopy_00``, ``fundus_photography``, ...), source dataset, case, and slice axis + index. A
mask adds the class id (the value in the class mapping of that dataset) and the instance number.
All instances of one class are merged into one structure (several boxes per question, as VGMED).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from vgmed_build import modality as modalities
from vgmed_build.sources import SOURCE_KINDS
from vgmed_build.sources.base import BOOLEAN, STRINGS, Image2D, SourceError, SourceItem, SourceSpec
from vgmed_build.sources.files import binary_mask, inside, read_image, read_json, read_mask, rel, sized_mask

INDEX_FILE = "SAMed2D_v1.json"
CLASS_FILE = "SAMed2D_v1_class_mapping_id.json"


@dataclass(frozen=True)
class ImageName:
    modality: str      # e.g. "mr_t1"
    dataset: str
    case: str
    slice: str         # e.g. "x_0040"


def parse_image_name(stem: str) -> ImageName:
    parts = stem.split("--")
    if len(parts) != 4:
        raise ValueError(f"expected <modality>--<dataset>--<case>--<axis>_<slice>, got {len(parts)} parts")
    return ImageName(*parts)


def parse_mask_name(stem: str) -> tuple[str, int, int]:
    """-> (image stem, class id, instance number)."""
    image_stem, sep, tail = stem.rpartition("--")
    cls, sep2, inst = tail.partition("_")
    if not sep or not sep2 or not cls.isdigit() or not inst.isdigit():
        raise ValueError("expected <image stem>--<class>_<instance>")
    return image_stem, int(cls), int(inst)


def class_names(mapping: Any) -> dict[str, dict[int, str]]:
    """dataset -> {class id: class name}; accepts name -> id and id -> name tables."""
    out: dict[str, dict[int, str]] = {}
    for dataset, table in (mapping or {}).items():
        if not isinstance(table, dict):
            continue
        names: dict[int, str] = {}
        for k, v in table.items():
            if str(v).lstrip("-").isdigit() and not str(k).isdigit():
                names[int(v)] = str(k)
            elif str(k).isdigit():
                names[int(k)] = str(v)
        out[str(dataset)] = names
    return out


def _find(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / "annotations" / name):
        if candidate.is_file():
            return candidate
    return None


class SAMed2DAdapter:
    """``kind = "samed2d"``: one item per image listed in ``SAMed2D_v1.json``."""

    kind = "samed2d"
    option_types = {"datasets": STRINGS, "modalities": STRINGS, "skip_empty": BOOLEAN}

    def items(self, spec: SourceSpec) -> Iterator[SourceItem | SourceError]:
        root = Path(spec.path)
        index_path = _find(root, INDEX_FILE)
        if index_path is None:
            yield SourceError(f"not an SA-Med2D folder ({INDEX_FILE} not found)", path=root.name)
            return
        try:
            class_path = _find(root, CLASS_FILE)
            names = class_names(read_json(class_path, root)) if class_path else {}
        except SourceError as exc:
            yield exc
            return
        datasets = {str(d) for d in spec.options.get("datasets") or []}
        codes = {str(m) for m in spec.options.get("modalities") or []}
        for image_rel, mask_rels in index_entries(index_path, root):
            image = inside(root, image_rel)
            if image is None:
                yield SourceError(f"listed in {INDEX_FILE} but leaves the source folder; not read", path=image_rel)
                continue
            try:
                info = parse_image_name(Path(image_rel).stem)
            except ValueError as exc:
                yield SourceError(f"{exc}", path=image_rel)
                continue
            if datasets and info.dataset not in datasets or codes and info.modality not in codes:
                continue
            if not image.is_file():
                yield SourceError(f"image listed in {INDEX_FILE} but not found", path=image_rel)
                continue
            if not isinstance(mask_rels, list) or not all(isinstance(m, str) for m in mask_rels):
                yield SourceError(f"its entry in {INDEX_FILE} is not a list of mask paths", path=image_rel)
                continue
            outside = [m for m in mask_rels if inside(root, m) is None]
            if outside:
                yield SourceError(f"mask {outside[0]!r} of its entry in {INDEX_FILE} leaves the source folder; "
                                  "not read", path=image_rel)
                continue
            masks = [root / m for m in mask_rels]
            missing = [rel(m, root) for m in masks if not m.is_file()]
            if missing or not masks:
                yield SourceError("mask file not found", path=missing[0] if missing else image_rel)
                continue
            yield SourceItem(
                key=image_rel,
                files=[image, *masks],
                load=partial(_load, spec, root, image, masks, info, names.get(info.dataset, {})),
            )


def index_entries(path: Path, root: Path) -> Iterator[tuple[str, Any]]:
    """(image path, its mask list) of every entry of the index, in file order, read as a stream.

    SA-Med2D-20M's index lists 4.6 M images (several GB of JSON): parsed incrementally (ijson), it
    costs the memory of one entry, not of the whole file. A file that is not a JSON object, or that
    breaks off, raises :class:`SourceError` naming it: the listing stops there (and ingest then
    withdraws nothing, since what the rest of the file lists is unknown).
    """
    import ijson

    name = rel(path, root)
    try:
        with open(path, "rb") as fh:
            head = fh.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
            if not head.startswith(b"{"):
                raise SourceError("expected an object mapping images to mask lists", path=name)
            fh.seek(0)
            yield from ijson.kvitems(fh, "", use_float=True)
    except ijson.JSONError as exc:
        raise SourceError(f"cannot read JSON ({exc})", path=name) from None
    except OSError as exc:
        raise SourceError(f"cannot read JSON ({exc.strerror or exc})", path=name) from None


def _label(spec: SourceSpec, cls: int, raw: str | None) -> str | None:
    """The sources file's labels may name a class by id ("3" or "0003") or rename its class name."""
    for key in (str(cls), f"{cls:04d}", raw):
        if key is not None and key in spec.labels:
            return spec.labels[key]
    return raw


def _load(
    spec: SourceSpec, root: Path, image: Path, masks: list[Path], info: ImageName, classes: dict[int, str]
) -> Image2D:
    pixels = read_image(image, rel(image, root))
    shape = pixels.shape[:2]
    merged: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(shape, dtype=bool))
    for path in masks:
        name = rel(path, root)
        try:
            stem, cls, _ = parse_mask_name(path.stem)
        except ValueError as exc:
            raise SourceError(f"{exc}", path=name) from None
        if stem != image.stem:
            raise SourceError(f"mask name does not start with its image's name {image.stem!r}", path=name)
        mask = binary_mask(sized_mask(read_mask(path, name), shape, name), name, None)
        if not mask.any():
            if spec.options.get("skip_empty", False):
                continue
            raise SourceError("mask is empty (set options.skip_empty to drop empty masks)", path=name)
        label = _label(spec, cls, classes.get(cls))
        if label is None:
            raise SourceError(
                f"class {cls:04d} of dataset {info.dataset!r} has no name in {CLASS_FILE} "
                "or the source's labels",
                path=name,
            )
        if label:  # mapped to "": dropped
            merged[label] |= mask
    if not merged:
        raise SourceError("every mask of this image is empty or dropped", path=rel(image, root))
    modality = spec.modality or modalities.from_samed2d(info.modality)
    return Image2D(pixels=pixels, modality=modality, masks=dict(merged))


SOURCE_KINDS.register("samed2d", SAMed2DAdapter())
