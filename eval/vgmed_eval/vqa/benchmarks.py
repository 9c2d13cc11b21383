"""Medical VQA benchmarks: the registry and one loader per public file layout.

Adding a benchmark touches this file only: write a loader ``(root: Path) -> Loaded`` and decorate it
with ``@benchmark(name, layout=...)``. Loaders read local copies in the layout the benchmark is
published in (documented in docs/vqa.md). A missing annotation file raises ``BenchmarkError``; a bad
record is reported as ``"file:line: what is wrong"`` in ``Loaded.errors`` and skipped, so one bad
record never aborts a run.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import pickle
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Literal

from PIL import Image

from vgmed_build.errors import VgmedError
from vgmed_build.registry import Registry
from vgmed_build.release_format import (
    expected_names,
    path_inside,
    preview_note,
    question_file,
    read_lines,
    record_id,
    resolve_image,
)

YES_NO = ("yes", "no")  # the closed answers; as options A = yes, B = no (vqa.population)
LETTERS = "ABCDEFGHIJ"


class BenchmarkError(VgmedError, ValueError):
    """A benchmark cannot be read at all (missing or unparsable annotation file, unknown name)."""


@dataclass(frozen=True)
class ImageRef:
    """An image on disk or embedded (parquet bytes); ``key`` identifies it for per-image caches."""

    key: str
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)

    def open(self) -> Image.Image:
        src = self.path if self.path is not None else io.BytesIO(self.data or b"")
        with Image.open(src) as im:
            return im.convert("RGB")


@dataclass(frozen=True)
class VQAItem:
    id: str
    question: str
    answer: str  # gold answer; the option letter for multiple-choice questions
    kind: Literal["closed", "open"]  # closed: yes/no, an option letter, a closed short answer
    image: ImageRef
    options: tuple[str, ...] = ()
    modality: str | None = None
    category: str | None = None  # organ / question type / subfield, per benchmark
    where: str = ""  # "file:line" of the record, for messages


@dataclass
class Loaded:
    items: list[VQAItem]
    errors: list[str]  # "file:line: what is wrong" for each skipped record
    files: list[str] = field(default_factory=list)  # the annotation files read (printed in the results)
    notes: list[str] = field(default_factory=list)  # what the reader decided that a result depends on


@dataclass(frozen=True)
class Benchmark:
    name: str
    layout: str  # one line: the files the loader expects under --data
    loader: Callable[..., Loaded]  # (root) -> Loaded; (root, images) when ``takes_images``
    takes_images: bool = False  # its records name pictures that may live outside --data (--images)

    def load(self, root: Path, images: Path | None = None) -> Loaded:
        root = Path(root)
        if not root.exists():
            raise BenchmarkError(f"{root}: data directory not found (expected {self.layout})")
        if images is None:
            return unique_ids(self.loader(root))
        if not self.takes_images:
            raise BenchmarkError(f"--images applies to the VGMED benchmarks only; {self.name} reads its "
                                 "pictures from its own layout under --data")
        if not Path(images).is_dir():
            raise BenchmarkError(f"{images}: --images folder not found")
        return unique_ids(self.loader(root, Path(images)))


def unique_ids(loaded: Loaded) -> Loaded:
    """Ids are the resume key and the join of paired tests: a repeated id would drop a question and count
    another's answer twice. The second and later uses become ``<id>#2``, ``<id>#3`` ... (stable for a
    given file), each named in ``notes``; nothing is dropped."""
    seen = {it.id for it in loaded.items}
    count: dict[str, int] = {}
    items = []
    for it in loaded.items:
        count[it.id] = count.get(it.id, 0) + 1
        if count[it.id] == 1:
            items.append(it)
            continue
        n = count[it.id]
        while f"{it.id}#{n}" in seen:
            n += 1
        new = f"{it.id}#{n}"
        seen.add(new)
        loaded.notes.append(f"{it.where or it.id}: question id {it.id!r} repeats an earlier question's; "
                            f"this one is {new!r}")
        items.append(replace(it, id=new))
    loaded.items = items
    return loaded


BENCHMARKS: Registry[Benchmark] = Registry("benchmark", BenchmarkError)


def benchmark(name: str, layout: str, takes_images: bool = False) -> Callable[[Callable[..., Loaded]],
                                                                              Callable[..., Loaded]]:
    """Register the decorated loader as the benchmark ``name`` (the loader itself is returned unchanged)."""
    def add(fn: Callable[..., Loaded]) -> Callable[..., Loaded]:
        BENCHMARKS.register(name, Benchmark(name, layout, fn, takes_images))
        return fn

    return add


# The benchmark of a name; BenchmarkError names the closest and the known ones.
get_benchmark = BENCHMARKS.get


# ----------------------------------------------------------------------------------------- readers
class BadRecord(VgmedError, ValueError):
    """One record is malformed; the loader reports it with its file and line and goes on."""


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise BenchmarkError(f"{path}: {what} not found")
    return path


def _json_array(path: Path) -> Iterator[tuple[int, object]]:
    """Elements of a top-level JSON array with the line each starts on."""
    text = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if pos >= len(text) or text[pos] != "[":
        raise BenchmarkError(f"{path}:{text.count(chr(10), 0, pos) + 1}: expected a JSON array of records")
    pos = _skip_ws(text, pos + 1)
    while pos < len(text) and text[pos] != "]":
        line = text.count("\n", 0, pos) + 1
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise BenchmarkError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        yield line, value
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
    if pos >= len(text):
        raise BenchmarkError(f"{path}:{text.count(chr(10)) + 1}: unterminated JSON array")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise BenchmarkError(f"{path}: cannot read parquet ({exc})") from None
    for i, row in enumerate(table.to_pylist()):
        yield i + 1, row  # "line" = 1-based row number


def _collect(
    records: Iterator[tuple[int, object]], path: Path, make: Callable[[dict, str], VQAItem | None]
) -> Loaded:
    items, errors = [], []
    for line, rec in records:
        where = f"{path}:{line}"
        try:
            if isinstance(rec, BadRecord):
                raise rec
            if not isinstance(rec, dict):
                raise BadRecord(f"expected an object, got {type(rec).__name__}")
            item = make(rec, where)
        except BadRecord as exc:
            errors.append(f"{where}: {exc}")
            continue
        if item is not None:
            items.append(item)
    return Loaded(items, errors, [str(path)])


def _merged(parts: list[Loaded]) -> Loaded:
    """One benchmark read from several annotation files: their items, errors and file names in order."""
    return Loaded([i for p in parts for i in p.items], [e for p in parts for e in p.errors],
                  [f for p in parts for f in p.files])


def _field(rec: dict, *names: str) -> str:
    for name in names:
        value = rec.get(name)
        if value is not None and str(value).strip() != "":
            return str(value).strip()
    raise BadRecord(f"missing field {names[0]!r}")


def _image_file(root: Path, rel: str, folders: tuple[str, ...] = ("",)) -> ImageRef:
    for folder in folders:
        try:
            path = path_inside(root / folder, rel, "the benchmark folder")
        except ValueError as exc:
            raise BadRecord(str(exc)) from None
        if path.is_file():
            return ImageRef(key=str(path), path=path)
    raise BadRecord(f"image {rel!r} not found under {', '.join(str(root / f) for f in folders)}")


def _image_bytes(value: object, key: str) -> ImageRef:
    if isinstance(value, dict) and value.get("bytes"):
        return ImageRef(key=key, data=value["bytes"])
    if isinstance(value, (bytes, bytearray)) and value:
        return ImageRef(key=key, data=bytes(value))
    raise BadRecord("no embedded image bytes")


def _kind_of(answer: str, answer_type: str | None = None) -> str:
    if answer_type:
        t = answer_type.strip().upper()
        if t in ("CLOSED", "YES/NO"):
            return "closed"
        if t in ("OPEN", "OTHER"):
            return "open"
    return "closed" if answer.strip().lower().rstrip(".") in YES_NO else "open"


def _qa_item(rec: dict, where: str, item_id: str, image: Callable[[], ImageRef], **more) -> VQAItem:
    """A question with a free or yes/no answer (VQA-RAD, SLAKE, their Hugging Face copies): closed or
    open by its ``answer_type``, else by the answer (yes/no); the answer, question, then ``image()`` are
    read in that order, so a bad record's error names the first field missing."""
    answer = _field(rec, "answer")
    return VQAItem(id=item_id, question=_field(rec, "question"), answer=answer,
                   kind=_kind_of(answer, rec.get("answer_type")), image=image(), where=where, **more)


def _hf_vqa_parquet(root: Path) -> Loaded:
    """The Hugging Face copies of VQA-RAD and PathVQA: data/test-*.parquet with image/question/answer.

    A copy with ``answer_type`` is read as the OSF file is; the usual copies carry none, so only yes/no
    answers are closed there (the OSF VQA-RAD file marks other answers CLOSED too): ``notes`` says so."""
    files = sorted((root / "data").glob("test-*.parquet")) or sorted(root.glob("test-*.parquet"))
    if not files:
        raise BenchmarkError(f"{root}: no data/test-*.parquet found")

    def make(rec: dict, where: str, path: Path) -> VQAItem:
        return _qa_item(rec, where, f"{path.stem}:{where.rsplit(':', 1)[1]}",
                        lambda: _image_bytes(rec.get("image"), key=where))

    parts = [_collect(_parquet_rows(path), path, partial(make, path=path)) for path in files]
    notes = [f"{path}: Hugging Face copy without answer_type: closed = yes/no answers only (the OSF release's "
             "answer_type also marks some other answers CLOSED)"
             for path, got in zip(files, parts, strict=True) if got.items and not _has_column(path, "answer_type")]
    return replace(_merged(parts), notes=notes)


def _has_column(path: Path, name: str) -> bool:
    import pyarrow.parquet as pq

    return name in pq.read_schema(path).names


# ---------------------------------------------------------------------------------------- loaders
@benchmark(
    "vqa-rad",
    layout="'VQA_RAD Dataset Public.json' + 'VQA_RAD Image Folder/' (OSF release; test = phrase_type "
    "test_freeform/test_para), or the Hugging Face copy data/test-*.parquet",
)
def load_vqa_rad(root: Path) -> Loaded:
    ann = root / "VQA_RAD Dataset Public.json"
    if not ann.is_file():
        if list((root / "data").glob("test-*.parquet")):
            return _hf_vqa_parquet(root)
        raise BenchmarkError(f"{ann}: annotation file not found (nor a Hugging Face data/test-*.parquet)")

    def make(rec: dict, where: str) -> VQAItem | None:
        if not str(rec.get("phrase_type", "")).startswith("test"):
            return None
        return _qa_item(rec, where, str(rec.get("qid", where)),
                        lambda: _image_file(root, _field(rec, "image_name"), ("VQA_RAD Image Folder", "images", "")),
                        category=rec.get("image_organ"))

    return _collect(_json_array(ann), ann, make)


@benchmark("slake", layout="test.json + imgs/<img_name> (SLAKE 1.0 release; English questions only)")
def load_slake(root: Path) -> Loaded:
    ann = _require(root / "test.json", "SLAKE test.json")

    def make(rec: dict, where: str) -> VQAItem | None:
        if rec.get("q_lang", "en") != "en":
            return None
        return _qa_item(rec, where, str(rec.get("qid", where)),
                        lambda: _image_file(root, _field(rec, "img_name"), ("imgs", "")),
                        modality=rec.get("modality"), category=rec.get("location"))

    return _collect(_json_array(ann), ann, make)


@benchmark(
    "pathvqa",
    layout="qas/test/test_qa.pkl + images/test/<image>.jpg (PathVQA release), or the Hugging Face copy "
    "data/test-*.parquet",
)
def load_pathvqa(root: Path) -> Loaded:
    ann = root / "qas" / "test" / "test_qa.pkl"
    if not ann.is_file():
        if list((root / "data").glob("test-*.parquet")) or list(root.glob("test-*.parquet")):
            return _hf_vqa_parquet(root)
        raise BenchmarkError(f"{ann}: annotation file not found (nor a Hugging Face data/test-*.parquet)")
    try:
        with ann.open("rb") as fh:
            records = pickle.load(fh)  # the release's own format; only load copies you trust
    except Exception as exc:
        raise BenchmarkError(f"{ann}: cannot unpickle ({exc})") from None
    if not isinstance(records, list):
        raise BenchmarkError(f"{ann}: expected a list of records, got {type(records).__name__}")

    def make(rec: dict, where: str) -> VQAItem:
        answer = _field(rec, "answer")
        name = _field(rec, "image")
        return VQAItem(
            id=str(rec.get("question_id", where.rsplit(":", 1)[1])),
            question=_field(rec, "question"),
            answer=answer,
            kind=_kind_of(answer),
            image=_image_file(root / "images" / "test", name if "." in name else f"{name}.jpg"),
            modality="pathology",
            where=where,
        )

    return _collect(enumerate(records, 1), ann, make)


def _option_text(value: str, letter: str) -> str:
    """PMC-VQA choices carry their letter ("A:CT scan "); strip it."""
    return re.sub(rf"^\s*{letter}\s*[:.)]\s*", "", value).strip()


PMC_FILES = ("test_clean.csv", "test_2.csv", "test.csv")


def _pmc_file(root: Path) -> Path:
    """The PMC-VQA file to evaluate: ``--data`` names it, or the folder holds exactly one of them."""
    if root.is_file():
        return root
    present = [name for name in PMC_FILES if (root / name).is_file()]
    if not present:
        raise BenchmarkError(f"{root}: PMC-VQA test CSV not found (looked for {', '.join(PMC_FILES)})")
    if len(present) > 1:
        raise BenchmarkError(f"{root}: holds {' and '.join(present)}; choose one explicitly with --data "
                             f"{root / present[0]} (or {root / present[1]})")
    return root / present[0]


@benchmark(
    "pmc-vqa",
    layout="test_2.csv (index, Figure_path, Caption, Question, Choice A..D, Answer = the letter, split) or "
    "test_clean.csv / test.csv (with Answer_label), + images/<Figure_path>; when several are present, --data "
    "names the file",
)
def load_pmc_vqa(root: Path) -> Loaded:
    ann = _pmc_file(root)
    root = ann.parent
    with ann.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"Figure_path", "Question", "Choice A", "Choice B"} - set(reader.fieldnames or [])
        if missing:
            raise BenchmarkError(f"{ann}:1: header lacks column(s) {', '.join(sorted(missing))}")
        rows = [(reader.line_num, row) for row in reader]

    def make(rec: dict, where: str) -> VQAItem:
        options = []
        for letter in "ABCD":
            value = rec.get(f"Choice {letter}")
            if value is not None and value.strip():
                options.append(_option_text(value, letter))
        letters = LETTERS[: len(options)]
        label = (rec.get("Answer_label") or "").strip().upper()
        answer = (rec.get("Answer") or "").strip()
        if label:
            if label not in letters:
                raise BadRecord(f"Answer_label {label!r} is not one of the option letters {letters}")
            gold = label
        elif not answer:
            raise BadRecord("the gold answer is empty (no Answer_label, empty Answer)")
        elif answer.upper() in letters and len(answer) == 1:
            gold = answer.upper()  # test_2.csv: Answer is the letter
        else:
            matches = [LETTERS[i] for i, o in enumerate(options) if o.lower() == answer.lower()]
            if len(matches) != 1:
                raise BadRecord(f"answer {answer!r} is neither an option letter nor one option's text")
            gold = matches[0]
        return VQAItem(
            id=str(rec.get("index") or where.rsplit(":", 1)[1]),
            question=_field(rec, "Question"),
            answer=gold,
            kind="closed",
            image=_image_file(root, _field(rec, "Figure_path"), ("images", "figures", "")),
            options=tuple(options),
            where=where,
        )

    return _collect(iter(rows), ann, make)


@benchmark(
    "omnimedvqa",
    layout="QA_information/Open-access/*.json (question, gt_answer, option_A.., image_path, "
    "modality_type) + the image_path files under the root",
)
def load_omnimedvqa(root: Path) -> Loaded:
    folder = root / "QA_information" / "Open-access"
    files = sorted(folder.glob("*.json"))
    if not files:
        raise BenchmarkError(f"{folder}: no QA json files found")

    def make(rec: dict, where: str) -> VQAItem:
        keys = [f"option_{c}" for c in "ABCDEF" if rec.get(f"option_{c}") is not None]
        options = [str(rec[k]).strip() for k in keys]
        if len(options) < 2:
            raise BadRecord("fewer than two options")
        gt = _field(rec, "gt_answer")
        matches = [LETTERS[i] for i, o in enumerate(options) if o == gt]
        if len(matches) != 1:
            raise BadRecord(f"gt_answer {gt!r} matches {len(matches)} options")
        return VQAItem(
            id=str(rec.get("question_id", where)),
            question=_field(rec, "question"),
            answer=matches[0],
            kind="closed",
            image=_image_file(root, _field(rec, "image_path")),
            options=tuple(options),
            modality=rec.get("modality_type") or rec.get("modality"),
            category=rec.get("question_type"),
            where=where,
        )

    return _merged([_collect(_json_array(ann), ann, make) for ann in files])


MMMU_HEALTH = ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
               "Pharmacy", "Public_Health")


@benchmark(
    "mmmu-med",
    layout="<Subject>/validation-*.parquet for the five Health & Medicine subjects (MMMU release; "
    "single-image questions)",
)
def load_mmmu_med(root: Path) -> Loaded:
    files = [f for s in MMMU_HEALTH for f in sorted((root / s).glob("validation-*.parquet"))]
    if not files:
        raise BenchmarkError(f"{root}: no <Subject>/validation-*.parquet for {', '.join(MMMU_HEALTH)}")

    def make(rec: dict, where: str, subject: str) -> VQAItem:
        images = [k for k in sorted(rec) if k.startswith("image_") and rec[k]]
        if len(images) != 1:
            raise BadRecord(f"{len(images)} images; only single-image questions are evaluated")
        is_mc = rec.get("question_type", "multiple-choice") == "multiple-choice"
        options: tuple[str, ...] = ()
        if is_mc:
            try:
                options = tuple(str(o) for o in ast.literal_eval(_field(rec, "options")))
            except (ValueError, SyntaxError):
                raise BadRecord("options is not a list literal") from None
        answer = _field(rec, "answer")
        if is_mc and answer not in LETTERS[: len(options)]:
            raise BadRecord(f"answer {answer!r} is not one of the {len(options)} option letters")
        return VQAItem(
            id=_field(rec, "id"),
            question=re.sub(r"<image \d+>", "the image", _field(rec, "question")),
            answer=answer,
            kind="closed" if is_mc else "open",
            image=_image_bytes(rec[images[0]], key=f"{where}:{images[0]}"),
            options=options,
            modality=rec.get("img_type"),
            category=subject,
            where=where,
        )

    return _merged([_collect(_parquet_rows(path), path, partial(make, subject=path.parent.name)) for path in files])


def _release_lines(path: Path) -> Iterator[tuple[int, object]]:
    for line in read_lines(path):
        yield line.number, (BadRecord(f"invalid JSON ({line.decode_error.msg})") if line.decode_error else line.record)


def _vgmed(root: Path, q_type: str, images: Path | None = None) -> Loaded:
    """A VGMED question file of any layout. The published files carry no answers: a localization
    question asks about a region that is there by construction (gold ``yes``); attribute questions
    without answers cannot be scored and are refused as a whole."""
    ann = question_file(root, q_type)
    if ann is None:
        raise BenchmarkError(f"{root}: VGMED release file not found (looked for {expected_names([q_type])})")
    lines = list(_release_lines(ann))
    records = [rec for _, rec in lines if isinstance(rec, dict)]
    if q_type == "attribute" and records and not any(rec.get("answer") for rec in records):
        raise BenchmarkError(f"{ann}: no record has an answer: the published VGMED attribute questions carry "
                             "none, so they cannot be scored; evaluate a release with reference answers (one "
                             "made by `vgmed-build release`), or use `vgmed-eval grounding`, which needs none")

    def make(rec: dict, where: str) -> VQAItem:
        answer = "yes" if q_type == "localization" and "answer" not in rec else _field(rec, "answer")
        number = int(where.rsplit(":", 1)[1])
        try:
            image = resolve_image(rec.get("image"), root, images)
        except ValueError as exc:
            raise BadRecord(str(exc)) from None
        if not image.is_file():
            raise BadRecord(f"image {rec.get('image')!r} not found ({image})")
        return VQAItem(
            id=record_id(rec, ann.name, number),
            question=_field(rec, "question"),
            answer=answer,
            kind=_kind_of(answer),
            image=ImageRef(key=str(image), path=image),
            modality=rec.get("modality"),
            category=rec.get("body_part") or rec.get("location"),
            where=where,
        )

    loaded = _collect(iter(lines), ann, make)
    preview = preview_note(root)  # a preview's accuracy must not pass for a reviewed release's
    if preview:
        loaded.notes.append(preview)
    return loaded


@benchmark("vgmed-attribute", layout="VGMED_attribute.jsonl + images/ (a vgmed-build release; the published "
           "attribute files have no answers and are refused)", takes_images=True)
def load_vgmed_attribute(root: Path, images: Path | None = None) -> Loaded:
    return _vgmed(root, "attribute", images)


@benchmark("vgmed-localization", layout="VGMED_localization.jsonl + images/ (a vgmed-build release), or a published "
           "file (hub or older layout; gold answer yes, pictures under --data or --images)", takes_images=True)
def load_vgmed_localization(root: Path, images: Path | None = None) -> Loaded:
    return _vgmed(root, "localization", images)
