"""The manifest's ``counts`` and the tallies of its ``quality`` block, accumulated one record at a time,
so `release` writes each record as it builds it instead of holding them all (memory bound by the
number of distinct values counted, not by the number of records)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

QUALITY_GROUPS = ("q_type", "modality")  # the quality block's groupings (release_quality.GROUPS)


@dataclass
class GroupTally:
    """What the quality block says of one group's records."""

    records: int = 0
    reviewed: int = 0
    reviewers: int = 0  # summed over the reviewed records


@dataclass
class RecordCounts:
    by_file: Counter[str] = field(default_factory=Counter)
    by_q_type: Counter[str] = field(default_factory=Counter)
    by_modality: Counter[str] = field(default_factory=Counter)
    by_source: Counter[str] = field(default_factory=Counter)
    by_review_status: Counter[str] = field(default_factory=Counter)
    localization_answers: Counter[str] = field(default_factory=Counter)
    by_reviewers: Counter[int] = field(default_factory=Counter)
    agreement_sum: float = 0.0
    licences: set[tuple[str, str]] = field(default_factory=set)
    groups: dict[tuple[str, str], GroupTally] = field(default_factory=dict)

    @property
    def records(self) -> int:
        return sum(self.by_file.values())

    def add(self, file: str, record: dict) -> None:
        review = record["review"]
        n = int(review["n_reviewers"])
        self.by_file[file] += 1
        self.by_q_type[record["q_type"]] += 1
        self.by_modality[record["modality"]] += 1
        self.by_source[record["source"]["dataset"]] += 1
        self.by_review_status[review["status"]] += 1
        if record["q_type"] == "localization":
            self.localization_answers[record["answer"].lower()] += 1
        self.by_reviewers[n] += 1
        if n > 0:
            self.agreement_sum += float(review["agreement"])
        self.licences.add((record["source"]["dataset"], record["source"]["licence"]))
        for key in QUALITY_GROUPS:
            tally = self.groups.setdefault((key, record[key]), GroupTally())
            tally.records += 1
            tally.reviewed += n > 0
            tally.reviewers += n

    def review(self) -> dict[str, Any]:
        """How much review stands behind the records: how many had a reviewer, how many reviewers each
        (key: the number, as a string), and the mean agreement with the verdict over the reviewed ones
        (None when none was reviewed). The dataset card states these numbers instead of a claim."""
        reviewed = self.records - self.by_reviewers.get(0, 0)
        return {
            "reviewed": reviewed,
            "by_reviewers": {str(k): v for k, v in sorted(self.by_reviewers.items())},
            "mean_agreement": round(self.agreement_sum / reviewed, 4) if reviewed else None,
        }

    def manifest(self, images: int, files: list[str]) -> dict[str, Any]:
        """The manifest's ``counts``: ``images`` distinct images; ``files``: the configs' file names."""
        return {
            "records": self.records,
            "images": images,
            "by_file": {n: self.by_file.get(n, 0) for n in sorted(files)},
            "by_q_type": dict(sorted(self.by_q_type.items())),
            "by_modality": dict(sorted(self.by_modality.items())),
            "by_source": dict(sorted(self.by_source.items())),
            "by_review_status": dict(sorted(self.by_review_status.items())),
            "localization_answers": dict(sorted(self.localization_answers.items())),
            "review": self.review(),
        }
