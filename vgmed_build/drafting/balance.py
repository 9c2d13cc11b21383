"""How many localization questions answered "no" each image of a source gets, so that the source's
"yes" and "no" answers balance (a model that always says yes must not score well).

Each image first gets ``per_region`` "no" per region, capped by the structures of its source with no
labelled pixel in it (its absent structures). An image that holds every structure of its source (an
axial brain slice, a CT slice with both labelled organs) can get none, so the shortfall of the source
is handed out to the images that have absent structures to spare, one more per image in turn, in order
of image id (a stable hash, so reruns plan the same slots), until the source's "no" count equals
``per_region`` x its regions or no image has an absent structure left. What is still missing then is
reported (``Balance.short``), never silently left unbalanced.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ImageAbsence:
    """One image of a source: its regions (each asked "yes") and its absent structures."""

    image_id: str
    regions: int
    absent: int

    def base(self, per_region: int) -> int:
        """The "no" questions the image gets before the source is balanced."""
        return min(per_region * self.regions, self.absent)


@dataclass
class Balance:
    """A source's "no" questions: the target (``per_region`` x regions), what the images allow, and the
    extra questions of the images that carry more than ``per_region`` per region."""

    target: int = 0
    planned: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def short(self) -> int:
        return self.target - self.planned


def balance_source(images: Iterable[ImageAbsence], per_region: int) -> Balance:
    """Plan the "no" questions of one source's images (see the module docstring). Only the images with
    absent structures to spare are held, so memory grows with those, not with the source."""
    out, spare = Balance(), []
    for img in images:
        out.target += per_region * img.regions
        out.planned += img.base(per_region)
        if img.absent > img.base(per_region):
            spare.append(img)
    spare.sort(key=lambda i: i.image_id)
    while out.short > 0 and spare:
        still = []
        for img in spare[: out.short]:
            n = out.extra[img.image_id] = out.extra.get(img.image_id, 0) + 1
            out.planned += 1
            if img.base(per_region) + n < img.absent:
                still.append(img)
        spare = still
    return out


def absent_slots(rank: int, regions: int, quota: int, per_region: int) -> list[int]:
    """Which of an image's ``quota`` "no" questions (numbered 0..quota-1, each about a different absent
    structure) the region at ``rank`` among the image's ``regions`` asks: its ``per_region`` own ones
    first, then every ``regions``-th of the extra ones, so the regions share the extras evenly."""
    own = [rank * per_region + k for k in range(per_region)]
    extra = range(regions * per_region + rank, quota, regions)
    return [j for j in own if j < quota] + list(extra)
