"""The images2d adapter on a real fundus photo (scikit-image's retina.jpg) with masks made here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage
from PIL import Image

from vgmed_build.sources import get_adapter
from vgmed_build.sources.base import Image2D, SourceError, SourceItem, SourceSpec
from vgmed_build.sources.masks import split_mask_name

RETINA = Path(skimage.__file__).parent / "data" / "retina.jpg"
SIZE = (200, 160)  # width, height: non-square on purpose


def retina(tmp: Path, name: str = "images/eye1.jpg") -> np.ndarray:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.open(RETINA).convert("RGB").resize(SIZE)
    img.save(path, quality=95)
    return np.asarray(Image.open(path))


def disc_mask() -> np.ndarray:
    mask = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    mask[40:70, 120:150] = 255
    return mask


def write(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def spec(root: Path, **kw) -> SourceSpec:
    kw.setdefault("modality", "Fundus")
    return SourceSpec(name="fundus", kind="images2d", path=root, **kw)


def listed(s: SourceSpec) -> tuple[list[SourceItem], list[SourceError]]:
    out = list(get_adapter("images2d").items(s))
    return [o for o in out if isinstance(o, SourceItem)], [o for o in out if isinstance(o, SourceError)]


def test_binary_masks_per_class_by_pattern(tmp_path):
    pixels = retina(tmp_path)
    vessel = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    vessel[100:103, 10:190] = 1  # 0/1 masks are binary too
    write(tmp_path / "masks/eye1_disc.png", disc_mask())
    write(tmp_path / "masks/eye1_vessel.png", vessel)
    items, errors = listed(spec(tmp_path, labels={"disc": "optic disc"}))
    assert errors == [] and [i.key for i in items] == ["images/eye1.jpg"]
    # with labels given, only the mapped tags are read
    assert sorted(p.name for p in items[0].files) == ["eye1.jpg", "eye1_disc.png"]
    img = items[0].load()
    assert isinstance(img, Image2D) and img.modality == "Fundus"
    assert np.array_equal(img.pixels, pixels)
    assert list(img.masks) == ["optic disc"]
    assert np.array_equal(img.masks["optic disc"], disc_mask() > 0)

    items, _ = listed(spec(tmp_path))  # no labels: every tag found by the pattern, named by its tag
    masks = items[0].load().masks
    assert sorted(masks) == ["disc", "vessel"] and masks["vessel"].sum() == 3 * 180


def test_index_mask_with_label_map(tmp_path):
    retina(tmp_path, "eye2.png")
    label_map = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    label_map[40:70, 120:150] = 1
    label_map[50:60, 130:140] = 2
    label_map[0:2, :] = 255  # border value to be ignored
    write(tmp_path / "labels/eye2.png", label_map)
    opts = {"mask_type": "index", "masks": "labels/{stem}.png", "ignore_values": [255]}
    items, errors = listed(spec(tmp_path, labels={"1": "optic disc", "2": "optic cup"}, options=opts))
    assert errors == [] and [i.key for i in items] == ["eye2.png"]  # labels/ is not taken for images
    img = items[0].load()
    assert img.label_names == {1: "optic disc", 2: "optic cup"}
    assert (img.label_map == 2).sum() == 100 and (img.label_map == 255).sum() == 0

    items, _ = listed(spec(tmp_path, labels={"1": "optic disc"}, options=opts))
    with pytest.raises(SourceError, match=r"labels/eye2.png: mask value 2 has no name"):
        items[0].load()


def test_rgb_mask_refused_unless_grey(tmp_path):
    retina(tmp_path)
    rgb = np.stack([disc_mask()] * 3, axis=-1)
    write(tmp_path / "masks/eye1_disc.png", rgb)
    items, _ = listed(spec(tmp_path))
    assert items[0].load().masks["disc"].sum() == 30 * 30  # equal channels are fine
    rgb[..., 1] = 0
    write(tmp_path / "masks/eye1_disc.png", rgb)
    with pytest.raises(SourceError, match=r"masks/eye1_disc.png: RGB mask"):
        items[0].load()


def test_size_mismatch_names_the_mask(tmp_path):
    retina(tmp_path)
    write(tmp_path / "masks/eye1_disc.png", disc_mask()[:, :100])
    items, _ = listed(spec(tmp_path))
    with pytest.raises(SourceError, match=r"masks/eye1_disc.png: mask size 100x160 differs .* 200x160"):
        items[0].load()


def test_non_binary_mask_and_threshold(tmp_path):
    retina(tmp_path)
    mask = disc_mask()
    mask[45, 125] = 128
    write(tmp_path / "masks/eye1_disc.png", mask)
    items, _ = listed(spec(tmp_path))
    with pytest.raises(SourceError, match=r"eye1_disc.png: binary mask holds 3 values"):
        items[0].load()
    items, _ = listed(spec(tmp_path, options={"binary_threshold": 127}))
    assert items[0].load().masks["disc"].sum() == 900


def test_empty_mask_is_an_error_unless_skipped(tmp_path):
    retina(tmp_path)
    write(tmp_path / "masks/eye1_disc.png", disc_mask())
    write(tmp_path / "masks/eye1_cup.png", np.zeros((SIZE[1], SIZE[0]), np.uint8))
    items, _ = listed(spec(tmp_path))
    with pytest.raises(SourceError, match=r"masks/eye1_cup.png: mask is empty"):
        items[0].load()
    items, _ = listed(spec(tmp_path, options={"skip_empty": True}))
    assert list(items[0].load().masks) == ["disc"]


def test_missing_masks_unreadable_image_and_missing_modality(tmp_path):
    retina(tmp_path)
    retina(tmp_path, "images/eye3.jpg")
    write(tmp_path / "masks/eye1_disc.png", disc_mask())
    (tmp_path / "images/broken.png").write_bytes((tmp_path / "masks/eye1_disc.png").read_bytes()[:60])
    write(tmp_path / "masks/broken_disc.png", disc_mask())
    items, errors = listed(spec(tmp_path))
    assert sorted(i.key for i in items) == ["images/broken.png", "images/eye1.jpg"]
    expected = "images/eye3.jpg: no mask file found (looked for masks/{stem}_{label}.png)"
    assert [str(e) for e in errors] == [expected]
    broken = next(i for i in items if i.key == "images/broken.png")
    with pytest.raises(SourceError, match=r"images/broken.png: cannot read image"):
        broken.load()
    _, errors = listed(spec(tmp_path, modality=None))
    assert len(errors) == 1 and "need a modality" in str(errors[0])
    _, errors = listed(spec(tmp_path, options={"masks": "masks/{stem}.png"}))
    assert "needs a {label} placeholder" in str(errors[0])


def test_one_binary_jpeg_mask_per_image(tmp_path):
    """Kvasir-SEG style: masks/<stem>.jpg with the image's name, one class, lossy JPEG values."""
    retina(tmp_path, "images/cju0qkwl35piu0993l0dewei2.jpg")
    (tmp_path / "masks").mkdir()
    Image.fromarray(disc_mask()).save(tmp_path / "masks" / "cju0qkwl35piu0993l0dewei2.jpg", quality=75)
    opts = {"masks": "masks/{stem}.jpg", "class_name": "polyp"}
    items, errors = listed(spec(tmp_path, modality="Endoscopy", options=opts))
    assert errors == [] and len(items) == 1
    with pytest.raises(SourceError, match="binary mask holds"):
        items[0].load()  # JPEG artefacts: not a clean 0/255 mask
    items, _ = listed(spec(tmp_path, modality="Endoscopy", options={**opts, "binary_threshold": 127}))
    mask = items[0].load().masks["polyp"]
    ys, xs = np.nonzero(mask)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (40, 69, 120, 149)


def test_underscore_stems_pair_with_their_masks(tmp_path):
    """``masks/a_b_cyst.png`` belongs to ``a_b.png`` (the real image stem), not to a stem ``a``."""
    retina(tmp_path, "images/a_b.png")
    retina(tmp_path, "images/a.png")
    retina(tmp_path, "images/x_y_z.png")
    write(tmp_path / "masks/a_b_cyst.png", disc_mask())
    write(tmp_path / "masks/a_disc.png", disc_mask())
    write(tmp_path / "masks/a_b_optic_cup.png", disc_mask())  # labels may hold "_" too
    write(tmp_path / "masks/q_disc.png", disc_mask())  # no image q: paired with nothing
    items, errors = listed(spec(tmp_path))
    files = {i.key: sorted(p.name for p in i.files[1:]) for i in items}
    assert files == {
        "images/a.png": ["a_disc.png"],
        "images/a_b.png": ["a_b_cyst.png", "a_b_optic_cup.png"],
    }
    assert [str(e) for e in errors] == [
        "images/x_y_z.png: no mask file found (looked for masks/{stem}_{label}.png)"
    ]
    masks = next(i for i in items if i.key == "images/a_b.png").load().masks
    assert sorted(masks) == ["cyst", "optic_cup"]


def test_split_mask_name_takes_the_longest_real_stem():
    tokens = ["masks/", "{stem}", "_", "{label}", ".png"]
    assert split_mask_name(tokens, "masks/a_b_cyst.png", {"a", "a_b"}) == ("a_b", "cyst")
    assert split_mask_name(tokens, "masks/a_b_cyst.png", {"a"}) == ("a", "b_cyst")
    assert split_mask_name(tokens, "masks/a_b_cyst.png", {"c"}) is None
    assert split_mask_name(tokens, "masks/sub/a_cyst.png", {"a", "sub/a"}) is None  # no "/" in a stem
    folders = ["{label}", "/", "{stem}", "_mask.png"]
    assert split_mask_name(folders, "liver/ct_1_mask.png", {"ct_1", "ct"}) == ("ct_1", "liver")
    twice = ["{stem}", "/", "{stem}", "_", "{label}", ".png"]
    assert split_mask_name(twice, "p1/p1_lung.png", {"p1"}) == ("p1", "lung")
    assert split_mask_name(twice, "p1/p2_lung.png", {"p1", "p2"}) is None
