"""NIfTI image + label map pairs: single pairs, folders of pairs, and the MSD / nnU-Net layouts.

Kinds:

* ``nifti``: ``path`` is an image file (its label map given by option ``label``, relative to the
  image's folder), or a folder holding ``images/`` + ``labels/`` sub-folders, or a folder of
  ``<case>.nii[.gz]`` files next to ``<case><label_suffix>.nii[.gz]`` label maps.
* ``msd``: a Medical Segmentation Decathlon or nnU-Net (v1/v2) dataset folder: ``dataset.json``
  (labels as ``{"0": "background", "1": "liver"}`` or ``{"background": 0, "liver": 1}``),
  ``imagesTr/`` and ``labelsTr/``; nnU-Net channel files ``<case>_0000.nii.gz`` are paired with
  ``<case>.nii.gz``. Multi-channel data needs option ``channel`` (default: the first channel file).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from vgmed_build.sources.base import SourceError, SourceItem, SourceSpec, Volume, register

_NII = re.compile(r"^(?P<case>.+?)\.nii(\.gz)?$")
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_MODALITY_ALIASES = {"CT": "CT", "PET": "PET", "PT": "PET", "US": "Ultrasound"}


def _case(path: Path) -> str | None:
    m = _NII.match(path.name)
    return m.group("case") if m else None


def _nii_files(folder: Path) -> list[Path]:
    # Hidden files are skipped: MSD archives carry macOS '._case.nii.gz' resource forks.
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and _case(p))


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def _read(path: Path, root: Path, what: str):
    """Load a NIfTI header and data, turning every low-level failure into a SourceError."""
    import nibabel as nib

    rel = _rel(path, root)
    if not path.is_file():
        raise SourceError(f"{rel}: {what} file not found")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for truncated / foreign files
        raise SourceError(f"{rel}: cannot read {what} as NIfTI ({type(exc).__name__}: {exc})") from exc
    return img.affine, data


def _squeeze_to_3d(data: np.ndarray, rel: str, what: str, channel: int | None) -> np.ndarray:
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 4 and what == "image":
        if channel is None:
            raise SourceError(
                f"{rel}: 4D image with {data.shape[3]} volumes; set option 'channel' to choose one (0-based)"
            )
        if channel >= data.shape[3]:
            raise SourceError(f"{rel}: option channel={channel} but the image has {data.shape[3]} volumes")
        data = data[..., channel]
    if data.ndim != 3:
        raise SourceError(f"{rel}: {what} must be a 3D volume, got shape {data.shape}")
    return data


def load_pair(
    image: Path, label: Path, root: Path, label_names: dict[int, str], modality: str, channel: int | None
) -> Volume:
    """Read and check one image + label map pair (same grid, integer non-negative labels)."""
    rel_i, rel_l = _rel(image, root), _rel(label, root)
    img_affine, img = _read(image, root, "image")
    lab_affine, lab = _read(label, root, "label map")
    img = _squeeze_to_3d(img, rel_i, "image", channel)
    lab = _squeeze_to_3d(lab, rel_l, "label map", None)
    if img.shape != lab.shape:
        raise SourceError(
            f"{rel_l}: label map shape {lab.shape} differs from image {rel_i} shape {img.shape}"
        )
    if not np.allclose(img_affine, lab_affine, atol=1e-3):
        raise SourceError(
            f"{rel_l}: label map affine differs from image {rel_i} affine "
            "(they are not on the same voxel grid)"
        )
    if not np.issubdtype(lab.dtype, np.integer) and lab.dtype != bool:
        if (
            not np.issubdtype(lab.dtype, np.floating)
            or not np.all(np.isfinite(lab))
            or np.any(lab != np.rint(lab))
        ):
            raise SourceError(f"{rel_l}: label map has non-integer values (dtype {lab.dtype})")
        lab = lab.astype(np.int64)
    if lab.size and lab.min() < 0:
        raise SourceError(f"{rel_l}: label map has negative values (min {lab.min()})")
    if not lab.any():
        raise SourceError(f"{rel_l}: label map is empty (no labelled voxels)")
    if lab.dtype == bool:
        lab = lab.astype(np.uint8)
    return Volume(
        image=img.astype(np.float32, copy=False),
        affine=np.asarray(img_affine, dtype=np.float64),
        modality=modality,
        label_map=lab,
        label_names=dict(label_names),
    )


def _item(
    spec: SourceSpec, root: Path, image: Path, label: Path, names: dict[int, str], modality: str
) -> SourceItem:
    load = partial(load_pair, image, label, root, names, modality, spec.options.get("channel"))
    return SourceItem(key=_rel(image, root), files=[image, label], load=load)


class NiftiAdapter:
    """Single pairs or folders of pairs (see the module docstring)."""

    kind = "nifti"
    option_keys = ("label", "label_suffix")

    def items(self, spec: SourceSpec) -> Iterator[SourceItem | SourceError]:
        path, opts = spec.path, spec.options
        modality = spec.modality or ""
        if path.is_file():
            if not opts.get("label"):
                yield SourceError(f"{path.name}: a single NIfTI image needs option 'label' (its label map)")
                return
            yield _item(spec, path.parent, path, path.parent / opts["label"], {}, modality)
            return
        if not path.is_dir():
            yield SourceError(f"{path}: source path not found")
            return
        if (path / "images").is_dir() and (path / "labels").is_dir():
            yield from _paired_folders(spec, path, path / "images", path / "labels", {}, modality, None)
            return
        suffix = opts.get("label_suffix") or "_seg"
        files = _nii_files(path)
        cases = {_case(p): p for p in files}
        labels = {c for c in cases if c.endswith(suffix) and c[: -len(suffix)] in cases}
        if not labels:
            yield SourceError(
                f"{path.name}: no image/label pairs (expected images/ + labels/ folders "
                f"or <case>.nii.gz next to <case>{suffix}.nii.gz)"
            )
            return
        for case, image in cases.items():
            if case in labels:
                continue
            label = cases.get(case + suffix)
            if label is None:
                yield SourceError(f"{_rel(image, path)}: no label map {case}{suffix}.nii[.gz] next to it")
            else:
                yield _item(spec, path, image, label, {}, modality)


def _paired_folders(
    spec: SourceSpec,
    root: Path,
    images: Path,
    labels: Path,
    names: dict[int, str],
    modality: str,
    channel: int | None,
) -> Iterator[SourceItem | SourceError]:
    """Pair ``images/<case>[_CCCC].nii.gz`` with ``labels/<case>.nii.gz`` (nnU-Net channel suffix)."""
    label_files = {_case(p): p for p in _nii_files(labels)}
    by_case: dict[str, dict[int, Path]] = {}
    for image in _nii_files(images):
        case = _case(image)
        m = _CHANNEL.match(case)
        if m and m.group("case") in label_files:
            by_case.setdefault(m.group("case"), {})[int(m.group("channel"))] = image
        else:
            by_case.setdefault(case, {})[-1] = image
    want = channel if channel is not None else 0
    for case, channels in sorted(by_case.items()):
        if -1 in channels:
            image = channels[-1]
        elif want in channels:
            image = channels[want]
        else:
            yield SourceError(
                f"{_rel(images, root)}/{case}: no channel file _{want:04d} "
                f"(have {sorted(channels)}); set option 'channel'"
            )
            continue
        label = label_files.get(case)
        if label is None:
            yield SourceError(f"{_rel(image, root)}: no label map {case}.nii[.gz] in {_rel(labels, root)}/")
            continue
        # A channel file already is the chosen channel; only a 4D image needs the channel option.
        item = _item(spec, root, image, label, names, modality)
        if -1 not in channels:
            item.load = partial(load_pair, image, label, root, names, modality, None)
        yield item


def parse_dataset_json(path: Path) -> tuple[dict[int, str], str]:
    """Label names and modality from an MSD or nnU-Net ``dataset.json``."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SourceError(f"{path.name}: cannot read dataset.json ({exc})") from exc
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise SourceError(f"{path.name}: no 'labels' mapping")
    names: dict[int, str] = {}
    for key, value in labels.items():
        if isinstance(value, str) and str(key).isdigit():  # MSD / nnU-Net v1: {"1": "liver"}
            names[int(key)] = value
        elif isinstance(value, int) and not isinstance(value, bool):  # nnU-Net v2: {"liver": 1}
            names[value] = str(key)
        else:
            raise SourceError(
                f"{path.name}: label {key!r}: {value!r} is not supported "
                '(expected {"1": "name"} or {"name": 1}; region-based lists are not)'
            )
    names.pop(0, None)
    channels = meta.get("channel_names") or meta.get("modality") or {}
    first = str(next(iter(channels.values()), "")) if isinstance(channels, dict) else ""
    modality = _MODALITY_ALIASES.get(first.upper(), "MRI" if first else "")
    return names, modality


class MsdAdapter:
    """Medical Segmentation Decathlon / nnU-Net dataset folders."""

    kind = "msd"
    option_keys = ()

    def items(self, spec: SourceSpec) -> Iterator[SourceItem | SourceError]:
        root = spec.path
        if not (root / "dataset.json").is_file():
            yield SourceError(f"{root}: not an MSD / nnU-Net dataset folder (no dataset.json)")
            return
        try:
            names, modality = parse_dataset_json(root / "dataset.json")
        except SourceError as exc:
            yield exc
            return
        modality = spec.modality or modality
        images, labels = root / "imagesTr", root / "labelsTr"
        if not images.is_dir() or not labels.is_dir():
            yield SourceError(f"{root.name}: imagesTr/ or labelsTr/ folder missing")
            return
        yield from _paired_folders(spec, root, images, labels, names, modality, spec.options.get("channel"))


register(NiftiAdapter())
register(MsdAdapter())
