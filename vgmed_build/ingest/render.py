"""One loaded source item -> rendered PNGs (written atomically) + its image and region records.

Volumes are reoriented to RAS+, sliced in the radiological display convention, resampled to square
pixels and windowed (see :mod:`vgmed_build.imaging`); 2D images are published as given (enlarged by
a whole factor when small). Each (image, target structure) gives one region record: component boxes,
area ratio, side from world coordinates, modality, provenance. Nothing here touches the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from vgmed_build import imaging
from vgmed_build.ctslices import encode_hu, hu_path
from vgmed_build.identifiers import stable_id
from vgmed_build.labelnames import placeholder
from vgmed_build.modality import CT
from vgmed_build.modality import normalise as normalise_modality
from vgmed_build.regions import (
    RegionGeometry,
    extract_regions,
    mask_box,
    mask_slice_areas,
    select_slices,
    slice_label_areas,
)
from vgmed_build.release_format import encode_mask
from vgmed_build.sources.base import Image2D, ItemSkipped, SourceError, SourceSpec, Volume

# Label values up to this are mapped to structures with a lookup table; larger ones by binary search.
_MAX_LUT_VALUE = 1 << 20


@dataclass
class RenderedImage:
    """One PNG written for an item, with its catalog record and its region records.

    ``warnings``: what is odd about it but not wrong enough to refuse it (an all-black picture with
    valid masks), each shown to the user as one line naming the item's file and stored with the item.
    """

    record: dict
    regions: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def label_name(spec: SourceSpec, value: int | None, raw_name: str | None) -> str:
    """Name of a label value or mask after the sources file's mapping ('' means: skip it)."""
    for key in (str(value) if value is not None else None, raw_name):
        if key is not None and key in spec.labels:
            return spec.labels[key]
    return raw_name or placeholder(value)


def render_item(spec: SourceSpec, key: str, data: Volume | Image2D, build_dir: Path) -> list[RenderedImage]:
    """Render one loaded item to PNGs under ``build_dir`` and build its image + region records.

    Raises :class:`ItemSkipped` when no structure passes the size filters (nothing is written then).
    """
    modality = normalise_modality(spec.modality or data.modality)
    if not modality:
        raise SourceError(f"modality unknown; set 'modality' for source {spec.name!r}", path=key)
    if isinstance(data, Volume):
        return _render_volume(spec, key, data, modality, build_dir)
    if isinstance(data, Image2D):
        return _render_2d(spec, key, data, modality, build_dir)
    raise TypeError(f"adapter {spec.kind!r} returned {type(data).__name__}, not Volume or Image2D")


# Label values a label map may hold: any label table fits (values are counted as int64, and a value
# such as 2**64 - 1 is data of another kind, not a label).
MAX_LABEL_VALUE = 2**31 - 1


def _check_labels(
    key: str, shape: tuple[int, ...], label_map: np.ndarray | None, masks: dict[str, np.ndarray] | None
) -> None:
    """The checks every adapter's output must pass, whatever its format."""
    if (label_map is None) == (masks is None):
        raise SourceError("adapter must give exactly one of label_map or masks", path=key)
    if label_map is not None:
        if label_map.shape != shape:
            raise SourceError(f"label map shape {label_map.shape} differs from image shape {shape}", path=key)
        if not (np.issubdtype(label_map.dtype, np.integer) or label_map.dtype == bool):
            raise SourceError(f"label map must hold integers, got {label_map.dtype}", path=key)
        if label_map.size and label_map.min() < 0:
            raise SourceError("label map has negative values", path=key)
        if label_map.size and label_map.max() > MAX_LABEL_VALUE:
            raise SourceError(f"label map holds the value {label_map.max()}, beyond any label table (labels go up "
                              f"to {MAX_LABEL_VALUE}); is it a label map?", path=key)
        if not label_map.any():
            raise SourceError("label map is empty (no labelled pixels)", path=key)
    else:
        if not masks:
            raise SourceError("no masks", path=key)
        for name, mask in masks.items():
            if mask.shape != shape:
                raise SourceError(f"mask {name!r} shape {mask.shape} differs from image shape {shape}", path=key)
        if not any(m.any() for m in masks.values()):
            raise SourceError("all masks are empty", path=key)


@dataclass
class Structures:
    """The target structures of one item after the sources file's name mapping.

    Several label values or masks may map to one name (e.g. "1" and "2" -> "kidney"): they become one
    structure, so every (image, name) gives exactly one region. Structure ids are 1-based.
    """

    names: list[str]
    raw_values: list[int | None]  # the label value when exactly one maps to the name
    values: np.ndarray | None = None  # label maps: sorted label values present
    ids: np.ndarray | None = None  # label maps: structure id of each value (0 = skipped)
    masks: list[np.ndarray] | None = None  # mask sources: one (union) mask per structure

    @classmethod
    def from_label_values(cls, spec: SourceSpec, values: np.ndarray, label_names: dict[int, str]) -> Structures:
        names: list[str] = []
        members: dict[str, list[int]] = {}
        ids = np.zeros(len(values), dtype=np.int64)
        for i, value in enumerate(values.tolist()):
            name = label_name(spec, value, label_names.get(value))
            if not name:
                continue
            if name not in members:
                names.append(name)
                members[name] = []
            members[name].append(value)
            ids[i] = names.index(name) + 1
        raw = [members[n][0] if len(members[n]) == 1 else None for n in names]
        return cls(names=names, raw_values=raw, values=np.asarray(values), ids=ids)

    @classmethod
    def from_masks(cls, spec: SourceSpec, masks: dict[str, np.ndarray]) -> Structures:
        groups: dict[str, list[np.ndarray]] = {}
        for raw, mask in masks.items():
            name = label_name(spec, None, raw)
            if name:
                groups.setdefault(name, []).append(mask)
        unions = [g[0] if len(g) == 1 else np.logical_or.reduce(g) for g in groups.values()]
        return cls(names=list(groups), raw_values=[None] * len(groups), masks=unions)

    def id_map(self, label_slice: np.ndarray) -> np.ndarray:
        """A label-map slice with values replaced by structure ids (0: background or skipped)."""
        if self.values.size and int(self.values[-1]) <= _MAX_LUT_VALUE:
            lut = np.zeros(int(self.values[-1]) + 1, dtype=np.int32)
            lut[self.values] = self.ids
            return lut[label_slice]  # every value of the item is in self.values
        pos = np.minimum(np.searchsorted(self.values, label_slice), max(self.values.size - 1, 0))
        return np.where(self.values[pos] == label_slice, self.ids[pos], 0).astype(np.int32)

    def onehot(self) -> np.ndarray:
        """(n_values, n_structures) 0/1 matrix summing per-value areas into per-structure areas."""
        m = np.zeros((self.ids.size, len(self.names)), dtype=np.int64)
        rows = np.flatnonzero(self.ids)
        m[rows, self.ids[rows] - 1] = 1
        return m


def _render_volume(spec: SourceSpec, key: str, vol: Volume, modality: str, build_dir: Path) -> list[RenderedImage]:
    if vol.image.ndim != 3:
        raise SourceError(f"image must be 3D, got shape {vol.image.shape}", path=key)
    _check_labels(key, vol.image.shape, vol.label_map, vol.masks)
    problem = imaging.contrast_problem(vol.image) or imaging.affine_problem(vol.affine)
    if problem:
        raise SourceError(f"image has {problem}; nothing to render", path=key)
    vol = imaging.canonical(vol)
    opts = spec.options
    plane, shape = opts["plane"], vol.image.shape
    axis = imaging.SLICE_AXIS[plane]
    if vol.label_map is not None:
        values, value_areas = slice_label_areas(vol.label_map, axis)
        structs = Structures.from_label_values(spec, values, vol.label_names)
        areas = value_areas @ structs.onehot()
    else:
        structs = Structures.from_masks(spec, vol.masks)
        areas = mask_slice_areas(structs.masks, axis) if structs.masks else np.zeros((shape[axis], 0), np.int64)
    first = imaging.slice_geometry(vol.affine, shape, plane, 0, opts["spacing_mm"], opts["min_side_px"])
    r_axis, c_axis = imaging.PLANE_AXES[plane]
    px_per_voxel = first.shape[0] * first.shape[1] / (shape[r_axis] * shape[c_axis])
    chosen = select_slices(areas * px_per_voxel, opts["slice_policy"], opts["min_area_px"], opts["every_n"])
    lo, hi = imaging.window_bounds(vol.image, modality, spec.body_part, opts["window"], opts["percentiles"])
    centre = vol.affine @ np.array([(n - 1) / 2 for n in shape] + [1.0])
    midline = float(opts["midline_mm"] if opts["midline_mm"] is not None else centre[0])
    out: list[RenderedImage] = []
    for s, cols in sorted(chosen.items()):
        geom = imaging.slice_geometry(vol.affine, shape, plane, s, opts["spacing_mm"], opts["min_side_px"])
        if vol.label_map is not None:
            ids = structs.id_map(imaging.display_slice(vol.label_map, plane, s))
            lab = imaging.resample(ids, geom.shape, labels=True)
            # All structures of the slice wanted (common with policy 'all'): no filtering pass needed.
            everything = len(cols) == int(np.count_nonzero(areas[s]))
            regs = _extract(lab, None if everything else [c + 1 for c in cols], opts, geom, midline)
            found = [(c, regs[c + 1]) for c in cols if c + 1 in regs]
        else:
            found = []
            for c in cols:
                mask = imaging.display_slice(structs.masks[c], plane, s).astype(np.uint8)
                regs = _extract(imaging.resample(mask, geom.shape, labels=True), [1], opts, geom, midline)
                if 1 in regs:
                    found.append((c, regs[1]))
        if not found:
            continue
        grey = imaging.resample(imaging.display_slice(vol.image, plane, s), geom.shape, labels=False)
        image_meta = {
            "plane": plane,
            "slice_index": int(s),
            "slice_position_mm": round(geom.position_mm, 3),
            "pixel_spacing_mm": [round(v, 6) for v in geom.spacing_mm],
            "window": [lo, hi],
        }
        named = [(structs.raw_values[c], structs.names[c], reg) for c, reg in found]
        present = [structs.names[c] for c in np.flatnonzero(areas[s])]
        out.append(_write_image(spec, key, imaging.to_uint8(grey, lo, hi), image_meta, modality, named, build_dir,
                                present=present, hu=grey if modality == CT else None))
    if not out:
        raise filtered_out(areas.max(axis=0, initial=0) * px_per_voxel, first.shape[0] * first.shape[1], opts)
    return out


def _extract(
    lab: np.ndarray, values: list[int] | None, opts: dict, geom: imaging.SliceGeometry | None, midline: float
) -> dict[int, RegionGeometry]:
    return extract_regions(
        lab,
        values,
        min_component_px=opts["min_component_px"],
        max_area_ratio=opts["max_area_ratio"],
        connectivity=opts["connectivity"],
        geometry=geom,
        midline_mm=midline,
        margin_mm=opts["midline_margin_mm"],
        with_masks=True,
    )


def _render_2d(spec: SourceSpec, key: str, img: Image2D, modality: str, build_dir: Path) -> list[RenderedImage]:
    pixels = img.pixels
    if pixels.dtype != np.uint8 or not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)):
        raise SourceError(f"image must be uint8 (H, W) or (H, W, 3), got {pixels.dtype} {pixels.shape}", path=key)
    _check_labels(key, pixels.shape[:2], img.label_map, img.masks)
    blank = flat_picture(key, pixels)
    opts = spec.options
    img = _upscaled(img, opts["min_side_px"])
    pixels = img.pixels
    found: list[tuple[int, RegionGeometry]] = []
    if img.label_map is not None:
        values = np.unique(img.label_map)
        structs = Structures.from_label_values(spec, values[values != 0].astype(np.int64), img.label_names)
        regs = _extract(structs.id_map(img.label_map), None, opts, None, 0.0)
        found = [(sid - 1, reg) for sid, reg in sorted(regs.items())]
    else:
        structs = Structures.from_masks(spec, img.masks)
        for c, mask in enumerate(structs.masks):
            regs = _extract(mask.astype(np.uint8), [1], opts, None, 0.0)
            if 1 in regs:
                found.append((c, regs[1]))
    for c, reg in found:  # object datasets: one box per object instead of one per connected component
        if structs.names[c] in img.instances:
            reg.boxes = sorted(mask_box(m) for m in img.instances[structs.names[c]])
    named = [(structs.raw_values[c], structs.names[c], reg) for c, reg in found if reg.area_px >= opts["min_area_px"]]
    if not named:
        if img.label_map is not None:
            areas = np.bincount(structs.id_map(img.label_map).ravel(), minlength=len(structs.names) + 1)[1:]
        else:
            areas = np.array([np.count_nonzero(m) for m in structs.masks])
        raise filtered_out(areas, pixels.shape[0] * pixels.shape[1], opts)
    meta = {
        "plane": "2d",
        "slice_index": None,
        "slice_position_mm": None,
        "pixel_spacing_mm": None,
        "window": None,
    }
    present = (
        structs.names  # a label map: its structures are those of the values present
        if structs.masks is None
        else [n for n, m in zip(structs.names, structs.masks, strict=True) if m.any()]
    )
    written = _write_image(spec, key, pixels, meta, modality, named, build_dir, img.categories,
                           present=[*present, *img.unmasked])
    if blank:
        written.warnings.append(blank)
    return [written]


def flat_picture(key: str, pixels: np.ndarray) -> str | None:
    """The warning for a 2D picture of one value (or colour) everywhere, None when it has contrast.

    Its masks are still valid (an all-black float TIFF that holds a mask, issue 30), so the item is
    ingested, useless as it may be: the user is told, not refused. A picture with no pixels is refused.
    """
    if not pixels.size:
        raise SourceError("image has no pixels; nothing to render", path=key)
    first = pixels.reshape(-1, *pixels.shape[2:])[0]
    if not (pixels == first).all():
        return None
    value = int(first) if first.ndim == 0 else tuple(int(v) for v in first)
    tone = {0: " (all black)", 255: " (all white)"}.get(value, "") if isinstance(value, int) else ""
    return (f"image has no contrast: every pixel is {value}{tone} as read (8-bit); ingested with its "
            "masks, but its picture shows nothing: check the file")


def filtered_out(areas_px: np.ndarray, total_px: int, opts: dict) -> ItemSkipped:
    """Why no structure of an item passed the size filters, from each structure's largest area (in
    rendered pixels; a volume's best slice): the reason its skip is counted under."""
    if areas_px.size and (areas_px / total_px > opts["max_area_ratio"]).all():
        return ItemSkipped(f"every structure covers more than max_area_ratio = {opts['max_area_ratio']:g} of the image")
    if areas_px.size and (areas_px < opts["min_area_px"]).all():
        return ItemSkipped(f"every structure is smaller than min_area_px = {opts['min_area_px']:g}")
    return ItemSkipped(
        f"no structure passes the size filters (min_component_px = {opts['min_component_px']:g}, "
        f"min_area_px = {opts['min_area_px']:g}, max_area_ratio = {opts['max_area_ratio']:g})"
    )


def _upscaled(img: Image2D, min_side_px: int) -> Image2D:
    """A small image and its labels enlarged by a whole factor towards ``min_side_px`` on the short side
    (linear for the pixels, nearest for labels and object masks, so every box, object boxes included,
    is measured on the enlarged masks)."""
    factor = imaging.enlargement(img.pixels.shape[:2], min_side_px)
    if factor == 1:
        return img
    shape = (img.pixels.shape[0] * factor, img.pixels.shape[1] * factor)
    pixels = np.clip(np.rint(imaging.resample(img.pixels, shape, labels=False)), 0, 255).astype(np.uint8)
    label_map = None if img.label_map is None else imaging.resample(img.label_map, shape, labels=True)
    def enlarged(mask: np.ndarray) -> np.ndarray:
        return imaging.resample(mask.astype(np.uint8), shape, labels=True) > 0

    masks = None if img.masks is None else {k: enlarged(m) for k, m in img.masks.items()}
    instances = {k: [enlarged(m) for m in objects] for k, objects in img.instances.items()}
    return replace(img, pixels=pixels, label_map=label_map, masks=masks, instances=instances)


def _write_image(
    spec: SourceSpec,
    key: str,
    pixels: np.ndarray,
    meta: dict,
    modality: str,
    found: list[tuple[int | None, str, RegionGeometry]],
    build_dir: Path,
    categories: dict[str, str] | None = None,
    *,
    present: list[str],
    hu: np.ndarray | None = None,
) -> RenderedImage:
    """Write one PNG atomically and build its image record and region records.

    ``categories``: the data's own categories (COCO supercategories); the sources file's win.
    ``present``: every structure with a labelled pixel in the image, regions or not (too small ones
    too): a structure of the source missing from it is absent, and may be asked about with answer "no".
    ``hu``: a CT slice's Hounsfield units, written beside the PNG for the review screen's other windows
    (vgmed_build/ctslices.py); the release never takes them.
    """
    slice_part = "" if meta["slice_index"] is None else meta["slice_index"]
    image_id = stable_id(spec.name, key, meta["plane"], slice_part)
    rel_path = f"images/{spec.name}/{image_id}.png"
    sha = imaging.write_atomic(build_dir / rel_path, imaging.encode_png(pixels))
    if hu is not None:
        imaging.write_atomic(build_dir / hu_path(rel_path), encode_hu(hu))
    height, width = pixels.shape[:2]
    source = {
        "name": spec.name,
        "kind": spec.kind,
        "item": key,
        "dataset": spec.dataset,
        "licence": spec.licence,
    }
    record = {
        "id": image_id,
        "path": rel_path,
        "width": width,
        "height": height,
        "sha256": sha,
        "modality": modality,
        "body_part": spec.body_part,
        **meta,
        "source": source,
    }
    regions = []
    for value, name, geo in found:
        region = {
            "id": stable_id(image_id, name),
            "image_id": image_id,
            "image": rel_path,
            "width": width,
            "height": height,
            "label": name,
            "label_value": value,
            "display_name": spec.display_names.get(name, name),
            "synonyms": spec.synonyms.get(name, []),
            "boxes": geo.boxes,
            "area_ratio": round(geo.area_ratio, 6),
            "centroid": [round(geo.centroid[0], 3), round(geo.centroid[1], 3)],
            "side": geo.side,
            "modality": modality,
            "body_part": spec.body_part,
            "plane": meta["plane"],
            "slice_index": meta["slice_index"],
            "slice_position_mm": meta["slice_position_mm"],
            "pixel_spacing_mm": meta["pixel_spacing_mm"],
            "n_components": len(geo.boxes),
            "mask": encode_mask(geo.mask),
            "image_labels": sorted(set(present)),
            "source": source,
        }
        category = spec.categories.get(name) or (categories or {}).get(name)
        if category:
            region["category"] = category
        regions.append(region)
    return RenderedImage(record=record, regions=regions)

