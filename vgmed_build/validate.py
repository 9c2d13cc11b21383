"""`vgmed-build validate DIR`: check a release (ours, or a published VGMED download).

Checks: every record against its schema, every image present, readable and not blank (one value
everywhere, e.g. a volume of NaNs rendered black), boxes inside their image, masks (where a record
carries one) of the image's size, inside the boxes and of the record's area_ratio,
no duplicate ids, checksums and counts against the manifest, the dataset card, and no patient
identifiers anywhere (record text, card, manifest, file names, image metadata; plus the strings of a
forbid file in every byte). A release of ours needs its manifest; a published download (the separate
``--published`` mode) has no manifest, no ids and no card: what cannot
be checked is listed as skipped. Problems come out as ``file:line: message`` (line 0 = whole file).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from PIL import Image

from vgmed_build.card import CARD_MARK, PREVIEW_MARK, PREVIEW_TAG, REQUIRED_SECTIONS
from vgmed_build.catalog.scratch import SeenStore, sorted_unique
from vgmed_build.identifiers import (
    Forbidden,
    find_forbidden,
    find_forbidden_bytes,
    find_patterns,
    load_forbid_file,
)
from vgmed_build.pngmeta import PNG_SIGNATURE, PNGError, metadata_chunks
from vgmed_build.release_counts import RecordCounts
from vgmed_build.release_format import (
    CARD_FILE,
    CONFIGS,
    DEFAULT_READING,
    LATER_COUNTS,
    MANIFEST_FILE,
    MASK_FIELD,
    MAX_LINE_CHARS,
    PUBLISHED_GRID,
    PUBLISHED_SIZE,
    RELEASE_SCHEMAS,
    BoxError,
    BoxReading,
    RecordFileError,
    box_format,
    box_problem,
    gt_tokens_mapping,
    gt_tokens_of,
    leaves_root,
    listed_file_problems,
    manifest_configs,
    mask_problem,
    raw_boxes,
    read_lines,
    record_boxes,
    record_file,
    resolve_image,
)
from vgmed_build.release_manifest import FILE_ENTRY, FILES, read_manifest, walk
from vgmed_build.resources import format_schema_error, schema_error_paths, schema_errors, schema_problems

TEXT_SUFFIXES = {".jsonl", ".json", ".md", ".txt", ".csv", ".yaml", ".yml"}
JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')  # a JSON string literal, escapes included


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    message: str

    def format(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass
class ValidationReport:
    root: Path
    kind: str  # the layout checked: "vgmed" (a release of ours, with manifest.json) or "published"
    problems: list[Problem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    n_records: int = 0
    n_images: int = 0
    images_dir: Path | None = None  # where published pictures live (None: under root)
    reading: BoxReading = DEFAULT_READING
    gt_tokens_agree: dict[str, int] = field(default_factory=dict)  # published mapping -> records it reproduces
    gt_tokens_disagree: list[Problem] = field(default_factory=list)  # listed, not problems: see gt_tokens_note
    outside: set[str] = field(default_factory=set)  # symbolic links leading out of root: never read

    def add(self, file: str, line: int, message: str) -> None:
        self.problems.append(Problem(file, line, message))


@dataclass
class _ImageInfo:
    size: tuple[int, int] | None  # None when unreadable
    error: str | None


# ---------------------------------------------------------------- the validator


LAYOUTS = ("vgmed", "published")


def links_leaving(root: Path) -> list[str]:
    """Paths under ``root`` that are symbolic links leading out of it (or loops); nothing is read."""
    return sorted(rel for rel, entry in walk(root) if entry.is_symlink() and leaves_root(root, rel))


def ours_signs(root: Path, outside: set[str] = frozenset()) -> list[str]:
    """What marks ``root`` as written by vgmed (its dataset card, its schemas, record ids).

    A folder with any of these is a vgmed release and is only valid with its manifest: deleting
    ``manifest.json`` must not turn a changed release into a "published download" that passes.
    ``outside``: paths never to read (symbolic links leading out of ``root``).
    """
    signs = []
    card = root / CARD_FILE
    if CARD_FILE not in outside and card.is_file() and CARD_MARK in card.read_text(encoding="utf-8", errors="replace"):
        signs.append(f"vgmed's dataset card ({CARD_FILE})")
    if any((root / "schemas" / f"{name}.schema.json").is_file() for name in RELEASE_SCHEMAS):
        signs.append("vgmed's schemas/")
    for name in sorted(p.name for p in root.glob("*.jsonl") if p.name not in outside):
        with open(root / name, encoding="utf-8", errors="replace") as fh:
            first = fh.readline()
        try:
            record = json.loads(first)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "id" in record:
            signs.append(f"record ids ({name})")
            break
    return signs


def validate_release(
    root: str | Path,
    forbid: list[Forbidden] | None = None,
    layout: str = "vgmed",
    *,
    images: Path | None = None,
    reading: BoxReading = DEFAULT_READING,
) -> ValidationReport:
    """Validate the release directory ``root``; see the module docstring for what is checked.

    ``layout`` 'vgmed' (a release of ours: its manifest is required) or 'published' (a published
    VGMED download, which has no manifest: what cannot be checked is listed as skipped).
    ``images`` / ``reading``: where a published download's pictures live and how its boxes are read.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    root = Path(root)
    forbid = forbid or []
    report = ValidationReport(root=root, kind=layout, images_dir=images, reading=reading)
    if not root.is_dir():
        report.add(str(root), 0, "not a directory" if root.exists() else "does not exist")
        return report
    report.outside = set(links_leaving(root))
    for rel in sorted(report.outside):
        report.add(rel, 0, f"{leaves_root(root, rel)}: not read (a release holds its own files)")
    has_manifest = (root / MANIFEST_FILE).is_file() and MANIFEST_FILE not in report.outside
    if layout == "published":
        signs = ours_signs(root, report.outside) + ([MANIFEST_FILE] if has_manifest else [])
        if signs:
            report.add(
                ".", 0, f"holds {', '.join(signs)}: this is a vgmed release, not a published download; "
                "validate it without --published (it needs its manifest.json)"
            )
    elif not has_manifest and MANIFEST_FILE not in report.outside:
        report.add(
            MANIFEST_FILE, 0, "missing: a vgmed release is checked against its manifest (checksums, file list, "
            "counts); for a published VGMED download use --published"
        )
    record_files = sorted(p.name for p in root.glob("*.jsonl") if p.name not in report.outside)
    if not record_files:
        report.add(".", 0, f"no question files ({', '.join(sorted(CONFIGS.values()))}) here")
    with SeenStore() as seen:
        manifest = _load_manifest(report, seen) if layout == "vgmed" and has_manifest else None
        _check_records(report, manifest, record_files, seen, forbid)
    return report


def _check_records(
    report: ValidationReport, manifest: dict | None, record_files: list[str], seen: SeenStore,
    forbid: list[Forbidden],
) -> None:
    """The checks that read the records, file by file as a stream: what the cross-record checks need
    (ids, images read) goes to ``seen``, the manifest's counts are tallied as the records pass."""
    layout, root = report.kind, report.root
    counts = RecordCounts()
    all_valid = True
    for name in record_files:
        convention = manifest.get("bbox_convention") if manifest else None
        all_valid &= _check_record_file(report, name, seen, counts, convention)
    report.n_images = seen.count_images()
    _scan_tree(report, forbid, referenced=seen.has_image)
    if layout == "vgmed":
        if manifest is not None:
            _check_manifest(report, manifest, seen, counts, record_files, all_valid)
            _check_card(report, manifest)
        else:
            report.skipped.append(f"checksums, file list, counts and card: no readable {MANIFEST_FILE}")
    else:
        report.skipped.append("checksums, file list and counts: a published download has no manifest.json")
        report.skipped.append(
            "record schema: only the fields the public evaluator reads (schemas/published_record.schema.json)"
        )
        if not seen.any_id():
            report.skipped.append("duplicate ids: the records carry no id field")
        if not (root / CARD_FILE).is_file():
            report.skipped.append("dataset card: no README.md")


def validate_dir(
    release_dir: str | Path,
    *,
    forbid_file: str | Path | None = None,
    published: bool = False,
    images: str | Path | None = None,
    bbox_format: str | None = None,
) -> ValidationReport:
    """Check a release as `vgmed-build validate` does (``vgmed_build.api.validate`` for scripts);
    ``report.problems`` lists every problem found (empty: valid). ``published``: a published VGMED
    download (no manifest; ``images`` / ``bbox_format`` say where its pictures are and how its boxes
    read). Raises ForbidFileError, NotADirectoryError (``release_dir`` is not a folder)."""
    forbid = load_forbid_file(forbid_file) if forbid_file else []
    root = Path(release_dir)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: {'not a directory' if root.exists() else 'no such directory'}")
    return validate_release(
        root,
        forbid,
        layout="published" if published else "vgmed",
        images=Path(images) if images is not None else None,
        reading=BoxReading(format=bbox_format),
    )


def _load_manifest(report: ValidationReport, seen: SeenStore) -> dict | None:
    """The manifest's head (its ``files`` emptied); the files it lists go to ``seen``, one at a time."""
    try:
        manifest = read_manifest(report.root / MANIFEST_FILE)
        seen.add_listed(manifest.files())
    except (OSError, ValueError) as exc:  # ValueError: json.JSONDecodeError, UnicodeDecodeError
        report.add(MANIFEST_FILE, getattr(exc, "lineno", 0), f"cannot be read as JSON ({exc})")
        return None
    errors = schema_error_paths("manifest", manifest.head)
    for rel, entry in seen.listed():  # problems of a listed file's entry, as those of the whole manifest
        if schema_problems("manifest", entry, FILE_ENTRY):  # the fast check first: millions of entries
            errors += [((FILES, rel, *path), message)
                       for path, message in schema_error_paths("manifest", entry, FILE_ENTRY)]
    for path, message in sorted(errors, key=lambda error: list(error[0])):
        report.add(MANIFEST_FILE, 0, f"schema: {format_schema_error(path, message)}")
    return manifest.head if isinstance(manifest.head, dict) else None


def _check_record_file(
    report: ValidationReport, name: str, seen: SeenStore, counts: RecordCounts, convention: str | None
) -> bool:
    """Check one JSONL file line by line (a stream: one record in memory); return whether all were
    schema-valid. Valid records of ours are tallied in ``counts``.

    ``convention`` is the manifest's bbox convention, which every record of ours must state.
    """
    ours = report.kind == "vgmed"
    all_valid = True
    try:
        lines = read_lines(report.root / name, blank_lines=True)
        first = next(lines, None)
    except RecordFileError as exc:
        report.add(name, 0, str(exc).removeprefix(f"{report.root / name}: "))
        return False
    for line in itertools.chain([] if first is None else [first], lines):
        number, record = line.number, line.record
        if line.error:
            report.add(name, number, line.error)
            all_valid &= line.blank
            continue
        errors = schema_errors("release_record" if ours else "published_record", record)
        for error in errors:
            report.add(name, number, f"schema: {error}")
        if errors or not isinstance(record, dict):
            all_valid = False
            continue
        report.n_records += 1
        if ours:
            counts.add(name, record)
        rid = record.get("id")
        if rid is not None and (first_at := seen.first_seen(rid, f"{name}:{number}")) is not None:
            report.add(name, number, f"duplicate id {rid} (first seen at {first_at})")
        expected = record_file(record["q_type"], record.get("modality", "")) if ours else name
        if expected != name:
            report.add(name, number, f"q_type {record['q_type']!r} of a {record.get('modality')} image belongs in "
                       f"{expected}")
        if convention and record.get("bbox_convention") != convention:
            report.add(name, number, f"bbox_convention {record['bbox_convention']} but the manifest says {convention}")
        _check_record_image(report, name, number, record, seen, ours)
    return all_valid


def _check_record_image(
    report: ValidationReport, name: str, number: int, record: dict, seen: SeenStore, ours: bool
) -> None:
    rel = str(record["image"])
    known = seen.image(rel)
    if known is None:
        try:
            base = report.root if ours else (report.images_dir or report.root)
            path = (report.root / rel) if ours else resolve_image(record["image"], report.root, report.images_dir)
            info = _read_image(path, base)
        except ValueError as exc:
            info = _ImageInfo(None, str(exc))
        seen.add_image(rel, info.size, info.error)
        known = info.size, info.error
    size, error = known
    if error:
        report.add(name, number, f"image {rel}: {error}")
        return
    width, height = size
    if ours:
        if (record["width"], record["height"]) != (width, height):
            report.add(
                name,
                number,
                f"width/height {record['width']}x{record['height']} but image {rel} is {width}x{height}",
            )
        fmt = "xyxy_exclusive" if record["bbox_convention"] == "xyxy_exclusive" else "xyxy_inclusive"
        boxes = record["bbox"]
    else:
        try:
            boxes, fmt = raw_boxes(record), box_format(record, name, report.reading)[0]
            fmt = "xyxy" if fmt == "xyxy_inclusive" else fmt  # the published name in messages
        except BoxError as exc:
            report.add(name, number, str(exc))
            return
    found = [problem for box in boxes if (problem := box_problem(box, fmt, width, height))]
    for problem in found:
        report.add(name, number, problem)
    if not found and ours and MASK_FIELD in record:
        problem = mask_problem(record[MASK_FIELD], record_boxes(record, name)[0], width, height, record["area_ratio"])
        if problem:
            report.add(name, number, problem)
    if not found and not ours:
        _check_gt_tokens(report, name, number, record, width, height)


def _check_gt_tokens(report: ValidationReport, name: str, number: int, record: dict, width: int, height: int) -> None:
    """Compare ``gt_tokens`` with the cells the authors' code gives the boxes (values used as edges)."""
    try:
        given = gt_tokens_of(record)
        if given is None:
            return
        edges, _ = record_boxes(record, name, BoxReading(report.reading.format, "edges"))
    except BoxError as exc:
        report.add(name, number, str(exc))
        return
    mapping, difference = gt_tokens_mapping(given, edges, width, height)
    if mapping is None:
        report.gt_tokens_disagree.append(Problem(name, number, difference))
    else:
        report.gt_tokens_agree[mapping] = report.gt_tokens_agree.get(mapping, 0) + 1


def gt_tokens_note(report: ValidationReport) -> str | None:
    """The agreement summary (None when no record carries gt_tokens).

    Disagreements are listed, not counted as problems: a cell edge that floating point rounds the
    other way explains a few of them in the published files.
    """
    agree = sum(report.gt_tokens_agree.values())
    checked = agree + len(report.gt_tokens_disagree)
    if not checked:
        return None
    return (
        f"gt_tokens: {agree} of {checked} records agree with their boxes under the published mapping "
        f"({PUBLISHED_SIZE} px, {PUBLISHED_GRID} x {PUBLISHED_GRID} grid, floor / ceil): "
        f"{report.gt_tokens_agree.get('resize', 0)} with the plain resize (later code), "
        f"{report.gt_tokens_agree.get('pad', 0)} only with pad-to-square first (earliest notebook); "
        f"{len(report.gt_tokens_disagree)} disagree"
    )


def _read_image(path: Path, base: Path) -> _ImageInfo:
    path = path.resolve()
    if not path.is_relative_to(base.resolve()):
        return _ImageInfo(None, "path leaves the release directory")
    if not path.is_file():
        return _ImageInfo(None, "missing")
    try:
        with Image.open(path) as im:
            im.load()
            extrema = im.getextrema()
            size = im.size
    except Exception as exc:  # PIL raises many types for broken files
        return _ImageInfo(None, f"cannot be read as an image ({type(exc).__name__}: {exc})")
    bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
    if all(lo == hi for lo, hi in bands):
        value = "/".join(str(lo) for lo, _ in bands)
        return _ImageInfo(size, f"is blank: every pixel has the value {value} (nothing to ground a question in)")
    return _ImageInfo(size, None)


def _scan_tree(report: ValidationReport, forbid: list[Forbidden], referenced: Callable[[str], bool]) -> None:
    """Identifier scan of every file name and file; for ours also: no unreferenced images."""
    ours = report.kind == "vgmed"
    for path in _tree(report.root):
        rel = path.relative_to(report.root).as_posix()
        for message in find_patterns(rel) + find_forbidden(rel, forbid):
            report.add(rel, 0, f"file name {message}")
        if rel in report.outside or not path.is_file():
            continue
        if path.suffix.lower() in TEXT_SUFFIXES:
            _scan_text(report, rel, path, forbid)
            continue
        data = path.read_bytes()
        for message in find_forbidden_bytes(data, forbid):
            report.add(rel, 0, message)
        for chunk, text in _image_metadata(path, data):
            if ours:
                report.add(rel, 0, f"image carries a {chunk} metadata chunk (released images must have none)")
            for message in find_patterns(text) + find_forbidden(text, forbid):
                report.add(rel, 0, f"image metadata ({chunk}) {message}")
        if ours and rel.startswith("images/") and not referenced(rel):
            report.add(rel, 0, "image is not referenced by any record")


def _text_lines(path: Path) -> Iterator[str]:
    """The lines of ``path`` as ``bytes.decode("utf-8", errors="replace").splitlines()`` gives them,
    read one "\n"-ended piece at a time (no UTF-8 character holds the byte "\n", and "\r\n" stays
    in one piece), so a large record file is never held whole."""
    with open(path, "rb") as fh:
        for piece in fh:
            yield from piece.decode("utf-8", errors="replace").splitlines()


def _scan_text(report: ValidationReport, rel: str, path: Path, forbid: list[Forbidden]) -> None:
    is_json = rel.endswith((".json", ".jsonl"))
    for number, line in enumerate(_text_lines(path), 1):
        if len(line) > MAX_LINE_CHARS:
            report.add(rel, number, f"line of {len(line)} characters (more than {MAX_LINE_CHARS}): not scanned "
                       "for identifiers")
            continue
        # In JSON only string values can hold header data; numbers (byte counts) are not dates.
        scanned = " | ".join(JSON_STRING.findall(line)) if is_json else line
        for message in find_patterns(scanned) + find_forbidden(line, forbid):
            report.add(rel, number, message)


def _image_metadata(path: Path, data: bytes) -> list[tuple[str, str]]:
    """(kind, text) of the metadata an image file carries (PNG chunks, or PIL info / EXIF)."""
    if data.startswith(PNG_SIGNATURE):
        try:
            return metadata_chunks(data)
        except PNGError:
            return []  # unreadable images are reported by the record check
    try:
        with Image.open(path) as im:
            found = [(str(k), str(v)) for k, v in im.info.items() if isinstance(v, (str, bytes))]
            found += [(f"EXIF {k}", str(v)) for k, v in im.getexif().items()]
            return found
    except Exception:  # not an image at all: nothing to read
        return []


def _string_lines(path: Path, needles: set[str]) -> dict[str, int]:
    """First line of each of ``needles`` (JSON string literals, quotes included) in ``path``: one
    streamed pass, so locating every problem costs O(size of the manifest), not O(problems x size),
    and only the strings asked for are kept."""
    found: dict[str, int] = {}
    for number, line in enumerate(_text_lines(path), 1):
        for m in JSON_STRING.finditer(line):
            if m.group() in needles:
                found.setdefault(m.group(), number)
    return found


def _tree(root: Path) -> Iterator[Path]:
    """Every path under ``root`` in ``sorted(root.rglob("*"))``'s order (by path parts: a folder's
    contents right after it; symbolic links to folders not entered), put in order in a scratch file
    instead of holding every path, or one folder's names, of the release ("\\0", below every character
    of a name, joins the parts so that the text order is the parts' order)."""
    for key in sorted_unique(rel.replace("/", "\0") for rel, _ in walk(root)):
        yield root.joinpath(*key.split("\0"))


def _check_manifest(
    report: ValidationReport, manifest: dict, seen: SeenStore, tally: RecordCounts, record_files: list[str],
    all_valid: bool,
) -> None:
    """Files, sizes and checksums against the files ``seen`` holds from the manifest, and its counts."""
    located: list[tuple[int, str]] = []  # (index in report.problems, the string whose line it is at)

    def add_at(needle: str, problem: str) -> None:
        located.append((len(report.problems), needle))
        report.add(MANIFEST_FILE, 0, problem)

    for rel, problem in listed_file_problems(report.root, seen.listed()):
        add_at(json.dumps(rel), problem)
    for path in _tree(report.root):
        rel = path.relative_to(report.root).as_posix()
        if path.is_file() and rel != MANIFEST_FILE and not seen.is_listed(rel):
            report.add(rel, 0, "not listed in manifest.json")
    for name in CONFIGS.values():
        if not (report.root / name).is_file():
            report.add(name, 0, "missing (every release has both question files, possibly empty)")
    counts = manifest.get("counts")
    if not all_valid:
        report.skipped.append("counts against the manifest: some records are invalid")
    elif isinstance(counts, dict):
        actual = tally.manifest(report.n_images, list(manifest_configs(record_files).values()))
        for key, value in actual.items():
            if key in LATER_COUNTS and key not in counts:
                continue  # a release written before vgmed counted it
            if counts.get(key) != value:
                add_at(f'"{key}"', f"counts.{key} is {counts.get(key)}, the files give {value}")
    lines = _string_lines(report.root / MANIFEST_FILE, {needle for _, needle in located})
    for index, needle in located:
        report.problems[index] = dataclasses.replace(report.problems[index], line=lines.get(needle, 0))


def _check_card(report: ValidationReport, manifest: dict) -> None:
    path = report.root / CARD_FILE
    if CARD_FILE in report.outside:
        return  # reported as a link out of the release
    if not path.is_file():
        report.add(CARD_FILE, 0, "missing dataset card")
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    preview = bool(manifest.get("preview"))
    start = 0  # the YAML header opens the card (the hub reads its configs only there)
    try:
        end = lines.index("---", start + 1)
        if lines[start] != "---":
            raise ValueError
        meta = yaml.safe_load("\n".join(lines[start + 1 : end]))
    except (ValueError, IndexError, yaml.YAMLError):
        report.add(CARD_FILE, start + 1, "no YAML front matter (--- ... --- on the first lines)")
        return
    first = lines[end + 1] if len(lines) > end + 1 else ""
    if preview != (PREVIEW_MARK in first):
        want = "say it is a PREVIEW" if preview else "not claim to be a preview"
        report.add(
            CARD_FILE, end + 2, f"the first line after the YAML header must {want} (manifest preview = "
            f"{str(preview).lower()})"
        )
    if not isinstance(meta, dict):
        report.add(CARD_FILE, start + 1, "YAML front matter is not a mapping")
        return
    tags = meta.get("tags") if isinstance(meta.get("tags"), list) else []
    if preview != (PREVIEW_TAG in tags):
        report.add(CARD_FILE, start + 1, f"front matter tags must {'' if preview else 'not '}include {PREVIEW_TAG!r} "
                   f"(manifest preview = {str(preview).lower()}; the Hub shows the tags)")
    for key in ("license", "task_categories", "configs"):
        if not meta.get(key):
            report.add(CARD_FILE, start + 1, f"front matter has no {key}")
    files = {f.get("path") for c in meta.get("configs") or [] for f in c.get("data_files") or [] if isinstance(f, dict)}
    for name in CONFIGS.values():
        if name not in files:
            report.add(CARD_FILE, start + 1, f"front matter configs do not list {name}")
    headings = {line[3:].strip() for line in lines if line.startswith("## ")}
    for section in REQUIRED_SECTIONS:
        if section not in headings:
            report.add(CARD_FILE, 0, f"no '## {section}' section")


# ---------------------------------------------------------------- command line
