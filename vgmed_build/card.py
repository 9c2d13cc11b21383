"""The dataset card (README.md) of a release: Hugging Face YAML front matter plus the sections a
reader needs to use the data correctly (how it was made, how it was reviewed, the box convention).

Rendered only from the manifest (minus its file list and creation time), so the card is
byte-identical whenever the release content is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

# Licence identifiers the Hugging Face Hub accepts in `license:`; anything else becomes `other`.
HF_LICENCES = frozenset(
    {
        "apache-2.0",
        "mit",
        "cc0-1.0",
        "cc-by-2.0",
        "cc-by-3.0",
        "cc-by-4.0",
        "cc-by-sa-3.0",
        "cc-by-sa-4.0",
        "cc-by-nc-2.0",
        "cc-by-nc-3.0",
        "cc-by-nc-4.0",
        "cc-by-nc-sa-3.0",
        "cc-by-nc-sa-4.0",
        "cc-by-nc-nd-3.0",
        "cc-by-nc-nd-4.0",
        "cc-by-nd-4.0",
        "odc-by",
        "odbl",
        "pddl",
        "bsd-3-clause",
        "gpl-3.0",
        "openrail",
    }
)
REQUIRED_SECTIONS = (
    "Dataset description",
    "Construction",
    "Review",
    "Statistics",
    "Intended use",
    "Limitations",
)
PREVIEW_MARK = "PREVIEW"
PREVIEW_TAG = "preview"  # in a preview card's front matter `tags`, which the Hub shows and filters on
# The card's own words that mark a folder as a vgmed release (validate needs its manifest then).
CARD_MARK = "Built with vgmed"


def hub_licence(licences: list[tuple[str, str]]) -> str:
    """One Hub licence id when every source shares a known one, else 'other'."""
    ids = {lic.strip().lower() for _, lic in licences}
    return ids.pop() if len(ids) == 1 and ids <= HF_LICENCES else "other"


def size_category(n: int) -> str:
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < limit:
            return name
    return "n>1M"


def licences_of(records: Iterable[dict]) -> list[tuple[str, str]]:
    """(dataset, licence) of every source the records come from, sorted (the card's licence table)."""
    return sorted({(r["source"]["dataset"], r["source"]["licence"]) for r in records})


def hub_data_files(configs: Iterable[str]) -> dict[str, str]:
    """The Hub's Parquet layout (``vgmed-build export --format hf``): ``data/<config>/test-*.parquet``."""
    return {config: f"data/{config}/test-*.parquet" for config in configs}


def front_matter(manifest: dict[str, Any], licences: list[tuple[str, str]],
                 data_files: dict[str, str] | None = None) -> dict[str, Any]:
    """The card's YAML: Hub metadata and one config per question file (``data_files``: config -> path or
    glob, default the release's own files); the first config is the default, so ``load_dataset(folder)``
    needs no config name. A preview says so in the metadata the Hub shows (title and tags)."""
    preview = bool(manifest["preview"])
    files = data_files or manifest["configs"]
    return {
        "pretty_name": manifest["name"] + (f" ({PREVIEW_MARK}: not a validated release)" if preview else ""),
        "license": hub_licence(licences),
        "language": ["en"],
        "task_categories": ["visual-question-answering", "object-detection"],
        "tags": ["medical", "visual-grounding", "vgmed"] + ([PREVIEW_TAG] if preview else []),
        "size_categories": [size_category(manifest["counts"]["records"])],
        "configs": [
            {"config_name": config, "data_files": [{"split": "test", "path": path}]}
            | ({"default": True} if not i else {})
            for i, (config, path) in enumerate(files.items())
        ],
    }


def _table(title: str, counts: dict[str, int]) -> str:
    rows = "\n".join(f"| {key} | {value} |" for key, value in counts.items())
    return f"| {title} | questions |\n|---|---|\n{rows}\n"


def _answers_text(counts: dict[str, Any]) -> str:
    answers = counts.get("localization_answers")
    if answers is None:
        return "not counted in this release's manifest"
    return ", ".join(f"{n} {a!r}" for a, n in answers.items()) or "none"


def _reviewers_text(by_reviewers: dict[str, int]) -> str:
    """'12 by 1 reviewer, 80 by 2 reviewers' (unreviewed records are counted elsewhere)."""
    parts = [f"{n} by {k} reviewer{'s' if k != '1' else ''}" for k, n in by_reviewers.items() if k != "0" and n]
    return ", ".join(parts)


def review_text(manifest: dict[str, Any]) -> str:
    """What review stands behind the records, in numbers from the manifest, never a blanket claim:
    how many questions a clinician reviewed, by how many reviewers, and their agreement."""
    counts, preview = manifest["counts"], manifest["preview"]
    total, review = counts["records"], counts.get("review")
    if review is None:  # a manifest written before vgmed counted review
        return "This release's manifest does not record how many questions were reviewed."
    reviewed = review["reviewed"]
    if reviewed == 0:
        text = f"None of the {total} questions has been reviewed by a clinician yet."
    else:
        agreement = review["mean_agreement"]
        text = (
            f"Clinicians reviewed {reviewed} of the {total} questions ({_reviewers_text(review['by_reviewers'])})"
            + (f"; mean agreement with the final verdict {agreement:.2f}." if agreement is not None else ".")
        )
    if preview and reviewed < total:
        text += f" This is a PREVIEW: {total - reviewed} of the {total} questions have had no review at all."
    return text


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _num(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def quality_text(manifest: dict[str, Any]) -> str:
    """The quality the manifest states (``quality``, see release_quality.py), per question type and modality,
    and for a sampled release the audited error rate of the unreviewed records with its exact interval."""
    quality = manifest.get("quality")
    if quality is None:
        return ""
    rows = []
    for key, title in (("by_q_type", "question type"), ("by_modality", "modality")):
        rows.append(f"| {title} | questions | clinician-reviewed | reviewers per reviewed item | kappa (accept vs "
                    "reject) | judge precision | judge recall |\n|---|---|---|---|---|---|---|")
        rows += [f"| {name} | {g['records']} | {g['reviewed']} | {_num(g['reviewers_per_item'])} | {_num(g['kappa'])} "
                 f"| {_pct(g['judge_precision'])} | {_pct(g['judge_recall'])} |" for name, g in quality[key].items()]
        rows.append("")
    lines = ["Quality per question type and modality (kappa and the VLM judge's precision / recall of a flag are "
             "measured against the clinicians' decisions on every decided draft of the group; n/a: undefined or "
             "not measured):", "", *rows]
    judge = quality.get("judge")
    if judge:
        ci = judge["ci95"]
        lines.append(f"Over all {judge['drafts']} decided drafts the judge's flag had precision "
                     f"{_pct(judge['precision'])} (95% bootstrap interval {_pct(ci['precision'][0])}-"
                     f"{_pct(ci['precision'][1])}) and recall {_pct(judge['recall'])} ({_pct(ci['recall'][0])}-"
                     f"{_pct(ci['recall'][1])}).")
    sampled = quality.get("sampled")
    if sampled:
        low, high = sampled["ci95"]
        lines.append(
            f"**Sampled release:** {sampled['released_unreviewed']} questions were released without clinician "
            f"review because the VLM judge passed them (`review.status: judged`). A uniform random audit of "
            f"{sampled['audited']} judge-passed questions, reviewed by clinicians, found {sampled['errors']} wrong "
            f"(rejected or edited): estimated error rate of the unreviewed questions {_pct(sampled['error_rate'])}, "
            f"exact (Clopper-Pearson) 95% interval {_pct(low)}-{_pct(high)}, target {_pct(sampled['target'])}.")
    elif quality["unreviewed"] == 0 and manifest["counts"]["records"]:
        lines.append("Every question in this release was reviewed by a clinician.")
    return "\n".join(lines)


def render_card(manifest: dict[str, Any], licences: list[tuple[str, str]], hub: bool = False) -> str:
    """The README.md text for a release described by ``manifest`` (files and created are not used).

    ``hub``: the card of the Hub Parquet export (configs ``data/<config>/test-*.parquet``, images inside
    the Parquet files) instead of the release folder's (JSONL files, ``images/``)."""
    counts = manifest["counts"]
    files = hub_data_files(manifest["configs"]) if hub else manifest["configs"]
    policy = manifest["review_policy"]
    inclusive = manifest["bbox_convention"] == "xyxy_inclusive"
    name = manifest["name"]
    # The YAML header must open the file (the hub reads the configs from it); a preview's banner is
    # the first line after it.
    meta = front_matter(manifest, licences, files)
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip()]
    lines.append("---")
    if manifest["preview"]:
        unreviewed = counts["records"] - counts["by_review_status"].get("accepted", 0)
        lines.append(
            f"**{PREVIEW_MARK}: NOT A VALIDATED RELEASE.** Built with --include-unreviewed: {unreviewed} of "
            f"{counts['records']} questions have not been accepted by clinical review. Do not evaluate or "
            "publish with it."
        )
    box_text = (
        "`[x0, y0, x1, y1]` with **inclusive** maximum pixel indices (`bbox_convention: xyxy_inclusive`, the "
        "convention of the published VGMED files): a target that covers only pixel column 5 has "
        "x0 = 5, x1 = 5."
        if inclusive
        else "`[x0, y0, x1, y1]` in pixel-edge coordinates with **exclusive** x1/y1 (`bbox_convention: "
        "xyxy_exclusive`): a target that covers only pixel column 5 has x0 = 5, x1 = 6, so the box width is "
        "x1 - x0. For the published VGMED convention (inclusive maxima) rebuild with `--bbox-convention "
        "published`, or subtract 1 from x1 and y1."
    )
    if hub:
        image_text = "the picture itself, a `datasets.Image`; its `path` is the release's `images/<id>.png`"
        schema_text = ("The release this folder was exported from (`vgmed-build export --format hf`) holds "
                       "the JSON Schemas of the records and its `manifest.json` with every file's SHA-256.")
        load_text = ('Load it with `datasets.load_dataset(FOLDER_OR_HUB_ID)` (the `localization` config) or '
                     '`datasets.load_dataset(FOLDER_OR_HUB_ID, "attribute")`; `image` decodes to a PIL image.')
    else:
        image_text = "path relative to this folder"
        schema_text = "The JSON Schemas in `schemas/` describe the records and `manifest.json`."
        load_text = ('Load it with `datasets.load_dataset("RELEASE")` (the `localization` config) or '
                     '`datasets.load_dataset("RELEASE", "attribute")` (`image` is then the path relative to the '
                     "release; `vgmed-build export --format hf` writes the Parquet layout with the images as "
                     "`datasets.Image`), or validate it with `vgmed-build validate`.")
    licence_rows = "\n".join(f"| {dataset} | {licence} |" for dataset, licence in licences)
    adjudicator = f", adjudicator {policy['adjudicator']}" if policy["adjudicator"] else ""
    lines.append(
        f"""
# {name} {manifest["version"]}

## Dataset description
A visual grounding benchmark for medical multimodal LLMs, built like VGMED ("How Do Medical MLLMs
Fail? A Study on Visual Grounding in Medical Images") with the vgmed toolkit. Every question about a
structure in the image is tied to its annotated region(s), so a model's attention can be compared with
where the target is.
It has {counts["records"]} questions on {counts["images"]} images in two configurations:

- `localization` (`{files["localization"]}`, the default config): "is there a ... in the image?" questions
  whose answer is "yes", or "no" for a structure of the same source that the image does not hold
  (`absent: true`, no boxes; grounding evaluation skips them). Localization answers in all question
  files: {_answers_text(counts)}.
- `attribute` (`{files["attribute"]}`): one simple question about a visual attribute of
  the boxed target (`q_type: attribute`), and position questions whose answer is the patient side
  computed from the image geometry (`q_type: position`).

Each record has `id`, `image` ({image_text}), `question`, `answer`, `bbox` (one box per
connected component of the target), `bbox_convention`, `q_type`, `absent`, `modality`, `body_part`, `label`,
`side`, `plane` (slice plane; `2d` for 2D sources), `area_ratio` (mask area / image area), `width`,
`height`, `source` (dataset and licence) and `review` (status, number of reviewers, agreement, whether
review edited the item). A record may also have `mask`, the target's own pixels as uncompressed COCO RLE
(`pycocotools.mask.decode(pycocotools.mask.frPyObjects(mask, height, width))`), which a record about an
absent structure, one whose boxes review changed, or one built before vgmed kept masks lacks (box
only). {schema_text}

**Box convention.** `bbox` holds pixel coordinates of the released image, {box_text}

## Construction
{CARD_MARK} {manifest["tool"]["version"]}: source segmentation datasets were rendered into 2D images
(3D volumes reoriented, resampled to square pixels, windowed per modality, shown in radiological
convention), each labelled structure became a region with boxes from its mask's connected components,
localization questions came from fixed templates and attribute questions from templates or an LLM, and
automatic checks rejected unusable drafts before review. Images are named by stable ids and carry no
metadata; nothing from the source files' headers is part of this release.

## Review
Drafts are reviewed in Label Studio (accept, edit or reject; edits of the question, answer and boxes
are applied). {review_text(manifest)} Decision policy: `{policy["policy"]}`{adjudicator}.
{
            "This preview ALSO contains questions that review has not accepted (see `review.status`)."
            if manifest["preview"]
            else "Accepted questions, and questions the judge passed under the sampled policy below, are included."
            if policy["policy"] == "sampled"
            else "Only accepted questions are included."
        }

{quality_text(manifest)}

## Statistics
{_table("question type", counts["by_q_type"])}
{_table("modality", counts["by_modality"])}
{_table("source", counts["by_source"])}
{_table("review status", counts["by_review_status"])}
| source | licence |
|---|---|
{licence_rows}

## Intended use
Evaluation only: measuring whether medical multimodal LLMs attend to the queried structure (attention
ratio, KL and JS divergence against the boxes) and testing inference-time methods such as VGRefine.
{load_text}

## Limitations
- Boxes come from segmentation masks; they bound the mask, not the clinical finding's full extent.
- 2D slices of 3D volumes lose context; patient side is `unknown` for 2D sources without geometry.
- Attribute answers are short reference answers agreed by a small number of reviewers; they are not
  diagnoses and must not be used for clinical decisions or to train clinical systems.
- The source datasets' licences apply (see the table above).
"""
    )
    return "\n".join(lines)
