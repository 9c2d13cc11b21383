"""Read the sources file (TOML, YAML or JSON) and ``--source KIND:PATH`` flags into SourceSpecs.

Every key is checked: a typo in a sources file must fail loudly (naming the file, the source and the
key) instead of silently rendering with defaults. Rendering options get their defaults filled in here,
so the resume fingerprint of an item covers the options that were really used.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import tomllib

from vgmed_build.errors import VgmedError
from vgmed_build.modality import CT_WINDOWS, modality_problem
from vgmed_build.sources import SourceError, SourceSpec, get_adapter
from vgmed_build.sources.base import MAX_SIDE_PX, OPTION_TYPES

PLANES = ("axial", "coronal", "sagittal")
# Rendered pixel sizes a sources file may ask for: finer than 10 micrometres is no radiology image (and
# renders a slice of a few hundred mm to millions of pixels a side), coarser than 100 mm no anatomy.
SPACING_RANGE_MM = (0.01, 100.0)
SLICE_POLICIES = ("largest", "all", "every_n")
# Rendering / selection options shared by every source kind, with their defaults (see docs/ingest.md).
DEFAULT_OPTIONS: dict[str, Any] = {
    "plane": "axial",  # slice plane of 3D sources
    "slice_policy": "largest",  # largest | all | every_n
    "every_n": 5,  # every_n policy: slices whose index is a multiple of n
    "min_area_px": 64,  # a structure must cover this many pixels on a slice to be selected
    "min_component_px": 16,  # connected components smaller than this are dropped (specks)
    "max_area_ratio": 0.4,  # a region covering more of the image than this is dropped (huge targets)
    "connectivity": 2,  # 1: 4-neighbourhood, 2: 8-neighbourhood
    "window": "auto",  # auto | CT preset name | [level, width] | percentile
    "percentiles": [0.5, 99.5],  # intensity clip of MR / PET / percentile windowing
    "spacing_mm": None,  # in-plane pixel size of rendered slices (default: finest in-plane spacing)
    "min_side_px": 512,  # enlarge smaller images / slices so the short side has this many pixels (0: never)
    "midline_mm": None,  # world x (RAS mm) of the patient midline (default: x-centre of the volume)
    "midline_margin_mm": 5.0,  # a component straddling the midline within this margin is 'midline'
    "channel": None,  # which channel of a 4D / multi-channel image to use
}

SOURCE_KEYS = {
    "name",
    "kind",
    "path",
    "modality",
    "body_part",
    "labels",
    "display_names",
    "synonyms",
    "categories",
    "dataset",
    "licence",
    "options",
}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ConfigError(VgmedError, ValueError):
    """The sources file or a --source flag is wrong; the message names the file, source and key."""


def load_sources_file(path: str | Path) -> list[SourceSpec]:
    """Parse a sources file; paths inside it are relative to the file's folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read sources file ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); save the sources file as UTF-8"
        ) from exc
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(
                f"{path}: unknown sources file type {suffix!r} (use .toml, .yaml, .yml or .json)"
            )
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{path}: cannot parse ({exc})") from exc
    except Exception as exc:  # yaml.YAMLError has no common base with the others
        raise ConfigError(f"{path}: cannot parse ({exc})") from exc
    if isinstance(data, dict):
        extra = set(data) - {"source", "sources"}
        if extra:
            raise ConfigError(
                f"{path}: unknown top-level key(s) {sorted(extra)}; expected 'source' "
                "(a list of source entries, e.g. TOML [[source]])"
            )
        entries = data.get("source", data.get("sources"))
    else:
        entries = data
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: no sources; expected a non-empty list under 'source'")
    specs = [_spec_from_entry(entry, path, i) for i, entry in enumerate(entries)]
    check_unique_names(specs, str(path))
    return specs


def parse_option_flags(flags: list[str]) -> dict[str, Any]:
    """``--option KEY=VALUE`` flags -> options. A value is read as a TOML value when it is one
    (``channel=1``, ``skip_empty=false``, ``cases=["s0001"]``), else taken as a string (``window=liver``)."""
    options: dict[str, Any] = {}
    for flag in flags:
        key, sep, raw = flag.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--option {flag!r}: expected KEY=VALUE, e.g. channel=1")
        try:
            options[key] = tomllib.loads(f"value = {raw}")["value"]
        except tomllib.TOMLDecodeError:
            options[key] = raw
    return options


def parse_source_flag(
    flag: str, modality: str | None = None, body_part: str = "", options: dict[str, Any] | None = None
) -> SourceSpec:
    """``--source KIND:PATH`` -> a SourceSpec named after the path's folder (``Task03_Liver``).

    DICOM folders are often named after the patient or the accession, and a source's name reaches the
    release as its dataset name, so a DICOM source is named ``dicom-<hash of the path>`` instead.
    """
    kind, sep, raw_path = flag.partition(":")
    if not sep or not kind or not raw_path:
        raise ConfigError(f"--source {flag!r}: expected KIND:PATH, e.g. msd:/data/Task03_Liver")
    problem = modality_problem(modality) if modality else None
    if problem:
        raise ConfigError(f"--modality: {problem}")
    path = Path(raw_path).expanduser()
    if kind == "dicom":
        name = f"dicom-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}"
    else:
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", path.resolve().name).strip("._-") or kind
    entry: dict[str, Any] = {"name": name, "kind": kind, "path": str(path), "body_part": body_part}
    if modality:
        entry["modality"] = modality
    if options:
        entry["options"] = options
    return _spec_from_entry(entry, None, 0, where=f"--source {flag!r}")


def _spec_from_entry(entry: Any, file: Path | None, index: int, where: str | None = None) -> SourceSpec:
    where = where or f"{file}: source #{index + 1}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a table/mapping, got {type(entry).__name__}")
    if "name" in entry:
        where = f"{file}: source {entry['name']!r}" if file else where
    _reject_unknown(entry, SOURCE_KEYS, where)
    for key in ("kind", "path"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise ConfigError(f"{where}: key {key!r} is required (a non-empty string)")
    kind = entry["kind"]
    try:
        adapter = get_adapter(kind)
    except SourceError as exc:
        raise ConfigError(f"{where}: key 'kind': {exc}") from exc
    modality = _opt_str(entry, "modality", where)
    problem = modality_problem(modality) if modality else None
    if problem:
        raise ConfigError(f"{where}: key 'modality': {problem}")
    path = Path(entry["path"]).expanduser()
    if file is not None and not path.is_absolute():
        path = file.parent / path
    name = entry.get("name") or re.sub(r"[^A-Za-z0-9._-]+", "_", path.name)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"{where}: key 'name': {name!r} must be letters, digits, '.', '_' or '-'")
    return SourceSpec(
        name=name,
        kind=kind,
        path=path,
        modality=modality or None,
        body_part=_opt_str(entry, "body_part", where),
        labels=_str_map(entry, "labels", where),
        display_names=_str_map(entry, "display_names", where),
        synonyms=_synonyms(entry, where),
        categories=_str_map(entry, "categories", where),
        dataset=_opt_str(entry, "dataset", where),
        licence=_opt_str(entry, "licence", where),
        options=normalise_options(entry.get("options") or {}, where, adapter.option_types),
    )


def normalise_options(options: Any, where: str, adapter_types: dict[str, str] | None = None) -> dict:
    """Check option names and values and fill in defaults.

    ``adapter_types``: the source kind's own options, name -> a key of ``OPTION_TYPES``; each value
    given is type-checked (a quoted "false" is a string, never a boolean).
    """
    adapter_types = adapter_types or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: key 'options' must be a table/mapping")
    _reject_unknown(options, set(DEFAULT_OPTIONS) | set(adapter_types), f"{where}: options")
    out = dict(DEFAULT_OPTIONS)
    out.update(options)

    def bad(key: str, expected: str) -> ConfigError:
        return ConfigError(
            f"{where}: option {key!r} = {out[key]!r} ({type(out[key]).__name__}): expected {expected}"
        )

    for key, expected in adapter_types.items():
        if key in options and not OPTION_TYPES[expected](options[key]):
            raise bad(key, expected)

    if out["plane"] not in PLANES:
        raise bad("plane", " | ".join(PLANES))
    if out["slice_policy"] not in SLICE_POLICIES:
        raise bad("slice_policy", " | ".join(SLICE_POLICIES))
    for key in ("every_n", "min_area_px", "min_component_px"):
        if (
            not isinstance(out[key], int)
            or isinstance(out[key], bool)
            or out[key] < (1 if key == "every_n" else 0)
        ):
            raise bad(key, "a non-negative integer" if key != "every_n" else "a positive integer")
    if out["connectivity"] not in (1, 2):
        raise bad("connectivity", "1 or 2")
    if not _is_number(out["max_area_ratio"]) or not 0 < out["max_area_ratio"] <= 1:
        raise bad("max_area_ratio", "a number in (0, 1]")
    window = out["window"]
    if isinstance(window, list):
        if len(window) != 2 or not all(_is_finite(v) for v in window) or window[1] <= 0:
            raise bad("window", "[level, width], finite numbers with width > 0")
        out["window"] = [float(v) for v in window]
    elif window not in ("auto", "percentile", *CT_WINDOWS):
        raise bad("window", f"auto | percentile | [level, width] | one of {', '.join(CT_WINDOWS)}")
    pct = out["percentiles"]
    if (
        not isinstance(pct, list)
        or len(pct) != 2
        or not all(_is_number(v) for v in pct)
        or not 0 <= pct[0] < pct[1] <= 100
    ):
        raise bad("percentiles", "[low, high] with 0 <= low < high <= 100")
    out["percentiles"] = [float(v) for v in pct]
    low, high = SPACING_RANGE_MM
    if out["spacing_mm"] is not None and (not _is_finite(out["spacing_mm"]) or not low <= out["spacing_mm"] <= high):
        raise bad("spacing_mm", f"a number of millimetres from {low} to {high:g}")
    side = out["min_side_px"]
    if not isinstance(side, int) or isinstance(side, bool) or not 0 <= side <= MAX_SIDE_PX:
        raise bad("min_side_px", f"a whole number of pixels from 0 (never enlarge) to {MAX_SIDE_PX}")
    if out["midline_mm"] is not None and not _is_finite(out["midline_mm"]):
        raise bad("midline_mm", "a finite number of millimetres")
    if not _is_finite(out["midline_margin_mm"]) or out["midline_margin_mm"] < 0:
        raise bad("midline_margin_mm", "a finite number of millimetres, 0 or more")
    if out["channel"] is not None and (not isinstance(out["channel"], int) or out["channel"] < 0):
        raise bad("channel", "a non-negative integer")
    return out


def _reject_unknown(mapping: dict, known: set[str], where: str) -> None:
    for key in mapping:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(sorted(known))}"
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")


def check_unique_names(specs: list[SourceSpec], where: str) -> None:
    """Source names key the catalog: two sources (file entries or --source flags) may not share one."""
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ConfigError(f"{where}: two sources are named {spec.name!r}; give each a unique 'name'")
        seen.add(spec.name)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    """A number that is not NaN or infinite (TOML reads ``nan`` and ``inf`` as floats)."""
    return _is_number(value) and math.isfinite(value)


def _opt_str(entry: dict, key: str, where: str) -> str:
    value = entry.get(key, "")
    if not isinstance(value, str):
        raise ConfigError(f"{where}: key {key!r} must be a string")
    return value


def _str_map(entry: dict, key: str, where: str) -> dict[str, str]:
    value = entry.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(f"{where}: key {key!r} must map names to strings")
    return {str(k): v for k, v in value.items()}


def _synonyms(entry: dict, where: str) -> dict[str, list[str]]:
    value = entry.get("synonyms") or {}
    ok = isinstance(value, dict) and all(
        isinstance(v, list) and all(isinstance(s, str) for s in v) for v in value.values()
    )
    if not ok:
        raise ConfigError(f"{where}: key 'synonyms' must map label names to lists of strings")
    return {str(k): list(v) for k, v in value.items()}
