"""TotalSegmentator output (and its public training set, which ships the same way).

Layout: ``<root>/<case>/<image>`` (``ct.nii.gz`` in the training set) plus either
``<root>/<case>/segmentations/<structure>.nii.gz`` (one binary mask per structure, most of them
empty in any one scan) or the single multi-label file written with ``--ml``
(``<root>/<case>/segmentations.nii.gz``, label names in its NIfTI header extension). Volumes may be
in any format of :mod:`.volumes`. The folder of one run (``TotalSegmentator -i ct.nii.gz -o seg``)
is one case: the source is either that folder (the CT and ``seg/`` or ``seg.nii.gz`` in it) or
``seg/`` itself, the CT beside it.

Empty masks are skipped without an error. Structure names such as ``kidney_left`` become readable
labels (``left kidney``) and carry a side; that side must agree with the side of the mask's centre
in world coordinates, else the item fails with an error naming the file (a flipped affine or a wrong
name would otherwise put wrong sides into every question).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from vgmed_build import modality as modalities
from vgmed_build.sources import SOURCE_KINDS
from vgmed_build.sources.base import STRING, STRINGS, SourceError, SourceItem, SourceSpec, Volume
from vgmed_build.sources.files import rel
from vgmed_build.sources.nifti import checked_label_map
from vgmed_build.sources.volumes import (
    case_of,
    companion_files,
    drop_trailing_singletons,
    read_volume,
    volume_files,
)

_SIDES = ("left", "right")
DEFAULT_IMAGE = "ct.nii.gz"
DEFAULT_SEGMENTATIONS = "segmentations"


def readable_name(tag: str) -> tuple[str, str | None]:
    """``kidney_left`` -> (``left kidney``, ``left``); ``vertebrae_L1`` -> (``vertebrae L1``, None).

    Only whole ``left`` / ``right`` words give a side (``L1`` is a lumbar vertebra, not a side).
    """
    words = [w for w in tag.replace("-", "_").split("_") if w]
    sides = [w.lower() for w in words if w.lower() in _SIDES]
    rest = [w for w in words if w.lower() not in _SIDES]
    side = sides[0] if len(set(sides)) == 1 else None
    return " ".join(([side] if side else []) + rest), side


def world_side(mask: np.ndarray, affine: np.ndarray, midline_mm: float, margin_mm: float) -> str:
    """Side of a mask's centre of mass in RAS world x: x > midline is the patient's right."""
    centre = np.array([*(idx.mean() for idx in np.nonzero(mask)), 1.0])
    x = float((affine @ centre)[0])
    if abs(x - midline_mm) <= margin_mm:
        return "midline"
    return "right" if x > midline_mm else "left"


def check_side(name: str, side: str | None, mask: np.ndarray, affine: np.ndarray, midline: float,
               margin: float, where: str) -> None:
    """A structure named left/right must lie on that side of the midline (a centre within margin passes)."""
    if side is None:
        return
    found = world_side(mask, affine, midline, margin)
    if found != "midline" and found != side:
        raise SourceError(
            f"structure {name!r} is named {side} but lies on the patient's {found} in world "
            "coordinates (a flipped affine or a wrong name)",
            path=where,
        )


def _midline(spec: SourceSpec, shape: tuple[int, ...], affine: np.ndarray) -> tuple[float, float]:
    """The midline and margin ingest itself uses (options midline_mm / midline_margin_mm)."""
    opts = spec.options
    centre = affine @ np.array([(n - 1) / 2 for n in shape[:3]] + [1.0])
    midline = opts.get("midline_mm")
    return float(centre[0] if midline is None else midline), float(opts.get("midline_margin_mm", 5.0))


def _load_case(spec: SourceSpec, root: Path, image: Path, masks: list[Path], ml: Path | None,
               modality: str) -> Volume:
    img = read_volume(image, root, "image")
    data = img.data
    data = drop_trailing_singletons(data)
    if data.ndim != 3:
        raise SourceError(f"image must be a 3D volume, got shape {data.shape}", path=rel(image, root))
    midline, margin = _midline(spec, data.shape, img.affine)
    if ml is not None:
        label_map, names = _multilabel(spec, root, ml, data.shape, img.affine, midline, margin)
    else:
        label_map, names = _structures(spec, root, masks, data.shape, img.affine, midline, margin)
    return Volume(image=data.astype(np.float32, copy=False), affine=img.affine, modality=modality,
                  label_map=label_map, label_names=names)


def _same_grid(path: Path, root: Path, shape: tuple[int, ...], affine: np.ndarray, got) -> np.ndarray:
    name = rel(path, root)
    data = got.data
    data = drop_trailing_singletons(data)
    if data.shape != shape:
        raise SourceError(f"mask shape {data.shape} differs from the image's {shape}", path=name)
    if not np.allclose(got.affine, affine, atol=1e-3):
        raise SourceError("mask affine differs from the image's (not on the same voxel grid)", path=name)
    return data


def _structures(spec: SourceSpec, root: Path, masks: list[Path], shape: tuple[int, ...], affine: np.ndarray,
                midline: float, margin: float) -> tuple[np.ndarray, dict[int, str]]:
    """One binary mask file per structure -> one label map (structures must not overlap)."""
    label_map = np.zeros(shape, dtype=np.uint16)
    names: dict[int, str] = {}
    owner: dict[int, str] = {}
    for path in masks:
        name = rel(path, root)
        data = _same_grid(path, root, shape, affine, read_volume(path, root, "mask"))
        values = np.unique(data)
        if values.size > 2 or (values.size == 2 and values[0] != 0):
            shown = ", ".join(str(v) for v in values[:5])
            raise SourceError(f"a structure mask must hold 0 and one other value, got {shown}", path=name)
        mask = data != 0
        if not mask.any():
            continue  # most structures are absent from any one scan
        tag = case_of(path) or path.stem
        label, side = readable_name(tag)
        label = spec.labels.get(tag, label)
        if not label:
            continue  # mapped to "" in the sources file: dropped
        check_side(label, side, mask, affine, midline, margin, name)
        value = len(names) + 1
        taken = label_map[mask]
        if taken.any():
            other = owner[int(taken[taken != 0][0])]
            raise SourceError(f"overlaps {other} in {int(np.count_nonzero(taken))} voxels", path=name)
        label_map[mask] = value
        names[value], owner[value] = label, name
    if not names:
        raise SourceError("every structure mask is empty", path=rel(masks[0].parent, root) if masks else '?')
    return label_map, names


def _multilabel(spec: SourceSpec, root: Path, ml: Path, shape: tuple[int, ...], affine: np.ndarray,
                midline: float, margin: float) -> tuple[np.ndarray, dict[int, str]]:
    """The ``--ml`` file: one label map, its names from the header (sources-file labels win)."""
    name = rel(ml, root)
    got = read_volume(ml, root, "label map")
    label_map = checked_label_map(_same_grid(ml, root, shape, affine, got), name)
    names: dict[int, str] = {}
    for value in np.unique(label_map).tolist():
        if value == 0:
            continue
        tag = got.label_names.get(value)
        if tag is None and str(value) not in spec.labels:
            raise SourceError(f"label value {value} has no name in the file's header or the source's labels", path=name)
        label, side = readable_name(tag) if tag else (spec.labels[str(value)], None)
        label = spec.labels.get(str(value), spec.labels.get(tag or "", label))
        if label:
            check_side(label, side, label_map == value, affine, midline, margin, f"{name} (label {value})")
            names[value] = label
    return label_map, names


class TotalSegmentatorAdapter:
    """``kind = "totalsegmentator"``: one item per case folder, or one for the folder of a single run
    (see the module docstring)."""

    kind = "totalsegmentator"
    option_types = {"image": STRING, "segmentations": STRING, "cases": STRINGS}

    def items(self, spec: SourceSpec) -> Iterator[SourceItem | SourceError]:
        root = Path(spec.path)
        if not root.is_dir():
            yield SourceError("source folder not found or not a folder", path=root.name)
            return
        if volume_files(root):  # the folder of one run: volumes here, not in case folders
            yield self._single_run(spec, root)
            return
        opts = spec.options
        wanted = set(opts.get("cases") or [])
        cases = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not cases:
            seg_name = opts.get("segmentations", DEFAULT_SEGMENTATIONS)
            yield SourceError(f"no case folders (expected <case>/{DEFAULT_IMAGE} + <case>/{seg_name}/)", path=root.name)
        for case in cases:
            if wanted and case.name not in wanted:
                continue
            yield self._case(spec, root, case)

    def _single_run(self, spec: SourceSpec, root: Path) -> SourceItem | SourceError:
        """``TotalSegmentator -i ct.nii.gz -o seg``: the source is the folder holding the CT and
        ``seg/`` (one case, keyed by the folder's name), or ``seg/`` itself with the CT beside it (or
        named by option ``image``, relative to the folder)."""
        image_opt = spec.options.get("image")
        beside = volume_files(root.parent)
        if image_opt:
            image = root / str(image_opt)
        elif (root / DEFAULT_IMAGE).is_file() or _mask_folders(root):
            image = None  # the case folder itself: _case finds its image
        elif (root.parent / DEFAULT_IMAGE).is_file():
            image = root.parent / DEFAULT_IMAGE
        elif len(beside) == 1:
            image = beside[0]
        else:
            found = ", ".join(p.name for p in beside) or "none"
            return SourceError(
                f"a folder of structure masks without {DEFAULT_IMAGE} in it or beside it (beside: {found}); "
                "set option image (relative to the folder, e.g. image=../scan.nii.gz)",
                path=root.name,
            )
        if image is None or image.parent.resolve() == root.resolve():
            return self._case(spec, root.parent, root)
        if not image.is_file():
            return SourceError("image file not found", path=rel(image, root.parent))
        return self._item(spec, root.parent, root, image, volume_files(root), None)

    def _case(self, spec: SourceSpec, base: Path, case: Path) -> SourceItem | SourceError:
        """One case folder under ``base``: its image, and its masks folder or ``--ml`` file."""
        key = rel(case, base)
        seg_opt = spec.options.get("segmentations")
        image_opt = spec.options.get("image")
        files = volume_files(case)
        if image_opt:
            image = case / str(image_opt)
        elif (case / DEFAULT_IMAGE).is_file():
            image = case / DEFAULT_IMAGE
        else:
            candidates = [p for p in files if case_of(p) != (seg_opt or DEFAULT_SEGMENTATIONS)]
            if len(candidates) != 1:
                found = ", ".join(p.name for p in candidates) or "none"
                return SourceError(
                    f"cannot tell the image among the volume files ({found}); set options.image", path=key
                )
            image = candidates[0]
        if not image.is_file():
            return SourceError("image file not found", path=rel(image, base))
        seg_name = seg_opt or _segmentations_name(case, image)
        seg_dir = case / seg_name
        masks = volume_files(seg_dir) if seg_dir.is_dir() else []
        ml = next((p for p in files if case_of(p) == seg_name), None)
        if not masks and ml is None:
            return SourceError(
                f"no {seg_name}/ folder of structure masks and no {seg_name}.nii.gz (--ml) file", path=key
            )
        return self._item(spec, base, case, image, masks, None if masks else ml)

    def _item(self, spec: SourceSpec, base: Path, folder: Path, image: Path, masks: list[Path],
              ml: Path | None) -> SourceItem:
        modality = spec.modality or (modalities.MRI if image.name.lower().startswith("mr") else modalities.CT)
        masks = [p for p in masks if p != image]
        inputs = masks or [ml]
        return SourceItem(
            key=rel(folder, base),
            files=[*companion_files(image), *(f for p in inputs for f in companion_files(p))],
            load=partial(_load_case, spec, base, image, masks, ml, modality),
        )


def _mask_folders(folder: Path) -> list[str]:
    """The sub-folders of ``folder`` that hold volume files (structure masks)."""
    return [p.name for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".") and volume_files(p)]


def _segmentations_name(case: Path, image: Path) -> str:
    """``segmentations`` (the training set), else what TotalSegmentator's ``-o`` named: the only
    sub-folder holding volumes (``seg/``), or the only other volume file (``seg.nii.gz``, ``--ml``)."""
    if (case / DEFAULT_SEGMENTATIONS).is_dir():
        return DEFAULT_SEGMENTATIONS
    folders = _mask_folders(case)
    others = [case_of(p) for p in volume_files(case) if p != image]
    if len(folders) == 1:
        return folders[0]
    if not folders and len(others) == 1:
        return others[0]
    return DEFAULT_SEGMENTATIONS


SOURCE_KINDS.register("totalsegmentator", TotalSegmentatorAdapter())
