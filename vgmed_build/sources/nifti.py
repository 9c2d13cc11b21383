"""Volume + label map pairs: single pairs, folders of pairs, and the MSD / nnU-Net layouts.

Every volume may be NIfTI or an ITK format (``.mha``, ``.mhd``, ``.nrrd``; see :mod:`.volumes`), and a
3D Slicer ``<case>.seg.nrrd`` next to ``<case>.nrrd`` (or in ``labels/``) is a label map too.

Kinds:

* ``nifti``: ``path`` is an image file (its label map given by option ``label``, relative to the
  image's folder), or a folder holding ``images/`` + ``labels/`` sub-folders, or a folder of
  ``<case>.nii[.gz]`` files next to ``<case><label_suffix>.nii[.gz]`` label maps.
* ``msd`` (also named ``nnunet``): a Medical Segmentation Decathlon or nnU-Net (v1/v2) dataset folder:
  ``dataset.json`` (labels as ``{"0": "background", "1": "liver"}``, ``{"background": 0, "liver": 1}``
  or nnU-Net v2 regions ``{"whole tumor": [1, 2, 3]}``), ``imagesTr/`` and ``labelsTr/``; nnU-Net
  channel files ``<case>_0000.nii.gz`` are paired with ``<case>.nii.gz``. Multi-channel data (4D
  MSD images, ``_000C`` files) gives channel 0 unless option ``channel`` says otherwise, as nnU-Net's
  ``_0000`` convention does. ``file_ending`` ``.png`` / ``.bmp`` / ``.tif`` (2D nnU-Net) gives 2D items.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from vgmed_build import modality as modalities
from vgmed_build.sources import SOURCE_KINDS
from vgmed_build.sources.base import STRING, Image2D, SourceError, SourceItem, SourceSpec, Volume
from vgmed_build.sources.files import read_image, read_mask, rel
from vgmed_build.sources.volumes import (
    SLICER_SEG,
    VOLUME_EXTS,
    VolumeFile,
    case_of,
    companion_files,
    drop_trailing_singletons,
    on_grid,
    read_volume,
    volume_files,
)

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_ANY_EXT = "(.nii[.gz], .mha, .mhd or .nrrd)"
# nnU-Net v2's 2D file endings (its NaturalImage2DIO): such a dataset's items are 2D images.
IMAGE_2D_EXTS = (".png", ".bmp", ".tif", ".tiff")
log = logging.getLogger(__name__)


def _squeeze_to_3d(data: np.ndarray, rel: str, what: str, channel: int | None) -> np.ndarray:
    data = drop_trailing_singletons(data)
    if data.ndim == 4 and what == "image":
        if channel is None:
            raise SourceError(
                f"4D image with {data.shape[3]} volumes; set option 'channel' to choose one (0-based)",
                path=rel,
            )
        if channel >= data.shape[3]:
            raise SourceError(f"option channel={channel} but the image has {data.shape[3]} volumes", path=rel)
        data = data[..., channel]
    if data.ndim != 3:
        raise SourceError(f"{what} must be a 3D volume, got shape {data.shape}", path=rel)
    return data


@dataclass(frozen=True)
class Pairs:
    """What the image + label pairs of one source share: how to read and name their labels."""

    modality: str
    channel: int | None = None  # the volume of a 4D image (None: a 4D image is an error)
    names: dict[int, str] = field(default_factory=dict)  # label value -> name
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)  # nnU-Net v2 region -> its values
    flat: bool = False  # 2D image files (nnU-Net's .png / .bmp / .tif)

    def item(self, root: Path, image: Path, label: Path, channel_file: bool = False) -> SourceItem:
        """One pair as an item; a channel file (``_0001``) already is the chosen channel."""
        pairs = replace(self, channel=None) if channel_file else self
        load = partial(load_pair_2d if self.flat else load_pair, image, label, root, pairs)
        return SourceItem(key=rel(image, root), files=[*companion_files(image), *companion_files(label)], load=load)


def load_pair(image: Path, label: Path, root: Path, pairs: Pairs) -> Volume:
    """Read and check one image + label map pair (same grid, integer non-negative labels).

    A 3D Slicer segmentation (``.seg.nrrd``) names its segments in its header and may be cropped to
    their extent; it is placed back on the image's grid. Its layers (overlapping segments) give masks.
    """
    rel_i, rel_l = rel(image, root), rel(label, root)
    img = read_volume(image, root, "image")
    lab = read_volume(label, root, "label map")
    data = _squeeze_to_3d(img.data, rel_i, "image", pairs.channel)
    volume = Volume(image=data.astype(np.float32, copy=False), affine=img.affine, modality=pairs.modality)
    if lab.segments:
        return _with_segments(volume, lab, rel_l, rel_i)
    labels = _squeeze_to_3d(lab.data, rel_l, "label map", None)
    if data.shape != labels.shape:
        raise SourceError(
            f"label map shape {labels.shape} differs from image {rel_i} shape {data.shape}",
            path=rel_l,
        )
    if not np.allclose(img.affine, lab.affine, atol=1e-3):
        raise SourceError(
            f"label map affine differs from image {rel_i} affine "
            "(they are not on the same voxel grid)",
            path=rel_l,
        )
    label_map = checked_label_map(labels, rel_l)
    if pairs.regions:
        volume.masks = region_masks(label_map, pairs.regions, rel_l)
    else:
        volume.label_map, volume.label_names = label_map, {**lab.label_names, **pairs.names}
    return volume


def load_pair_2d(image: Path, label: Path, root: Path, pairs: Pairs) -> Image2D:
    """A 2D nnU-Net pair (``imagesTr/<case>_0000.png`` + ``labelsTr/<case>.png``): pixels as they are."""
    rel_i, rel_l = rel(image, root), rel(label, root)
    pixels = read_image(image, rel_i)
    labels = checked_label_map(read_mask(label, rel_l), rel_l)
    if labels.shape != pixels.shape[:2]:
        raise SourceError(
            f"label map size {labels.shape} differs from image {rel_i} size {pixels.shape[:2]}", path=rel_l
        )
    if pairs.regions:
        return Image2D(pixels=pixels, modality=pairs.modality, masks=region_masks(labels, pairs.regions, rel_l))
    return Image2D(pixels=pixels, modality=pairs.modality, label_map=labels, label_names=dict(pairs.names))


def region_masks(label_map: np.ndarray, regions: dict[str, tuple[int, ...]], name: str) -> dict[str, np.ndarray]:
    """nnU-Net v2 region-based labels: each region is the union of its label values (regions overlap)."""
    masks = {region: mask for region, values in regions.items() if (mask := np.isin(label_map, values)).any()}
    if not masks:
        raise SourceError(f"no voxel has a label value of any region ({', '.join(regions)})", path=name)
    return masks


def checked_label_map(lab: np.ndarray, name: str) -> np.ndarray:
    """An integer, non-negative, non-empty label map (integral floats are accepted), else a SourceError."""
    if not np.issubdtype(lab.dtype, np.integer) and lab.dtype != bool:
        if (
            not np.issubdtype(lab.dtype, np.floating)
            or not np.all(np.isfinite(lab))
            or np.any(lab != np.rint(lab))
        ):
            raise SourceError(f"label map has non-integer values (dtype {lab.dtype})", path=name)
        lab = lab.astype(np.int64)
    if lab.size and lab.min() < 0:
        raise SourceError(f"label map has negative values (min {lab.min()})", path=name)
    if not lab.any():
        raise SourceError("label map is empty (no labelled voxels)", path=name)
    return lab.astype(np.uint8) if lab.dtype == bool else lab


def _with_segments(volume: Volume, lab: VolumeFile, rel_l: str, rel_i: str) -> Volume:
    """A Slicer segmentation on the image's grid: one layer -> label map, several -> one mask per segment."""
    data = lab.data
    data = drop_trailing_singletons(data)
    if data.ndim not in (3, 4):
        raise SourceError(f"segmentation must be 3D (or 4D with layers), got shape {data.shape}", path=rel_l)
    data = on_grid(data, lab.affine, volume.image.shape, volume.affine, rel_l, rel_i)
    if data.ndim == 3:
        volume.label_map = checked_label_map(data, rel_l)
        volume.label_names = {s.value: s.name for s in lab.segments}
        return volume
    masks: dict[str, np.ndarray] = {}
    for seg in lab.segments:
        if seg.layer >= data.shape[3]:
            raise SourceError(f"segment {seg.name!r} is in layer {seg.layer}; the file has {data.shape[3]}", path=rel_l)
        mask = data[..., seg.layer] == seg.value
        if mask.any():
            masks[seg.name] = masks[seg.name] | mask if seg.name in masks else mask
    if not masks:
        raise SourceError("every segment is empty", path=rel_l)
    volume.masks = masks
    return volume


class NiftiAdapter:
    """Single pairs or folders of pairs (see the module docstring)."""

    kind = "nifti"
    option_types = {"label": STRING, "label_suffix": STRING}

    def items(self, spec: SourceSpec) -> Iterator[SourceItem | SourceError]:
        path, opts = spec.path, spec.options
        pairs = Pairs(modality=spec.modality or "", channel=opts.get("channel"))
        if path.is_file():
            if not opts.get("label"):
                yield SourceError("a single image file needs option 'label' (its label map)", path=path.name)
                return
            yield pairs.item(path.parent, path, path.parent / opts["label"])
            return
        if not path.is_dir():
            yield SourceError("source path not found", path=path)
            return
        if (path / "images").is_dir() and (path / "labels").is_dir():
            yield from _paired_folders(path, path / "images", path / "labels", pairs)
            return
        suffix = opts.get("label_suffix") or "_seg"
        cases = {case_of(p): p for p in volume_files(path)}
        labels = {
            c: base for c in cases for sfx in (suffix, SLICER_SEG)
            if c.endswith(sfx) and (base := c[: -len(sfx)]) in cases
        }
        if not labels:
            yield SourceError(
                "no image/label pairs (expected images/ + labels/ folders, "
                f"or <case>.nii.gz next to <case>{suffix}.nii.gz, or <case>.nrrd next to <case>.seg.nrrd)",
                path=path.name,
            )
            return
        label_of: dict[str, Path] = {}
        for c, base in labels.items():  # <case><label_suffix> wins over a Slicer <case>.seg next to it
            if c.endswith(suffix) or base not in label_of:
                label_of[base] = cases[c]
        for case, image in cases.items():
            if case in labels:
                continue
            label = label_of.get(case)
            if label is None:
                yield SourceError(
                    f"no label map {case}{suffix}.nii[.gz] {_ANY_EXT} or "
                    f"{case}.seg.nrrd next to it",
                    path=rel(image, path),
                )
            else:
                yield pairs.item(path, image, label)


def _paired_folders(
    root: Path, images: Path, labels: Path, pairs: Pairs, exts: tuple[str, ...] = VOLUME_EXTS
) -> Iterator[SourceItem | SourceError]:
    """Pair ``images/<case>[_CCCC].<ext>`` with ``labels/<case>.<ext>`` (nnU-Net channel suffix).

    ``exts``: the file endings taken (nnU-Net v2's ``file_ending``); a Slicer ``<case>.seg.nrrd``
    counts as the label map of ``<case>``. Channel files: ``pairs.channel``'s (default ``_0000``).
    """
    label_files = {case_of(p, exts).removesuffix(SLICER_SEG): p for p in volume_files(labels, exts)}
    by_case: dict[str, dict[int, Path]] = {}
    for image in volume_files(images, exts):
        case = case_of(image, exts)
        m = _CHANNEL.match(case)
        if m and m.group("case") in label_files:
            by_case.setdefault(m.group("case"), {})[int(m.group("channel"))] = image
        else:
            by_case.setdefault(case, {})[-1] = image
    want = pairs.channel if pairs.channel is not None else 0
    for case, channels in sorted(by_case.items()):
        if -1 in channels:
            image = channels[-1]
        elif want in channels:
            image = channels[want]
        else:
            yield SourceError(
                f"no channel file _{want:04d} (have {sorted(channels)}); set option 'channel'",
                path=f"{rel(images, root)}/{case}",
            )
            continue
        label = label_files.get(case)
        if label is None:
            yield SourceError(f"no label map {case}{'|'.join(exts)} in {rel(labels, root)}/", path=rel(image, root))
            continue
        yield pairs.item(root, image, label, channel_file=-1 not in channels)


@dataclass(frozen=True)
class DatasetJson:
    """What ingest reads from an MSD / nnU-Net ``dataset.json``."""

    names: dict[int, str]  # label value -> name
    regions: dict[str, tuple[int, ...]]  # nnU-Net v2 region-based labels: name -> the values it unites
    channels: dict[int, str]  # channel index -> name ("modality" in MSD / v1, "channel_names" in v2)
    exts: tuple[str, ...]  # the file endings taken (v2's "file_ending"; default every volume format)


def parse_dataset_json(path: Path) -> DatasetJson:
    """Label names (or regions), channel names and file endings of an MSD or nnU-Net ``dataset.json``.

    nnU-Net v2's ``file_ending`` restricts the files taken to that ending, as nnU-Net itself does.
    A label given as a list (``"whole tumor": [1, 2, 3]``) makes the dataset region-based, as in
    nnU-Net: every label is then a region, the union of its values (an integer is a one-value region).
    """
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot read dataset.json ({exc})", path=path.name) from exc
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise SourceError("no 'labels' mapping", path=path.name)
    names: dict[int, str] = {}
    regions: dict[str, tuple[int, ...]] = {}
    for key, value in labels.items():
        if isinstance(value, str) and str(key).isdigit():  # MSD / nnU-Net v1: {"1": "liver"}
            names[int(key)] = value
        elif _is_label_value(value):  # nnU-Net v2: {"liver": 1}
            names[value] = str(key)
            regions[str(key)] = (value,)
        elif isinstance(value, list) and value and all(_is_label_value(v) for v in value):  # v2 regions
            regions[str(key)] = tuple(value)
        else:
            raise SourceError(
                f"label {key!r}: {value!r} is not supported "
                '(expected {"1": "name"}, {"name": 1} or an nnU-Net region {"name": [1, 2]})',
                path=path.name,
            )
    names.pop(0, None)
    is_regions = any(isinstance(v, list) for v in labels.values())
    regions = {k: v for k, v in regions.items() if v != (0,)} if is_regions else {}
    channels = meta.get("channel_names") or meta.get("modality") or {}
    if not isinstance(channels, dict) or not all(str(k).isdigit() for k in channels):
        raise SourceError(f"channel names {channels!r} are not a mapping {{\"0\": \"CT\"}}", path=path.name)
    channel_names = {int(k): str(v) for k, v in channels.items()}
    ending = meta.get("file_ending")
    readable = (*VOLUME_EXTS, *IMAGE_2D_EXTS)
    if ending is not None and (not isinstance(ending, str) or ending.lower() not in readable):
        raise SourceError(
            f"file_ending {ending!r} is not a format vgmed reads ({', '.join(readable)})", path=path.name
        )
    exts = (ending.lower(),) if ending is not None else VOLUME_EXTS
    return DatasetJson(names={} if is_regions else names, regions=regions, channels=channel_names, exts=exts)


def _is_label_value(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def channel_modality(spec: SourceSpec, dataset: DatasetJson, channel: int) -> str:
    """The modality of the chosen channel: the source's own, else what the channel's name says.

    nnU-Net reads a channel name only to pick its intensity normalisation (``CT``, ``noNorm``,
    ``zscore``, ``rescale_to_0_1``, ``rgb_to_0_1``, anything else: z-score), so a name that is not a
    known modality or MR sequence is an error asking for ``modality``, never a guess.
    """
    if spec.modality:
        return spec.modality
    name = dataset.channels.get(channel, "")
    modality = modalities.from_msd_channel(name)
    if modality:
        return modality
    said = f"channel {channel} is named {name!r}, which does not say the modality" if name else (
        f"no name for channel {channel}")
    raise SourceError(
        f"{said} (nnU-Net reads channel names only to choose its normalisation); set the source's "
        "modality (`modality = \"CT\"` in the sources file, or --modality)",
        path="dataset.json",
    )


class MsdAdapter:
    """Medical Segmentation Decathlon / nnU-Net dataset folders (kind ``msd``, also ``nnunet``)."""

    option_types: dict[str, str] = {}

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def items(self, spec: SourceSpec) -> Iterator[SourceItem | SourceError]:
        root = spec.path
        if not (root / "dataset.json").is_file():
            yield SourceError("not an MSD / nnU-Net dataset folder (no dataset.json)", path=root)
            return
        try:
            dataset = parse_dataset_json(root / "dataset.json")
            channel = spec.options.get("channel")
            modality = channel_modality(spec, dataset, 0 if channel is None else channel)
        except SourceError as exc:
            yield exc
            return
        images, labels = root / "imagesTr", root / "labelsTr"
        if not images.is_dir() or not labels.is_dir():
            yield SourceError("imagesTr/ or labelsTr/ folder missing", path=root.name)
            return
        if channel is None and len(dataset.channels) > 1:
            listed = ", ".join(f"{i} {n}" for i, n in sorted(dataset.channels.items()))
            log.info(
                "source %r: dataset.json lists %d channels (%s); using channel 0 (%s), as nnU-Net's _0000 "
                "files do; set option channel (--option channel=N) to choose another",
                spec.name, len(dataset.channels), listed, dataset.channels.get(0, "?"),
            )
        pairs = Pairs(
            modality=modality,
            channel=0 if channel is None else channel,
            names=dataset.names,
            regions=dataset.regions,
            flat=dataset.exts[0] in IMAGE_2D_EXTS,
        )
        yield from _paired_folders(root, images, labels, pairs, dataset.exts)


SOURCE_KINDS.register("nifti", NiftiAdapter())
SOURCE_KINDS.register("msd", MsdAdapter("msd"))
SOURCE_KINDS.register("nnunet", MsdAdapter("nnunet"))
