"""`vgmed-build ingest | regions | stats`: source datasets -> rendered slices + regions in the catalog.

Each source item (a volume + labels, a DICOM series + SEG, a 2D image + masks) is one unit of work:
its PNGs are written atomically first, then its item, image and region rows go into the catalog in
ONE transaction, so a kill -9 never leaves half an item. An item whose fingerprint (input files'
sizes, mtimes and content + the source's options) is already stored as done is skipped; a changed
item is re-ingested in place (stable ids, upserts), so reruns never duplicate. A bad item becomes an
error record naming the file and the problem, and the run goes on. An item its source no longer
lists is withdrawn from the build (``--keep-missing`` keeps it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import sys
import threading
import time
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vgmed_build import imaging
from vgmed_build.catalog import Catalog, CatalogError, now_iso, open_catalog
from vgmed_build.commands import EXIT_ITEM_ERRORS, HelpFormatter, add_build_arg, fail
from vgmed_build.config import ConfigError, check_unique_names, load_sources_file, parse_source_flag
from vgmed_build.identifiers import WITH_PATHS_HINT, add_with_paths_arg, hide_item, item_pseudonym
from vgmed_build.lock import LockBusy, add_wait_arg, stage_lock
from vgmed_build.regions import (
    RegionGeometry,
    extract_regions,
    mask_slice_areas,
    select_slices,
    slice_label_areas,
)
from vgmed_build.resources import schema_problems
from vgmed_build.sources import SourceError, SourceSpec, get_adapter
from vgmed_build.sources.base import Image2D, SourceItem, Volume, escaped_name, name_problem

log = logging.getLogger(__name__)

STAGE = "ingest"
# Label values up to this are mapped to structures with a lookup table; larger ones by binary search.
_MAX_LUT_VALUE = 1 << 20
# Bump when rendering or region extraction changes, so every item is re-ingested once.
INGEST_VERSION = "1"
_MODALITIES = {
    "CT": "CT",
    "MR": "MRI",
    "MRI": "MRI",
    "PT": "PET",
    "PET": "PET",
    "US": "Ultrasound",
    "ULTRASOUND": "Ultrasound",
    "CR": "X-ray",
    "DX": "X-ray",
    "XR": "X-ray",
    "X-RAY": "X-ray",
    "XRAY": "X-ray",
    "ES": "Endoscopy",
    "ENDOSCOPY": "Endoscopy",
    "DERMOSCOPY": "Dermoscopy",
    "FUNDUS": "Fundus",
    "OP": "Fundus",
}


def normalise_modality(name: str | None) -> str:
    """Map DICOM codes and spellings (MR, PT, CR, ...) to the benchmark's modality names."""
    if not name:
        return ""
    return _MODALITIES.get(name.strip().upper(), name.strip())


def stable_id(*parts: object) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


def spec_settings(spec: SourceSpec) -> str:
    """What of a source's entry changes its items' output (everything but its name and path), as JSON."""
    settings = {k: v for k, v in asdict(spec).items() if k not in ("name", "path")}
    return json.dumps(settings, sort_keys=True, default=str)


def fingerprint(settings: str, item: SourceItem) -> str:
    """Hash of the item's input files (relative name, size, mtime, content) and its source's
    :func:`spec_settings` (computed once per source, not per item)."""
    h = hashlib.sha256()
    # Spelled as json.dumps([INGEST_VERSION, key, settings]) always was: stored fingerprints stay valid.
    h.update(f"[{json.dumps(INGEST_VERSION)}, {json.dumps(item.key)}, {settings}]".encode())
    if item.extra:  # data of the item held in a shared file (COCO annotations)
        h.update(f"|extra|{item.extra}|".encode())
    for path in item.files:
        st = path.stat()
        h.update(f"|{path.name}|{st.st_size}|{st.st_mtime_ns}|".encode())
        with open(path, "rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()


@dataclass
class RenderedImage:
    """One PNG written for an item, with its catalog record and its region records."""

    record: dict
    regions: list[dict] = field(default_factory=list)


def label_name(spec: SourceSpec, value: int | None, raw_name: str | None) -> str:
    """Name of a label value or mask after the sources file's mapping ('' means: skip it)."""
    for key in (str(value) if value is not None else None, raw_name):
        if key is not None and key in spec.labels:
            return spec.labels[key]
    return raw_name or f"label_{value}"


def render_item(spec: SourceSpec, key: str, data: Volume | Image2D, build_dir: Path) -> list[RenderedImage]:
    """Render one loaded item to PNGs under ``build_dir`` and build its image + region records."""
    modality = normalise_modality(spec.modality or data.modality)
    if not modality:
        raise SourceError(f"{key}: modality unknown; set 'modality' for source {spec.name!r}")
    if isinstance(data, Volume):
        return _render_volume(spec, key, data, modality, build_dir)
    if isinstance(data, Image2D):
        return _render_2d(spec, key, data, modality, build_dir)
    raise TypeError(f"adapter {spec.kind!r} returned {type(data).__name__}, not Volume or Image2D")


def _check_labels(
    key: str, shape: tuple[int, ...], label_map: np.ndarray | None, masks: dict[str, np.ndarray] | None
) -> None:
    """The checks every adapter's output must pass, whatever its format."""
    if (label_map is None) == (masks is None):
        raise SourceError(f"{key}: adapter must give exactly one of label_map or masks")
    if label_map is not None:
        if label_map.shape != shape:
            raise SourceError(f"{key}: label map shape {label_map.shape} differs from image shape {shape}")
        if not (np.issubdtype(label_map.dtype, np.integer) or label_map.dtype == bool):
            raise SourceError(f"{key}: label map must hold integers, got {label_map.dtype}")
        if label_map.size and label_map.min() < 0:
            raise SourceError(f"{key}: label map has negative values")
        if not label_map.any():
            raise SourceError(f"{key}: label map is empty (no labelled pixels)")
    else:
        if not masks:
            raise SourceError(f"{key}: no masks")
        for name, mask in masks.items():
            if mask.shape != shape:
                raise SourceError(f"{key}: mask {name!r} shape {mask.shape} differs from image shape {shape}")
        if not any(m.any() for m in masks.values()):
            raise SourceError(f"{key}: all masks are empty")


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
        raise SourceError(f"{key}: image must be 3D, got shape {vol.image.shape}")
    _check_labels(key, vol.image.shape, vol.label_map, vol.masks)
    problem = imaging.contrast_problem(vol.image)
    if problem:
        raise SourceError(f"{key}: image has {problem}; nothing to render")
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
        out.append(_write_image(spec, key, imaging.to_uint8(grey, lo, hi), image_meta, modality, named, build_dir))
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
    )


def _render_2d(spec: SourceSpec, key: str, img: Image2D, modality: str, build_dir: Path) -> list[RenderedImage]:
    pixels = img.pixels
    if pixels.dtype != np.uint8 or not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)):
        raise SourceError(f"{key}: image must be uint8 (H, W) or (H, W, 3), got {pixels.dtype} {pixels.shape}")
    _check_labels(key, pixels.shape[:2], img.label_map, img.masks)
    problem = imaging.contrast_problem(pixels)
    if problem:
        raise SourceError(f"{key}: image has {problem}; nothing to render")
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
        if structs.names[c] in img.boxes:
            reg.boxes = sorted(img.boxes[structs.names[c]])
    named = [(structs.raw_values[c], structs.names[c], reg) for c, reg in found if reg.area_px >= opts["min_area_px"]]
    if not named:
        raise SourceError(
            f"{key}: no structure left after the size filters (min_component_px="
            f"{opts['min_component_px']}, min_area_px={opts['min_area_px']}, "
            f"max_area_ratio={opts['max_area_ratio']})"
        )
    meta = {
        "plane": "2d",
        "slice_index": None,
        "slice_position_mm": None,
        "pixel_spacing_mm": None,
        "window": None,
    }
    return [_write_image(spec, key, pixels, meta, modality, named, build_dir, img.categories)]


def _upscaled(img: Image2D, min_side_px: int) -> Image2D:
    """A small image and its labels enlarged by a whole factor towards ``min_side_px`` on the short side
    (linear for the pixels, nearest for labels, so boxes are measured on the enlarged masks)."""
    factor = imaging.enlargement(img.pixels.shape[:2], min_side_px)
    if factor == 1:
        return img
    shape = (img.pixels.shape[0] * factor, img.pixels.shape[1] * factor)
    pixels = np.clip(np.rint(imaging.resample(img.pixels, shape, labels=False)), 0, 255).astype(np.uint8)
    label_map = None if img.label_map is None else imaging.resample(img.label_map, shape, labels=True)
    masks = (
        None
        if img.masks is None
        else {k: imaging.resample(m.astype(np.uint8), shape, labels=True) > 0 for k, m in img.masks.items()}
    )
    return replace(img, pixels=pixels, label_map=label_map, masks=masks)


def _write_image(
    spec: SourceSpec,
    key: str,
    pixels: np.ndarray,
    meta: dict,
    modality: str,
    found: list[tuple[int | None, str, RegionGeometry]],
    build_dir: Path,
    categories: dict[str, str] | None = None,
) -> RenderedImage:
    """Write one PNG atomically and build its image record and region records.

    ``categories``: the data's own categories (COCO supercategories); the sources file's win.
    """
    slice_part = "" if meta["slice_index"] is None else meta["slice_index"]
    image_id = stable_id(spec.name, key, meta["plane"], slice_part)
    rel_path = f"images/{spec.name}/{image_id}.png"
    sha = imaging.write_atomic(build_dir / rel_path, imaging.encode_png(pixels))
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
            "source": source,
        }
        category = spec.categories.get(name) or (categories or {}).get(name)
        if category:
            region["category"] = category
        regions.append(region)
    return RenderedImage(record=record, regions=regions)


# ---------------------------------------------------------------------------- the driver


@dataclass
class Job:
    spec: SourceSpec
    item: SourceItem
    done_fingerprint: str | None  # fingerprint stored as done, None if not done
    settings: str  # spec_settings(spec)


@dataclass
class JobResult:
    status: str  # done | skipped | error
    fingerprint: str = ""
    images: list[RenderedImage] = field(default_factory=list)
    error: str = ""


_JOBS: list[Job] = []  # filled before forking the worker pool; workers get indices
_BUILD_DIR: Path = Path(".")


def run_job(job: Job, build_dir: Path, force: bool) -> JobResult:
    """Fingerprint, skip if unchanged, else load and render one item; never raises."""
    key = job.item.key
    try:
        fp = fingerprint(job.settings, job.item)
    except OSError as exc:
        return JobResult("error", error=f"{key}: cannot read input ({exc.strerror or exc}: {exc.filename})")
    if not force and fp == job.done_fingerprint:
        return JobResult("skipped", fingerprint=fp)
    try:
        data = job.item.load()
        images = render_item(job.spec, key, data, build_dir)
    except SourceError as exc:
        return JobResult("error", fingerprint=fp, error=str(exc))
    except MemoryError:
        return JobResult("error", fingerprint=fp, error=f"{key}: out of memory")
    except Exception as exc:  # a bug or an unforeseen file problem: keep the run going, keep the trace
        log.debug("item %s failed:\n%s", key, traceback.format_exc())
        return JobResult("error", fingerprint=fp, error=f"{key}: internal error {type(exc).__name__}: {exc}")
    if not images:
        return JobResult(
            "error",
            fingerprint=fp,
            error=f"{key}: no slice has a structure that passes the "
            "size filters (see min_area_px, min_component_px, max_area_ratio)",
        )
    # Every record is checked before it is stored (compiled validator: ~0.2 ms per region).
    for region in (r for img in images for r in img.regions):
        problems = schema_problems("region", region)
        if problems:
            return JobResult(
                "error",
                fingerprint=fp,
                error=f"{key}: region {region['label']!r} does not "
                f"validate against region.schema.json: {'; '.join(problems)}",
            )
    return JobResult("done", fingerprint=fp, images=images)


def _run_index(index: int, force: bool) -> JobResult:
    return run_job(_JOBS[index], _BUILD_DIR, force)


def _die_with_parent(parent: int, poll_s: float = 0.5) -> None:
    """Worker initializer: exit as soon as the ingest process is gone (killed, even by SIGKILL).

    Without it an orphaned worker (~100 MB) blocks forever writing its result into a pipe that
    nobody reads. A thread watches the parent pid, so it fires even while the worker is blocked.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="vgmed-parent-watch", daemon=True).start()


def store_result(catalog: Catalog, spec: SourceSpec, key: str, result: JobResult) -> None:
    """Write one item's outcome in one transaction (images already on disk); drop stale images."""
    stale_files: list[str] = []
    with catalog.transaction() as c:
        n_regions = sum(len(img.regions) for img in result.images)
        if result.status == "error":
            c.execute(
                "INSERT INTO items (source, item_key, fingerprint, status, finished_at) VALUES (?,?,?,?,?) "
                "ON CONFLICT(source, item_key) DO UPDATE SET fingerprint=excluded.fingerprint, "
                "status='error', finished_at=excluded.finished_at",
                (spec.name, key, result.fingerprint, "error", now_iso()),
            )
            # An item has one current problem: the previous run's message is replaced.
            c.execute(
                "DELETE FROM errors WHERE stage=? AND source=? AND item=? AND message<>?",
                (STAGE, spec.name, key, result.error),
            )
            c.execute(
                "INSERT OR IGNORE INTO errors (stage, source, item, message, created_at) VALUES (?,?,?,?,?)",
                (STAGE, spec.name, key, result.error, now_iso()),
            )
            return
        c.execute(
            "INSERT INTO items (source, item_key, fingerprint, status, n_images, n_regions, finished_at) "
            "VALUES (?,?,?,?,?,?,?) ON CONFLICT(source, item_key) DO UPDATE SET "
            "fingerprint=excluded.fingerprint, status='done', n_images=excluded.n_images, "
            "n_regions=excluded.n_regions, finished_at=excluded.finished_at",
            (spec.name, key, result.fingerprint, "done", len(result.images), n_regions, now_iso()),
        )
        new_images = {img.record["id"] for img in result.images}
        new_regions = {r["id"] for img in result.images for r in img.regions}
        for image_id, path in c.execute(
            "SELECT id, path FROM images WHERE source=? AND item_key=?", (spec.name, key)
        ).fetchall():
            if image_id not in new_images:
                stale_files.append(path)
                c.execute("DELETE FROM images WHERE id=?", (image_id,))
        for (region_id,) in c.execute(
            "SELECT r.id FROM regions r JOIN images i ON r.image_id = i.id WHERE i.source=? AND i.item_key=?",
            (spec.name, key),
        ).fetchall():
            if region_id not in new_regions:
                c.execute("DELETE FROM regions WHERE id=?", (region_id,))
        for img in result.images:
            rec = img.record
            c.execute(
                "INSERT INTO images (id, source, item_key, path, width, height, sha256, record_json) "
                "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET path=excluded.path, "
                "width=excluded.width, height=excluded.height, sha256=excluded.sha256, "
                "record_json=excluded.record_json",
                (
                    rec["id"],
                    spec.name,
                    key,
                    rec["path"],
                    rec["width"],
                    rec["height"],
                    rec["sha256"],
                    json.dumps(rec, sort_keys=True),
                ),
            )
            for reg in img.regions:
                c.execute(
                    "INSERT INTO regions (id, image_id, source, label, modality, record_json) "
                    "VALUES (?,?,?,?,?,?) "
                    "ON CONFLICT(id) DO UPDATE SET image_id=excluded.image_id, label=excluded.label, "
                    "modality=excluded.modality, record_json=excluded.record_json",
                    (
                        reg["id"],
                        rec["id"],
                        spec.name,
                        reg["label"],
                        reg["modality"],
                        json.dumps(reg, sort_keys=True),
                    ),
                )
        c.execute("DELETE FROM errors WHERE stage=? AND source=? AND item=?", (STAGE, spec.name, key))
    for path in stale_files:
        (catalog.build_dir / path).unlink(missing_ok=True)


@dataclass
class IngestReport:
    items: int = 0
    done: int = 0
    skipped: int = 0
    errors: list[tuple[str, str, str]] = field(default_factory=list)  # (source, item, message)
    withdrawn: list[tuple[str, str]] = field(default_factory=list)  # (source, item) no longer in its source
    kept_missing: list[tuple[str, str]] = field(default_factory=list)  # the same, kept (--keep-missing)


def _list_jobs(
    catalog: Catalog, specs: list[SourceSpec], report: IngestReport, keep_missing: bool, with_paths: bool
) -> list[Job]:
    """List every source's items; register the sources; listing problems become errors.

    An item the catalog holds that its source no longer lists is withdrawn (see :func:`_withdraw`).
    """
    done = {
        (s, k): fp
        for s, k, fp in catalog.conn.execute("SELECT source, item_key, fingerprint FROM items WHERE status='done'")
    }
    jobs: list[Job] = []
    for spec in specs:
        # PNG temp files left by a killed run (write_atomic never leaves a half PNG under its name).
        for tmp in (catalog.images_dir / spec.name).glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        with catalog.transaction() as c:
            spec_json = json.dumps(asdict(spec), sort_keys=True, default=str)
            c.execute(
                "INSERT INTO sources (name, kind, spec_json) VALUES (?,?,?) ON CONFLICT(name) DO UPDATE "
                "SET kind=excluded.kind, spec_json=excluded.spec_json",
                (spec.name, spec.kind, spec_json),
            )
            # Listing problems (not tied to an item) are found again below if they still exist.
            c.execute(
                "DELETE FROM errors WHERE stage=? AND source=? AND item NOT IN "
                "(SELECT item_key FROM items WHERE source=?)",
                (STAGE, spec.name, spec.name),
            )
        listed = spec.path.exists()
        try:
            entries = list(get_adapter(spec.kind).items(spec))
        except Exception as exc:  # the adapter could not even list the source
            entries = [SourceError(f"{spec.path}: cannot list source ({type(exc).__name__}: {exc})")]
            listed = False
        settings = spec_settings(spec)
        present: set[str] = set()
        for entry in entries:
            if isinstance(entry, SourceItem):
                entry = name_problem(entry) or entry
            if isinstance(entry, SourceError):
                message = escaped_name(str(entry))
                item = message.split(": ", 1)[0] if ": " in message else spec.path.name
                report.errors.append((spec.name, item, message))
                catalog.record_error(STAGE, item, message, source=spec.name)
                present.add(item)
            else:
                jobs.append(Job(spec, entry, done.get((spec.name, entry.key)), settings))
                present.add(entry.key)
        if listed:
            _withdraw(catalog, spec, present, keep_missing, report, with_paths)
    return jobs


def _withdraw(
    catalog: Catalog, spec: SourceSpec, present: set[str], keep: bool, report: IngestReport, with_paths: bool
) -> None:
    """Remove the items the source no longer has (e.g. withdrawn consent) unless ``keep``.

    Their images, regions, drafts and review tasks leave the build, so the next release is without
    them; their review events stay in the catalog as history. When a source lists none of its
    stored items, nothing is removed: an unmounted disk or an emptied folder looks exactly like that.
    """
    stored = set(catalog.item_keys(spec.name))
    missing = sorted(stored - present)
    if not missing:
        return
    if keep:
        log.warning("%s: kept %d item(s) no longer in the source (--keep-missing)", spec.name, len(missing))
        report.kept_missing += [(spec.name, key) for key in missing]
        return
    if not stored & present:
        message = (
            f"{spec.path.name}: none of the {len(missing)} stored item(s) are in the source any more; nothing "
            "was withdrawn (is it mounted?); to drop them all, ingest into a new build"
        )
        report.errors.append((spec.name, spec.path.name, message))
        catalog.record_error(STAGE, spec.path.name, message, source=spec.name)
        return
    for key in missing:
        gone = catalog.withdraw_item(spec.name, key)
        for path in gone.image_paths:
            (catalog.build_dir / path).unlink(missing_ok=True)
        kept = f"; {gone.reviewed_drafts} reviewed draft(s) stay in the review history" if gone.reviewed_drafts else ""
        shown = key if with_paths else item_pseudonym(spec.name, key)
        log.warning(
            "%s: withdrew %s (no longer in the source): %d image(s), %d region(s), %d draft(s), %d review task(s)%s",
            *(spec.name, shown, len(gone.image_paths), gone.regions, gone.drafts, gone.tasks, kept),
        )
        report.withdrawn.append((spec.name, key))


def run_ingest(
    build_dir: str | Path,
    specs: list[SourceSpec],
    workers: int = 1,
    force: bool = False,
    progress: bool | None = None,
    keep_missing: bool = False,
    with_paths: bool = True,
) -> IngestReport:
    """Ingest every item of ``specs`` into ``build_dir``; see the module docstring.

    ``keep_missing``: keep items their source no longer lists (default: withdraw them);
    ``with_paths``: name withdrawn items by path in the log (else by pseudonym).
    """
    global _JOBS, _BUILD_DIR
    report = IngestReport()
    with open_catalog(build_dir) as catalog:
        jobs = _list_jobs(catalog, specs, report, keep_missing, with_paths)
        report.items = len(jobs)
        bar = tqdm(total=len(jobs), desc="ingest", unit="item", disable=None if progress is None else not progress)

        def handle(job: Job, result: JobResult) -> None:
            if result.status != "skipped":
                store_result(catalog, job.spec, job.item.key, result)
            if result.status == "error":
                report.errors.append((job.spec.name, job.item.key, result.error))
            elif result.status == "done":
                report.done += 1
            else:
                report.skipped += 1
            bar.update(1)

        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                handle(job, run_job(job, catalog.build_dir, force))
        else:
            # Fork: workers inherit the listed items (their loaders need not be picklable).
            _JOBS, _BUILD_DIR = jobs, catalog.build_dir
            try:
                ctx = multiprocessing.get_context("fork")
                with ProcessPoolExecutor(
                    max_workers=workers, mp_context=ctx, initializer=_die_with_parent, initargs=(os.getpid(),)
                ) as pool:
                    futures = {pool.submit(_run_index, i, force): jobs[i] for i in range(len(jobs))}
                    for fut in as_completed(futures):
                        handle(futures[fut], fut.result())
            finally:
                _JOBS = []
        bar.close()
    return report


# ---------------------------------------------------------------------------- command line


def register(subparsers: argparse._SubParsersAction) -> None:
    fmt = HelpFormatter
    p = subparsers.add_parser(
        "ingest",
        formatter_class=fmt,
        help="render source datasets to PNG slices + regions in a build catalog",
        description="Read segmentation sources (NIfTI / MHA / NRRD / 3D Slicer, MSD / nnU-Net, "
        "TotalSegmentator, DICOM + SEG / RTSTRUCT, 2D images + masks, SLAKE, SA-Med2D), render 8-bit PNG "
        "slices in the radiological convention and store one "
        "region (component boxes, area, side, ...) per (image, structure). Resumable: unchanged items are "
        "skipped, a crash never leaves half an item. Exit code 1 if any item failed. See docs/ingest.md.",
    )
    add_build_arg(p, help="build directory (created if missing) holding catalog.sqlite and images/")
    p.add_argument(
        "--sources",
        type=Path,
        metavar="FILE",
        help="sources file (.toml, .yaml/.yml or .json) with one entry per source; paths in it "
        "are relative to the file",
    )
    p.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="KIND:PATH",
        help="quick source without a sources file, e.g. msd:/data/Task03_Liver (repeatable); "
        "default options, named after the path's last component",
    )
    p.add_argument(
        "--modality",
        help="modality of the --source flags (CT, MRI, PET, X-ray, Ultrasound, "
        "Endoscopy, Dermoscopy, Fundus); default: from the files where they say it",
    )
    p.add_argument(
        "--body-part",
        default="",
        help="body part of the --source flags (also picks the CT window: brain, lung/chest, liver, abdomen, bone, ...)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="process items in N worker processes (catalog writes stay in the main process)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="re-ingest every item even if its fingerprint (inputs + options) is unchanged",
    )
    p.add_argument(
        "--keep-missing",
        action="store_true",
        help="keep items that their source no longer has (default: withdraw them, e.g. after withdrawn consent: "
        "their images, regions, drafts and review tasks leave the build and the next release; review events "
        "stay in the catalog's history)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_wait_arg(p)
    add_with_paths_arg(p)
    p.set_defaults(func=cmd_ingest)

    p = subparsers.add_parser(
        "regions",
        formatter_class=fmt,
        help="export the catalog's regions as JSONL",
        description="Write every region record (validated against "
        "schemas/region.schema.json) as one JSON object per line, ordered by id.",
    )
    add_build_arg(p)
    p.add_argument(
        "--out",
        type=Path,
        default=Path("-"),
        metavar="FILE",
        help="output JSONL file ('-' writes to standard output)",
    )
    p.add_argument("--source", metavar="NAME", help="only regions of this source")
    add_with_paths_arg(p)
    p.set_defaults(func=cmd_regions)

    p = subparsers.add_parser(
        "stats",
        formatter_class=fmt,
        help="counts by source, modality, label; errors",
        description="Print item, image and region counts by source, modality and "
        "label, and every stored ingest error. Exit code 1 if there are errors.",
    )
    add_build_arg(p)
    p.add_argument("--json", action="store_true", help="print the statistics as one JSON object")
    add_with_paths_arg(p)
    p.set_defaults(func=cmd_stats)


def cmd_ingest(args: argparse.Namespace) -> int:
    try:
        specs = load_sources_file(args.sources) if args.sources else []
        specs += [parse_source_flag(f, args.modality, args.body_part) for f in args.source]
        check_unique_names(specs, "--sources / --source")
    except ConfigError as exc:
        return fail(str(exc))
    if not specs:
        return fail("nothing to ingest; give --sources FILE or --source KIND:PATH")
    try:
        with stage_lock(args.build, STAGE, args.wait):
            report = run_ingest(
                args.build,
                specs,
                workers=args.workers,
                force=args.force,
                progress=False if args.no_progress else None,
                keep_missing=args.keep_missing,
                with_paths=args.with_paths,
            )
    except (CatalogError, LockBusy) as exc:
        return fail(str(exc))
    with open_catalog(args.build) as catalog:
        n_images, n_regions = (
            catalog.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("images", "regions")
        )
    print(
        f"ingest: {report.items} items: {report.done} ingested, {report.skipped} unchanged, "
        f"{len(report.errors)} errors, {len(report.withdrawn)} withdrawn (no longer in their source)"
        + (f", {len(report.kept_missing)} missing kept" if report.kept_missing else "")
        + f"; catalog holds {n_images} images, {n_regions} regions"
    )
    for source, item, message in report.errors:
        if not args.with_paths:
            message, item = hide_item(message, source, item), item_pseudonym(source, item)
        print(
            f"  error [{source}] {message if message.startswith(item) else f'{item}: {message}'}",
            file=sys.stderr,
        )
    if report.errors and not args.with_paths:
        print(f"  ({WITH_PATHS_HINT}, e.g. `vgmed-build stats --build {args.build} --with-paths`)", file=sys.stderr)
    return EXIT_ITEM_ERRORS if report.errors else 0


def cmd_regions(args: argparse.Namespace) -> int:
    try:
        catalog = open_catalog(args.build, create=False)
    except CatalogError as exc:
        return fail(str(exc))
    lines, bad = [], 0
    with catalog:
        for region in catalog.regions(args.source):
            problems = schema_problems("region", region)
            if problems:
                bad += 1
                print(f"error: region {region.get('id')}: {'; '.join(problems)}", file=sys.stderr)
                continue
            if not args.with_paths:
                source = region["source"]
                source["item"] = item_pseudonym(source["name"], source["item"])
            lines.append(json.dumps(region, sort_keys=True))
    text = "".join(line + "\n" for line in lines)
    if str(args.out) == "-":
        sys.stdout.write(text)
    else:
        imaging.write_atomic(args.out, text.encode())
        print(f"regions: wrote {len(lines)} records to {args.out}", file=sys.stderr)
    return EXIT_ITEM_ERRORS if bad else 0


def collect_stats(catalog: Catalog) -> dict[str, Any]:
    """Counts by source, modality and label, and the ingest errors."""
    q = catalog.conn.execute
    by_source: dict[str, dict[str, int]] = {}
    for source, status, n in q("SELECT source, status, COUNT(*) FROM items GROUP BY source, status"):
        by_source.setdefault(source, {"items_done": 0, "items_error": 0, "images": 0, "regions": 0})
        by_source[source][f"items_{status}"] = n
    for table in ("images", "regions"):
        for source, n in q(f"SELECT source, COUNT(*) FROM {table} GROUP BY source"):
            by_source.setdefault(source, {"items_done": 0, "items_error": 0, "images": 0, "regions": 0})
            by_source[source][table] = n
    sides: Counter[str] = Counter()
    for (rec,) in q("SELECT record_json FROM regions"):
        sides[json.loads(rec)["side"]] += 1
    return {
        "sources": by_source,
        "modalities": dict(q("SELECT modality, COUNT(*) FROM regions GROUP BY modality ORDER BY modality")),
        "labels": dict(q("SELECT label, COUNT(*) FROM regions GROUP BY label ORDER BY label")),
        "sides": dict(sorted(sides.items())),
        "errors": [
            {"source": s, "item": i, "message": m}
            for s, i, m in q("SELECT source, item, message FROM errors WHERE stage=? ORDER BY source, item", (STAGE,))
        ],
    }


def cmd_stats(args: argparse.Namespace) -> int:
    try:
        catalog = open_catalog(args.build, create=False)
    except CatalogError as exc:
        return fail(str(exc))
    with catalog:
        stats = collect_stats(catalog)
    if not args.with_paths:
        stats["errors"] = [
            {
                **e,
                "item": item_pseudonym(e["source"], e["item"]),
                "message": hide_item(e["message"], e["source"], e["item"]),
            }
            for e in stats["errors"]
        ]
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
    else:
        print("by source:")
        for name, counts in sorted(stats["sources"].items()):
            print(
                f"  {name}: {counts['items_done']} items done, {counts['items_error']} failed, "
                f"{counts['images']} images, {counts['regions']} regions"
            )
        for title in ("modalities", "labels", "sides"):
            print(f"regions by {title.rstrip('s') if title != 'modalities' else 'modality'}:")
            for name, n in stats[title].items():
                print(f"  {name}: {n}")
        print(f"errors: {len(stats['errors'])}")
        for err in stats["errors"]:
            text = err["message"] if err["message"].startswith(err["item"]) else f"{err['item']}: {err['message']}"
            print(f"  [{err['source']}] {text}")
    return EXIT_ITEM_ERRORS if stats["errors"] else 0
