"""2D images (PNG/JPG/BMP/TIFF) with mask files: X-ray, ultrasound, endoscopy, dermoscopy, fundus.

How an image finds its masks (a binary file per class by a file-name pattern, or one index mask)
is in :mod:`vgmed_build.sources.masks`, shared with the DICOM adapter.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

from vgmed_build.sources import SOURCE_KINDS
from vgmed_build.sources.base import (
    STRING,
    Image2D,
    SourceError,
    SourceItem,
    SourceSpec,
)
from vgmed_build.sources.files import read_image, rel
from vgmed_build.sources.masks import (
    IMAGE_EXTS,
    MASK_OPTION_TYPES,
    MaskLayout,
    load_masks,
    wanted_tags,
)


def require_modality(spec: SourceSpec) -> str:
    if not spec.modality:
        raise SourceError(
            f"source {spec.name!r}: 2D sources need a modality in the sources file "
            "(X-ray, Ultrasound, Endoscopy, Dermoscopy, Fundus, ...)"
        )
    return spec.modality


class Images2DAdapter:
    """``kind = "images2d"``: every image under ``options.images`` (default ``images/`` or the root)."""

    kind = "images2d"
    option_types = {"images": STRING, **MASK_OPTION_TYPES}

    def items(self, spec: SourceSpec) -> Iterator[SourceItem | SourceError]:
        root = Path(spec.path)
        try:
            modality = require_modality(spec)
            layout = MaskLayout.from_options(spec.options)
        except SourceError as exc:
            yield exc
            return
        if not root.is_dir():
            yield SourceError("source folder not found or not a folder", path=root.name)
            return
        default_dir = "images" if (root / "images").is_dir() else "."
        image_dir = root / str(spec.options.get("images", default_dir))
        mask_rx = layout.regex()
        images = [
            path
            for path in sorted(image_dir.rglob("*"))
            if path.suffix.lower() in IMAGE_EXTS
            and not any(part.startswith(".") for part in Path(rel(path, root)).parts)
            and not mask_rx.match(rel(path, root))
            and path.is_file()
        ]
        find = layout.finder(root, (p.stem for p in images), wanted_tags(spec, layout))
        for path in images:
            name = rel(path, root)
            files = find(path.stem)
            if not files:
                yield SourceError(f"no mask file found (looked for {layout.describe()})", path=name)
                continue
            yield SourceItem(
                key=name,
                files=[path, *sorted(files.values())],
                load=partial(_load_image_item, path, files, layout, spec, root, modality),
            )


def _load_image_item(
    path: Path, files: dict[str, Path], layout: MaskLayout, spec: SourceSpec, root: Path, modality: str
) -> Image2D:
    name = rel(path, root)
    pixels = read_image(path, name)
    labels = load_masks(layout, files, pixels.shape[:2], spec, root, name)
    return Image2D(pixels=pixels, modality=modality, **labels)


SOURCE_KINDS.register("images2d", Images2DAdapter())
