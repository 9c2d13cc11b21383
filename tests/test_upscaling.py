"""min_side_px: small slices and images are enlarged, and every box follows exactly (known answers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ingest_fixtures import sources_toml, write_pair
from PIL import Image
from test_source_images2d import disc_mask, retina, write

from vgmed_build.catalog import open_catalog
from vgmed_build.cli import main
from vgmed_build.imaging import enlargement


def regions(build: Path) -> list[dict]:
    with open_catalog(build, create=False) as catalog:
        return list(catalog.regions())


def test_enlargement_is_a_whole_factor():
    assert enlargement((160, 200), 512) == 3  # 480 x 600: the largest whole factor within 512
    assert enlargement((99, 117), 512) == 5
    assert enlargement((480, 640), 512) == 1  # already large: published as given
    assert enlargement((99, 117), 0) == 1


def test_a_small_volume_is_rendered_at_five_times_with_the_box_five_times(tmp_path):
    # 10 x 12 x 3 voxels of 1 mm; a cuboid at x 2..5, y 3..8 (voxel indices, inclusive).
    image = np.arange(10 * 12 * 3, dtype=np.float32).reshape(10, 12, 3)
    labels = np.zeros((10, 12, 3), np.uint8)
    labels[2:6, 3:9, :] = 1
    write_pair(tmp_path / "pairs", "a", image, labels, np.eye(4))
    cfg = sources_toml(
        tmp_path / "s.toml",
        [
            {
                "name": "tiny",
                "kind": "nifti",
                "path": "pairs",
                "modality": "MRI",
                "labels": {"1": "cube"},
                "options": {"plane": "axial", "slice_policy": "all", "min_side_px": 50},
            }
        ],
    )
    build = tmp_path / "b"
    assert main(["ingest", "--build", str(build), "--sources", str(cfg), "--no-progress"]) == 0
    found = regions(build)
    assert len(found) == 3
    for r in found:
        # Rows run against y, columns against x (radiological display): rows 11-8..11-3 = 3..8 and
        # columns 9-5..9-2 = 4..7, each voxel now 5 x 5 px (the 10 mm short side / 50 px = 0.2 mm).
        assert (r["width"], r["height"]) == (50, 60) and r["pixel_spacing_mm"] == [0.2, 0.2]
        assert r["boxes"] == [[4 * 5, 3 * 5, 8 * 5, 9 * 5]]
        assert r["area_ratio"] == (20 * 30) / (50 * 60)
        with Image.open(build / r["image"]) as png:
            assert png.size == (50, 60)


def test_a_small_2d_image_is_enlarged_and_its_mask_box_follows(tmp_path):
    retina(tmp_path / "src")  # 200 x 160 px; the disc mask covers rows 40..69, columns 120..149
    write(tmp_path / "src" / "masks/eye1_disc.png", disc_mask())
    cfg = sources_toml(
        tmp_path / "s.toml",
        [{"name": "eye", "kind": "images2d", "path": "src", "modality": "Fundus", "labels": {"disc": "optic disc"}}],
    )
    build = tmp_path / "b"
    assert main(["ingest", "--build", str(build), "--sources", str(cfg), "--no-progress"]) == 0
    (r,) = regions(build)
    # Short side 160: enlarged 3 times (480 <= 512), 200 x 160 -> 600 x 480, the box 3 times its own.
    assert (r["width"], r["height"]) == (600, 480)
    assert r["boxes"] == [[360, 120, 450, 210]]
    with Image.open(build / r["image"]) as png:
        assert png.size == (600, 480) and png.mode == "RGB"
    assert r["area_ratio"] == (90 * 90) / (600 * 480)
