"""Editable question templates (`prompts/`) and the offline, deterministic drafter built on them.

Templates are plain text / YAML files so that a user can change phrasings without touching code; each
draft records the template's name and the sha256 of its text, so a changed template is traceable.
Placeholders are ``{name}`` with a lowercase identifier; other braces (JSON examples) are left alone.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vgmed_build.drafting.wording import name_values, sentence
from vgmed_build.errors import VgmedError
from vgmed_build.modality import NATURAL as NATURAL_MODALITY
from vgmed_build.resources import resource_dir

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
NATURAL_FOLDER = "natural"
_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five"]
TARGET_PLACEHOLDERS = ("obj", "a_obj", "the_obj")


class TemplateError(VgmedError, ValueError):
    """A prompt/template file is missing, malformed or uses an unknown placeholder."""


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Template:
    name: str  # e.g. "localization[3]", "attribute:size", "llm_attribute"
    text: str

    @property
    def sha256(self) -> str:
        return sha256_text(self.text)

    def fill(self, values: dict[str, object]) -> str:
        """Replace ``{name}`` placeholders; an unknown placeholder is an error naming the template."""

        def sub(match: re.Match) -> str:
            key = match.group(1)
            if key not in values:
                raise TemplateError(f"template {self.name}: unknown placeholder {{{key}}}")
            return str(values[key])

        return _PLACEHOLDER.sub(sub, self.text)

    def ask_about(self, name: str) -> str:
        """The question about the target ``name``: articles and number agree with it ("grey matter",
        "an aorta", "kidneys are"), first letter upper case (see ``wording``)."""
        return sentence(self.fill(name_values(name)))


@dataclass(frozen=True)
class AttributeRule:
    name: str
    question: Template
    answer: str  # which geometry rule computes the answer (see ATTRIBUTE_ANSWERS)


@dataclass
class Prompts:
    """Every template the generate stage uses, loaded from one prompts folder."""

    localization: list[Template]
    position: list[Template]
    attributes: dict[str, AttributeRule]
    profiles: list[tuple[str, str, list[str]]]  # (modality, category, attribute names); "*" = any
    thresholds: dict[str, float]
    llm_attribute: tuple[Template, Template]  # (system, user)
    llm_paraphrase: tuple[Template, Template]
    folder: Path = field(default_factory=Path)
    natural: Prompts | None = None  # the set for natural photographs (``natural/`` in the folder)

    def for_region(self, region: dict) -> Prompts:
        """The template set of a region: natural photographs (the control set) have their own."""
        if self.natural is not None and region.get("modality") == NATURAL_MODALITY:
            return self.natural
        return self

    def attribute_profile(self, region: dict) -> list[str]:
        modality = str(region.get("modality", "")).lower()
        category = str(region.get("category", "")).lower()
        for mod, cat, names in self.profiles:
            if mod in ("*", modality) and cat in ("*", category):
                return names
        return []


def load_prompts(folder: Path | None = None) -> Prompts:
    """Load all templates from ``folder`` (default: the repository's ``prompts/``).

    A ``natural/`` sub-folder holds the set for natural photographs; each of its files that is
    missing falls back to the parent folder's file. Its template names start with ``natural/``.
    """
    folder = Path(folder) if folder else resource_dir("prompts")
    prompts = _load_set(folder, folder, "")
    if (folder / NATURAL_FOLDER).is_dir():
        prompts.natural = _load_set(folder / NATURAL_FOLDER, folder, f"{NATURAL_FOLDER}/")
    return prompts


def _load_set(folder: Path, fallback: Path, prefix: str) -> Prompts:
    def path(name: str) -> Path:
        return folder / name if (folder / name).is_file() else fallback / name

    loc_lines = _read(path("localization.txt")).splitlines()
    loc_texts = [ln.strip() for ln in loc_lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not loc_texts:
        raise TemplateError(f"{path('localization.txt')}: no templates")
    position = _yaml(path("position.yaml")).get("templates") or []
    attr_doc = _yaml(path("attribute_templates.yaml"))
    attributes = {}
    for name, spec in (attr_doc.get("attributes") or {}).items():
        if not isinstance(spec, dict) or "question" not in spec or spec.get("answer") not in ATTRIBUTE_ANSWERS:
            raise TemplateError(
                f"{path('attribute_templates.yaml')}: attribute {name!r} needs a question and an "
                f"answer rule out of {sorted(ATTRIBUTE_ANSWERS)}"
            )
        attributes[name] = AttributeRule(name, Template(f"{prefix}attribute:{name}", spec["question"]), spec["answer"])
    profiles = []
    for entry in attr_doc.get("profiles") or []:
        match = entry.get("match") or {}
        names = list(entry.get("attributes") or [])
        unknown = [n for n in names if n not in attributes]
        if unknown:
            raise TemplateError(f"{path('attribute_templates.yaml')}: profile {match} uses unknown {unknown}")
        profiles.append((str(match.get("modality", "*")).lower(), str(match.get("category", "*")).lower(), names))
    prompts = Prompts(
        localization=[Template(f"{prefix}localization[{i}]", t) for i, t in enumerate(loc_texts)],
        position=[Template(f"{prefix}position[{i}]", t) for i, t in enumerate(position)],
        attributes=attributes,
        profiles=profiles,
        thresholds={**DEFAULT_THRESHOLDS, **(attr_doc.get("thresholds") or {})},
        llm_attribute=(_template(path, "llm_attribute_system"), _template(path, "llm_attribute_user")),
        llm_paraphrase=(_template(path, "llm_paraphrase_system"), _template(path, "llm_paraphrase_user")),
        folder=folder,
    )
    for tpl in prompts.localization + prompts.position + [a.question for a in attributes.values()]:
        if not any(f"{{{key}}}" in tpl.text for key in TARGET_PLACEHOLDERS):
            raise TemplateError(
                f"{folder}: template {tpl.name} ({tpl.text!r}) names no target ({{obj}}, {{a_obj}} or {{the_obj}})"
            )
    return prompts


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError(f"{path}: cannot read template file ({exc.strerror})") from exc


def _yaml(path: Path) -> dict:
    try:
        doc = yaml.safe_load(_read(path)) or {}
    except yaml.YAMLError as exc:
        raise TemplateError(f"{path}: invalid YAML ({exc})") from exc
    if not isinstance(doc, dict):
        raise TemplateError(f"{path}: expected a mapping at the top level")
    return doc


def _template(path: Callable[[str], Path], name: str) -> Template:
    return Template(name, _read(path(f"{name}.txt")).strip())


# --- target names -------------------------------------------------------------------------------


def target_name(region: dict) -> str:
    """The name questions use for the target (the sources file's display name, e.g. gm -> grey matter)."""
    return region["display_name"]


def target_names(region: dict) -> list[str]:
    """Every accepted way to name the target: display name, synonyms, and the raw label."""
    names = [region["display_name"], *region.get("synonyms", []), region["label"].replace("_", " ")]
    seen: list[str] = []
    for name in names:
        name = " ".join(name.split())
        if name and name.lower() not in (s.lower() for s in seen):
            seen.append(name)
    return seen


# --- deterministic selection and geometry answers -----------------------------------------------


def region_offset(region_id: str, n: int) -> int:
    """A stable per-region rotation so that templates are spread evenly over regions."""
    return int(region_id[:8], 16) % n if n else 0


def pick_slots(region_id: str, n_available: int, n_wanted: int) -> list[int]:
    start = region_offset(region_id, n_available)
    return [(start + i) % n_available for i in range(min(n_wanted, n_available))]


DEFAULT_THRESHOLDS = {
    "small_max": 0.01,
    "large_min": 0.10,
    "elongated_min": 2.0,
    "middle_band": 0.1,
    "part_min_ratio": 0.002,
}

# An answer rule gives None where the question would have no answer a reader agrees with (a structure
# cut by the image edge, one spanning the image's parts): that question is not asked for that region.
AnswerRule = Callable[[dict, dict[str, float]], "str | None"]


def box_area(box: list[int]) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def parts(region: dict, t: dict[str, float]) -> list[list[int]]:
    """The region's boxes a reader counts as parts: those of at least ``part_min_ratio`` of the image
    (a box holds at least its component, so a smaller box is a speck a reader would not count)."""
    floor = t["part_min_ratio"] * int(region["width"]) * int(region["height"])
    return [b for b in region["boxes"] if box_area(b) >= floor]


def touches_edge(box: list[int], region: dict) -> bool:
    """Whether a box reaches the image border: the structure may go on outside the image."""
    return box[0] <= 0 or box[1] <= 0 or box[2] >= int(region["width"]) or box[3] >= int(region["height"])


def size_answer(region: dict, t: dict[str, float]) -> str | None:
    ratio = float(region["area_ratio"])
    return "small" if ratio < t["small_max"] else "large" if ratio > t["large_min"] else "medium"


def count_answer(region: dict, t: dict[str, float]) -> str | None:
    """Parts above the size floor; not asked when none is, or when one is cut by the image edge."""
    found = parts(region, t)
    if not found or any(touches_edge(b, region) for b in found):
        return None
    return _NUMBER_WORDS[len(found)] if len(found) < len(_NUMBER_WORDS) else "more than five"


def shape_answer(region: dict, t: dict[str, float]) -> str | None:
    """Aspect of the largest part; not asked when the edge cuts it (its shape is not all visible)."""
    found = parts(region, t)
    if not found:
        return None
    x0, y0, x1, y1 = largest = max(found, key=box_area)
    if touches_edge(largest, region):
        return None
    w, h = x1 - x0, y1 - y0
    return "elongated" if max(w, h) / max(1, min(w, h)) >= t["elongated_min"] else "compact"


def _extent_part(lo: float, hi: float, size: float, band: float, names: tuple[str, str, str]) -> str | None:
    """Which part of an axis holds all of [lo, hi): the first half, the second half, or the central
    band (within ``band`` of the centre); None when the extent spans parts (the answer is arguable)."""
    if hi <= size / 2:
        return names[0]
    if lo >= size / 2:
        return names[2]
    if lo >= (0.5 - band) * size and hi <= (0.5 + band) * size:
        return names[1]
    return None


def vertical_answer(region: dict, t: dict[str, float]) -> str | None:
    """Part of the image holding every part of the target (not asked when the target spans parts:
    a structure across the centre is 'middle' in every image and says nothing about where it is)."""
    found = parts(region, t)
    if not found:
        return None
    y0, y1 = min(b[1] for b in found), max(b[3] for b in found)
    return _extent_part(y0, y1, int(region["height"]), t["middle_band"], ("upper", "middle", "lower"))


def horizontal_answer(region: dict, t: dict[str, float]) -> str | None:
    """Picture part holding every part of the target (natural photographs; patient sides are a
    different thing); not asked when the target spans parts."""
    found = parts(region, t)
    if not found:
        return None
    x0, x1 = min(b[0] for b in found), max(b[2] for b in found)
    return _extent_part(x0, x1, int(region["width"]), t["middle_band"], ("left", "centre", "right"))


ATTRIBUTE_ANSWERS: dict[str, AnswerRule] = {
    "horizontal": horizontal_answer,
    "size": size_answer,
    "count": count_answer,
    "shape": shape_answer,
    "vertical": vertical_answer,
}


def attribute_choices(prompts: Prompts, region: dict) -> list[tuple[AttributeRule, str]]:
    """The offline attribute questions ``region`` can be asked, with their answers, in slot order:
    the profile's attributes from a per-region offset, minus those without an agreed answer here."""
    profile = prompts.attribute_profile(region)
    start = region_offset(region["id"], len(profile))
    choices = []
    for name in profile[start:] + profile[:start]:
        rule = prompts.attributes[name]
        answer = ATTRIBUTE_ANSWERS[rule.answer](region, prompts.thresholds)
        if answer is not None:
            choices.append((rule, answer))
    return choices


def attribute_from_template(prompts: Prompts, region: dict, slot: int) -> tuple[Template, str, str] | None:
    """The slot-th offline attribute question of ``region``: (template, question, answer)."""
    choices = attribute_choices(prompts, region)
    if slot >= len(choices):
        return None
    rule, answer = choices[slot]
    return rule.question, rule.question.ask_about(target_name(region)), answer


def location_text(region: dict) -> str:
    """Where the centroid lies, in image terms (not patient sides, which the LLM must not guess)."""
    x, y = region["centroid"]
    return (
        f"centroid at {100 * x / region['width']:.0f}% of the width and {100 * y / region['height']:.0f}% "
        "of the height from the image's top-left corner"
    )
