"""`vgmed-eval leakage`: images a release shares with the VQA benchmarks it may be compared on.

SLAKE's pictures are both in VGMED and in a VQA test set; heads picked on such a release are tuned on
the test set. This finds, per benchmark, the release images that are identical to one of its images
(the same decoded pixels, whatever the file format) or nearly so (perceptual hashes: a re-encoded JPEG,
a resized copy, a few pixels cropped), and can write an exclusion list that ``grounding --exclude`` and
``vqa --exclude`` honour.

Near-identical (numpy and PIL only): a *dHash* of 512 bits, whether each pixel of the 17 x 16 grey image
is brighter than its left neighbour and each pixel of the 16 x 17 one brighter than the one above; a
pair is near-identical when at most ``--max-distance`` of the bits differ (default 70, 14%). Measured
on scikit-image photos and MNI152 slices: JPEG at quality 40, half size and 4-pixel crops change at most
63 bits (a 4-pixel crop of a 384 x 191 page); different axial slices of the 2 mm MNI152 template differ
in 80 bits or more from 12 mm apart (slices 4 mm apart can come within 46 bits: one patient's adjacent
slices count as the same picture, which for leakage they are).
pHash (signs of low DCT frequencies) was tried and left out: on left-right symmetric slices its odd
horizontal frequencies are near zero, and a JPEG re-encoding flipped up to 20 of its 64 bits.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

HASH_SIDE = 16
HASH_BITS = 2 * HASH_SIDE * HASH_SIDE
MAX_DISTANCE = 70  # default: bits of the 512 that may differ in a near-identical pair
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _grey(image: Image.Image, width: int, height: int) -> np.ndarray:
    return np.asarray(image.convert("L").resize((width, height), Image.Resampling.LANCZOS), dtype=np.float64)


def dhash(image: Image.Image) -> np.ndarray:
    """The 512-bit horizontal + vertical difference hash as 8 uint64 words."""
    across = _grey(image, HASH_SIDE + 1, HASH_SIDE)
    down = _grey(image, HASH_SIDE, HASH_SIDE + 1)
    bits = np.concatenate([(across[:, 1:] > across[:, :-1]).reshape(-1), (down[1:] > down[:-1]).reshape(-1)])
    return np.packbits(bits).view(">u8").astype(np.uint64)


def pixels_sha256(image: Image.Image) -> str:
    """Digest of the decoded RGB pixels and size: equal for a lossless copy in any format."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.width}x{rgb.height}".encode() + rgb.tobytes()).hexdigest()


@dataclass(frozen=True)
class Hashed:
    key: str  # a release image's path relative to the release, or a benchmark image's key
    pixels: str
    dhash: np.ndarray = field(repr=False)


def hash_image(key: str, image: Image.Image) -> Hashed:
    return Hashed(key, pixels_sha256(image), dhash(image))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) Hamming distances between the rows of two (n, words) uint64 hash arrays."""
    x = np.bitwise_xor(a[:, None, :], b[None, :, :])
    return _POPCOUNT[x.view(np.uint8)].reshape(*x.shape[:2], -1).sum(-1, dtype=np.int64)


@dataclass(frozen=True)
class Match:
    release: str
    benchmark: str
    kind: str  # identical | near
    distance: int  # dHash bits that differ (of 512)


def matches(release: list[Hashed], bench: list[Hashed], max_distance: int = MAX_DISTANCE) -> list[Match]:
    """Every (release image, benchmark image) pair that is identical or near-identical."""
    if not release or not bench:
        return []
    words = np.stack([h.dhash for h in bench])
    chunk = max(1, 2_000_000 // len(bench))  # (chunk, len(bench), 64 bytes) at a time
    found = []
    for start in range(0, len(release), chunk):
        part = release[start:start + chunk]
        distance = hamming(np.stack([h.dhash for h in part]), words)
        same = _same_pixels(part, bench)
        for i, j in zip(*np.nonzero(same | (distance <= max_distance)), strict=True):
            found.append(Match(part[i].key, bench[j].key, "identical" if same[i, j] else "near", int(distance[i, j])))
    return found


def _same_pixels(part: list[Hashed], bench: list[Hashed]) -> np.ndarray:
    index: dict[str, list[int]] = {}
    for j, h in enumerate(bench):
        index.setdefault(h.pixels, []).append(j)
    same = np.zeros((len(part), len(bench)), dtype=bool)
    for i, h in enumerate(part):
        same[i, index.get(h.pixels, [])] = True
    return same


# ------------------------------------------------------------------------------------------- inputs
@dataclass
class Hashing:
    """Images hashed so far, and those that could not be read (``key: reason``)."""

    hashed: list[Hashed] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def hash_files(root: Path, paths: Iterable[Path]) -> Hashing:
    out = Hashing()
    for path in sorted(set(paths)):
        key = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        try:
            with Image.open(path) as im:
                out.hashed.append(hash_image(key, im))
        except OSError as exc:
            out.errors.append(f"{path}: {exc}")
    return out


def release_images(release: Path, images: Path | None = None) -> list[Path]:
    """Every picture of a release: the files under ``images/`` and every record's picture (also those kept
    elsewhere, ``--images``)."""
    from vgmed_eval.release_io import read_release

    found = [p for p in (release / "images").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES] \
        if (release / "images").is_dir() else []
    for control in (False, True):
        try:
            questions, _ = read_release(release, images=images, control=control)
        except FileNotFoundError:
            continue
        found += [q.image for q in questions if q.image.is_file()]
    return [p.resolve() for p in found]


def hash_benchmark(name: str, data: Path, images: Path | None = None) -> tuple[Hashing, list]:
    """The hashed images of a VQA benchmark (by their ``ImageRef.key``) and its loaded items."""
    from vgmed_eval.vqa.benchmarks import get_benchmark

    loaded = get_benchmark(name).load(data, images)
    refs = {it.image.key: it.image for it in loaded.items}
    out = Hashing()
    for key, ref in refs.items():
        try:
            out.hashed.append(hash_image(key, ref.open()))
        except OSError as exc:
            out.errors.append(f"{key}: {exc}")
    return out, loaded.items


# ---------------------------------------------------------------------------------------- exclusions
def exclusion_list(release: Path, found: dict[str, dict]) -> dict:
    """The file ``--write-exclusions`` writes: per benchmark, its images to leave out of VQA and the release
    images to leave out of grounding (release paths absolute, so any command finds them)."""
    return {"release": str(release.resolve()),
            "benchmarks": {name: {"data": f["data"], "images": sorted({m["benchmark"] for m in f["matches"]}),
                                  "release_images": sorted({str(release.resolve() / m["release"])
                                                            for m in f["matches"]})}
                           for name, f in found.items()},
            "release_images": sorted({str(release.resolve() / m["release"]) for f in found.values()
                                      for m in f["matches"]})}


def read_exclusions(path: Path) -> dict:
    """An exclusion list written by ``leakage --write-exclusions``; ValueError names the file and the fault."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"--exclude {path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"--exclude {path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("release_images"), list) \
            or not isinstance(data.get("benchmarks"), dict):
        raise ValueError(f"--exclude {path}: not an exclusion list of `vgmed-eval leakage --write-exclusions` "
                         "(expected 'release_images' and 'benchmarks')")
    return data


def excluded_release_images(path: Path) -> frozenset[str]:
    """Absolute paths of the release images an exclusion list leaves out (grounding ``--exclude``)."""
    return frozenset(read_exclusions(path)["release_images"])


def excluded_benchmark_images(path: Path, benchmark: str) -> frozenset[str]:
    """Image keys of ``benchmark`` an exclusion list leaves out (vqa ``--exclude``)."""
    entry = read_exclusions(path)["benchmarks"].get(benchmark) or {}
    return frozenset(entry.get("images", []))


# ------------------------------------------------------------------------------------------- command
def check(release: Path, benchmarks: dict[str, Path], *, images: Path | None = None,
          max_distance: int = MAX_DISTANCE, release_paths: list[Path] | None = None) -> dict:
    """Per benchmark: its images, how many release images match one of them (identical / near), the pairs,
    and what could not be read. ``release_paths``: only these release images (heads' selection split)."""
    paths = release_paths if release_paths is not None else release_images(release, images)
    mine = hash_files(release.resolve(), paths)
    result: dict = {"release": str(release), "release_images": len(mine.hashed), "release_errors": mine.errors,
                    "max_distance": max_distance, "hash_bits": HASH_BITS, "benchmarks": {}}
    for name, data in benchmarks.items():
        hashed, _ = hash_benchmark(name, data, images if name.startswith("vgmed-") else None)
        found = matches(mine.hashed, hashed.hashed, max_distance)
        result["benchmarks"][name] = {
            "data": str(data), "images": len(hashed.hashed), "errors": hashed.errors,
            "identical": len({m.release for m in found if m.kind == "identical"}),
            "near": len({m.release for m in found if m.kind == "near"} - {m.release for m in found
                                                                          if m.kind == "identical"}),
            "benchmark_images_matched": len({m.benchmark for m in found}),
            "matches": [m.__dict__ for m in found]}
    return result
