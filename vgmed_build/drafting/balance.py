"""How many localization questions answered "no" each image of a source gets, so that the source's
"yes" and "no" answers balance (a model that always says yes must not score well).

Each image first gets ``per_region`` "no" per region, capped by the structures of its source with no
labelled pixel in it (its absent structures). An image that holds every structure of its source (an
axial brain slice, a CT slice with both labelled organs) can get none, so the shortfall of the source
is handed out to the images that have absent structures to spare, one more per image in turn, in order
of image id (a stable hash, so reruns plan the same slots), until the source's "no" count equals
``per_region`` x its regions or no image has an absent structure left. What is still missing then is
reported (``Balance.short``), never silently left unbalanced.

A source that stays short would still answer "yes" more often than "no", so by default
(``--unbalanced drop-yes``) it keeps only as many localization "yes" as it has "no" (``YesCut``): those
of the images that also carry a "no" first (an image asked both ways tests looking, not guessing),
then the other images, each group in order of image id, an image's regions in label order. A source
with no "no" at all keeps none. Deciding this holds one cut per short source, never a set of regions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ImageAbsence:
    """One image of a source: its regions (each asked "yes") and its absent structures (None where
    ingest did not record the image's labels: nothing is known to be absent, nothing is balanced)."""

    image_id: str
    regions: int
    absent: int | None

    def base(self, per_region: int) -> int:
        """The "no" questions the image gets before the source is balanced."""
        return min(per_region * self.regions, self.absent or 0)


@dataclass
class Balance:
    """A source's "no" questions: the target (``per_region`` x regions), what the images allow, and the
    extra questions of the images that carry more than ``per_region`` per region."""

    target: int = 0
    planned: int = 0
    extra: dict[str, int] = field(default_factory=dict)
    regions: int = 0  # regions on the images whose labels ingest recorded (each asked "yes")
    regions_with_no: int = 0  # ... of them on images with an absent structure (each carries a "no")
    unknown: int = 0  # regions on images whose labels ingest did not record: left out of the balance

    @property
    def short(self) -> int:
        return self.target - self.planned

    def yes_kept(self, per_region: int) -> int:
        """How many of its ``per_region`` x regions localization "yes" the source keeps when its surplus
        "yes" are left out: all where it balances, else as many as its "no"."""
        return min(per_region * self.regions, self.planned) if self.short > 0 else per_region * self.regions


def balance_source(images: Iterable[ImageAbsence], per_region: int) -> Balance:
    """Plan the "no" questions of one source's images (see the module docstring). Only the images with
    absent structures to spare are held, so memory grows with those, not with the source."""
    out, spare = Balance(), []
    for img in images:
        if img.absent is None:
            out.unknown += img.regions
            continue
        out.target += per_region * img.regions
        out.regions += img.regions
        out.regions_with_no += img.regions if img.absent else 0
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


def yes_order(img: ImageAbsence) -> tuple[bool, str]:
    """The order in which a short source's images keep their "yes": those with an absent structure
    (they carry a "no") first, then by image id."""
    return img.absent == 0, img.image_id


@dataclass(frozen=True)
class YesCut:
    """Which localization "yes" a short source keeps: every one of the images before ``image`` in
    :func:`yes_order`, the first ``rest`` of ``image``'s own (its regions in label order, each region's
    slots in turn), none after. ``image`` None: the source keeps none (it has no "no" at all)."""

    image: tuple[bool, str] | None
    rest: int = 0

    def kept(self, img: ImageAbsence, rank: int, per_region: int) -> int:
        """How many of its ``per_region`` "yes" the region at ``rank`` (label order) of ``img`` keeps."""
        if self.image is None or yes_order(img) > self.image:
            return 0
        if yes_order(img) < self.image:
            return per_region
        return min(per_region, max(0, self.rest - rank * per_region))


def cut_yes(images: Iterable[ImageAbsence], balance: Balance, per_region: int) -> YesCut | None:
    """The cut that keeps ``balance.yes_kept(per_region)`` of the source's "yes" (``per_region`` per
    region), read in one pass over the same images, in image id order, that made ``balance``; None when
    the source keeps every "yes". Holds nothing but a running count."""
    keep = balance.yes_kept(per_region)
    if keep >= per_region * balance.regions:
        return None
    if keep <= 0:
        return YesCut(None)
    with_no = per_region * balance.regions_with_no
    first = keep <= with_no  # the cut falls among the images that carry a "no"
    need = keep if first else keep - with_no
    for img in images:
        if img.absent is None or (img.absent > 0) != first:
            continue
        yes = per_region * img.regions
        if need <= yes:
            return YesCut(yes_order(img), need)
        need -= yes
    raise ValueError("cut_yes: the images are not those the balance was planned on")
