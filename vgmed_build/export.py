"""`vgmed-build export`: a release in the formats other tools read.

- ``parquet``: one Parquet file per config (VGMED_localization.parquet, VGMED_attribute.parquet) with
  an explicit Arrow schema (nested boxes, source and review structs); ``--embed-images`` adds the
  PNG bytes so the files stand alone.
- ``vqa-json``: the questions with reference answers (the attribute file: attribute and position
  questions) as a JSON list of ``{id, question, answer, images: [path], ...}``, the shape evaluation
  harnesses take for open VQA; image paths are relative to the JSON file.
- ``hf``: the Hugging Face Hub layout, ``data/<config>/test-00000-of-00001.parquet`` written by
  ``datasets`` itself (``image`` an ``Image()`` feature holding the PNG) and a README.md card whose
  configs point at them, the first the default: ``load_dataset(folder)`` and an upload of the folder work
  as they do for any Hub dataset.
- ``lmms-eval``: the ``hf`` folder plus one task YAML per config and ``utils.py`` (``doc_to_visual``,
  ``doc_to_text``, ``process_results``): ``lmms-eval --include_path FOLDER --tasks vgmed_attribute``.
- ``vlmevalkit``: one TSV per config (``index``, base64 ``image``, ``question``, ``answer``, ``category``
  = q_type, ...) for ``$LMUData``, the dataset class ``VGMEDDataset`` with its exact-match metric, and a
  ``--config`` JSON naming it.

A format is an :class:`ExportFormat` in :data:`FORMATS`: a builder that reads the (verified) release
and returns the files to write, and a test that recognises a file it wrote earlier. Everything else is
shared: the release is checked against its manifest's checksums first (``--no-verify`` skips that),
nothing outside the release root is read, an existing output is only replaced when it is a previous
export of that format (or ``--overwrite``), and every file is written to a temporary file of ours
next to the output and renamed over it, so a kill or a full disk leaves the earlier export intact.
Exports go next to the release, never into it (its manifest lists every file it contains).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from itertools import chain, islice
from pathlib import Path
from typing import Any, BinaryIO

from vgmed_build.card import CARD_MARK, licences_of, render_card
from vgmed_build.catalog.scratch import SeenStore
from vgmed_build.errors import VgmedError
from vgmed_build.owned_dirs import owned_tempdir
from vgmed_build.release_format import (
    ATTRIBUTE_FILE,
    CARD_FILE,
    CONFIGS,
    CONTROL_CONFIGS,
    MANIFEST_FILE,
    MASK_FIELD,
    RecordFileError,
    leaves_root,
    listed_file_problems,
    manifest_configs,
    preview_note,
    read_lines,
)
from vgmed_build.release_manifest import read_manifest
from vgmed_build.resources import schema_errors

VQA_KEYS = ("id", "question", "answer", "images", "q_type", "modality", "label")
MAX_SHOWN = 5  # problems named in one message
PARQUET_BATCH = 256  # records turned into Arrow at a time
PARQUET_ROW_GROUP_BYTES = 32 * 2**20  # Arrow data held before a Parquet row group is written
HARNESS_MARK = "written by `vgmed-build export`"  # in every harness file we write (how a re-export knows it)
HARNESS_SOURCE = "vgmed_harness.py"  # vgmed_build/harness/: the lmms-eval hooks and the VLMEvalKit class
HF_CACHE_PREFIX = ".vgmed-hf-cache-"  # datasets' Arrow cache of a Hub shard, a folder next to the output
HF_SHARD = re.compile(r"data/(\w+)/test-\d{5}-of-\d{5}\.parquet")
TSV_COLUMNS = ("index", "image", "question", "answer", "category", "id", "modality", "body_part", "label")
log = logging.getLogger(__name__)


class ExportError(VgmedError, ValueError):
    """The release cannot be exported, or the output may not be written (the message says which file)."""


@cache
def arrow_schema(embed_images: bool = False):
    """The Parquet files' explicit schema (pyarrow is imported here: only `export` needs it)."""
    import pyarrow as pa

    schema = pa.schema(
        [
            ("id", pa.string()),
            ("image", pa.string()),
            ("question", pa.string()),
            ("answer", pa.string()),
            ("bbox", pa.list_(pa.list_(pa.int32(), 4))),
            ("bbox_convention", pa.string()),
            ("q_type", pa.string()),
            ("absent", pa.bool_()),
            ("modality", pa.string()),
            ("body_part", pa.string()),
            ("label", pa.string()),
            ("side", pa.string()),
            ("plane", pa.string()),
            ("area_ratio", pa.float64()),
            # null: a box-only record
            ("mask", pa.struct([("size", pa.list_(pa.int32(), 2)), ("counts", pa.list_(pa.int64()))])),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("source", pa.struct([("dataset", pa.string()), ("licence", pa.string())])),
            (
                "review",
                pa.struct(
                    [
                        ("status", pa.string()),
                        ("n_reviewers", pa.int32()),
                        ("agreement", pa.float64()),
                        ("edited", pa.bool_()),
                    ]
                ),
            ),
        ]
    )
    return schema.append(pa.field("image_bytes", pa.binary())) if embed_images else schema


# ---------------------------------------------------------------- reading a release


@dataclass(frozen=True)
class ExportOptions:
    embed_images: bool = False  # parquet: add the PNG bytes
    verify: bool = True  # check every file against the manifest's size and SHA-256 first
    overwrite: bool = False  # replace an existing output that is not a previous export of ours


@dataclass
class Release:
    """A release being exported: its manifest's head, and reads that never leave its root.

    ``manifest``: everything but the file list (``files`` is ``{}``: a release lists every image);
    ``listed``: the listed paths, in a scratch file (verified unless --no-verify). Close it after use.
    """

    root: Path
    manifest: dict[str, Any]
    listed: SeenStore | None = None

    def __enter__(self) -> Release:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.listed is not None:
            self.listed.close()

    def path(self, rel: str) -> Path:
        """``root / rel``, or ExportError when it leaves the root (also through a symbolic link)."""
        problem = leaves_root(self.root, rel)
        if problem:
            raise ExportError(f"{self.root}: {rel!r} {problem}; nothing outside the release is read")
        return self.root / rel

    def record_files(self) -> list[str]:
        """The question files present (ours and the control set's), in config order."""
        return list(self.configs().values())

    def configs(self) -> dict[str, str]:
        """config name -> question file, for the files present (``localization`` first)."""
        present = {p.name for p in self.root.glob("*.jsonl")}
        return {c: n for c, n in manifest_configs(present).items() if n in present}

    def records(self, name: str) -> Iterator[dict]:
        """Records of one question file as it is read (one line at a time), each checked against the
        release record schema: a bad line is an ExportError when it is reached."""
        path = self.path(name)
        try:
            for line in read_lines(path):
                if line.error:
                    raise ExportError(f"{path}:{line.number}: {line.error}")
                errors = schema_errors("release_record", line.record)
                if errors:
                    raise ExportError(f"{path}:{line.number}: {errors[0]} (run `vgmed-build validate`)")
                yield line.record
        except RecordFileError as exc:
            raise ExportError(str(exc)) from exc

    def image_bytes(self, rel: str) -> bytes:
        if self.listed is not None and not self.listed.is_listed(rel):
            raise ExportError(f"{self.root}: image {rel} is not listed in {MANIFEST_FILE}")
        try:
            return self.path(rel).read_bytes()
        except OSError as exc:
            raise ExportError(f"{self.root / rel}: cannot be read ({exc.strerror or exc})") from exc


def open_release(release_dir: str | Path, verify: bool = True) -> Release:
    """The release at ``release_dir``; ExportError unless it is one made by `vgmed-build release`
    and, with ``verify``, every file matches its manifest (nothing changed, added or missing)."""
    root = Path(release_dir)
    if not root.is_dir() or not (root / MANIFEST_FILE).is_file():
        raise ExportError(
            f"{root}: no {MANIFEST_FILE}; only releases made by `vgmed-build release` are exported or read"
        )
    release = Release(root, {})
    try:
        manifest = read_manifest(release.path(MANIFEST_FILE))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{root / MANIFEST_FILE}: cannot be read as JSON ({exc})") from exc
    release.manifest = manifest.head
    if not verify:
        return release
    if not isinstance(manifest.head, dict) or not isinstance(manifest.head.get("files"), dict):
        raise ExportError(f"{root / MANIFEST_FILE}: no file list to verify the release against (--no-verify skips)")
    release.listed = listed = SeenStore()
    shown: list[str] = []
    count = 0
    try:
        listed.add_listed(manifest.files())  # in a scratch file, in path order, a path listed twice once
        problems = chain((problem for _, problem in listed_file_problems(root, listed.listed())),
                         (f"{name} is not listed" for name in release.record_files() if not listed.is_listed(name)))
        for problem in problems:
            count += 1
            shown += [problem][:MAX_SHOWN - len(shown)]
        if count:
            more = f"; and {count - MAX_SHOWN} more" if count > MAX_SHOWN else ""
            raise ExportError(
                f"{root}: the release differs from its {MANIFEST_FILE} ({'; '.join(shown)}{more}); nothing was "
                "exported. Run `vgmed-build validate` on it; --no-verify exports it anyway"
            )
    except ValueError as exc:  # the manifest changed while it was read
        listed.close()
        raise ExportError(f"{root / MANIFEST_FILE}: cannot be read as JSON ({exc})") from exc
    except BaseException:
        listed.close()
        raise
    return release


# ---------------------------------------------------------------- formats

Writer = Callable[[BinaryIO], None]  # writes one output file's content


@dataclass(frozen=True)
class ExportFormat:
    """One export format.

    ``build`` reads and checks everything and returns {file name: writer}, before anything is
    created; a single-file format returns one entry named after its output, a folder format names
    its files relative to the folder (``data/attribute/...``). ``ours(path, name)`` says whether an
    existing file is one this format wrote (so it may be replaced without --overwrite).
    """

    name: str
    suffix: str  # the default output: DIR + suffix
    folder: bool  # True: the output is a folder of files; False: a single file
    build: Callable[[Release, Path, ExportOptions], dict[str, Writer]]
    ours: Callable[[Path, str], bool]
    help: str


def _parquet_names() -> set[str]:
    return {Path(name).stem + ".parquet" for name in (*CONFIGS.values(), *CONTROL_CONFIGS.values())}


def build_parquet(release: Release, out: Path, options: ExportOptions) -> dict[str, Writer]:
    schema = arrow_schema(options.embed_images)

    def batches(name: str) -> Iterator[dict]:
        records = release.records(name)
        if options.embed_images:
            records = ({**r, "image_bytes": release.image_bytes(r["image"])} for r in records)
        return iter(lambda: list(islice(records, PARQUET_BATCH)), [])

    # Each file is written as its records are read: at most one row group's records in memory.
    return {Path(name).stem + ".parquet": lambda fh, name=name: write_parquet(fh, batches(name), schema)
            for name in release.record_files()}


def write_parquet(fh: BinaryIO, batches: Iterable[list[dict]], schema) -> None:
    """Write records as Parquet, turned into Arrow PARQUET_BATCH at a time, one row group per
    PARQUET_ROW_GROUP_BYTES of Arrow data (and one for the rest): a file under that size is the bytes
    ``pq.write_table(pa.Table.from_pylist(records))`` gives (one row group), a larger one is several."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pq.ParquetWriter(fh, schema) as writer:
        held: list = []
        written = False
        for rows in batches:
            held.append(pa.RecordBatch.from_pylist(rows, schema=schema))
            if sum(b.nbytes for b in held) >= PARQUET_ROW_GROUP_BYTES:
                writer.write_table(pa.Table.from_batches(held, schema=schema).combine_chunks())
                held, written = [], True
        if held or not written:
            writer.write_table(pa.Table.from_batches(held, schema=schema).combine_chunks())


def parquet_is_ours(path: Path, name: str) -> bool:
    """A Parquet file under one of our names with our columns (see :func:`_has_our_columns`)."""
    return name in _parquet_names() and _has_our_columns(path)


def _has_our_columns(path: Path) -> bool:
    """A Parquet file with the record columns first and nothing but our columns (so an export made
    before a column was added is still recognised)."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception:  # pyarrow raises several types for a file that is not Parquet
        return False
    return names[:5] == ["id", "image", "question", "answer", "bbox"] and set(names) <= set(arrow_schema(True).names)


def vqa_items(records: Iterable[dict], image_prefix: str) -> Iterator[dict]:
    """VQA items (question, answer, image list) for records with a reference answer, as they come."""
    return (
        {
            "id": r["id"],
            "question": r["question"],
            "answer": r["answer"],
            "images": [f"{image_prefix}{r['image']}"],
            "q_type": r["q_type"],
            "modality": r["modality"],
            "label": r["label"],
        }
        for r in records
    )


def write_json_list(fh: BinaryIO, items: Iterable[Any]) -> None:
    """Write ``json.dumps(list(items), indent=1, ensure_ascii=False) + "\n"``, byte for byte, one item
    at a time (json indents an item of the list one level deeper; its strings escape their newlines)."""
    separator = b"[\n "
    for item in items:
        fh.write(separator + json.dumps(item, indent=1, ensure_ascii=False).replace("\n", "\n ").encode("utf-8"))
        separator = b",\n "
    fh.write(b"[]\n" if separator == b"[\n " else b"\n]\n")


def build_vqa_json(release: Release, out: Path, options: ExportOptions) -> dict[str, Writer]:
    """The attribute file's records go out one at a time as the file is written."""
    release.path(ATTRIBUTE_FILE)  # leaves the root: refused before anything is created
    prefix = os.path.relpath(release.root.resolve(), out.parent.resolve()).replace(os.sep, "/")
    image_prefix = "" if prefix == "." else prefix + "/"
    return {out.name: lambda fh: write_json_list(fh, vqa_items(release.records(ATTRIBUTE_FILE), image_prefix))}


def vqa_json_is_ours(path: Path, name: str) -> bool:
    """A JSON list whose every item has exactly the keys of our VQA items."""
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(items, list) and all(isinstance(i, dict) and tuple(i) == VQA_KEYS for i in items)


# ---------------------------------------------------------------- the Hub layout and evaluation harnesses


def hf_features():
    """The Hub files' ``datasets`` features: the Parquet schema's columns, ``image`` an ``Image()``."""
    from datasets import Features, Image

    features = Features.from_arrow_schema(arrow_schema())
    features["image"] = Image()
    return features


def _hf_shard(config: str) -> str:
    return f"data/{config}/test-00000-of-00001.parquet"


def _card_writer(release: Release) -> Writer:
    """The Hub card, rendered from the release's manifest like the release's own card."""
    records = (r for name in release.record_files() for r in release.records(name))
    try:
        card = render_card(release.manifest, licences_of(records), hub=True)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ExportError(f"{release.root / MANIFEST_FILE}: lacks what the dataset card needs ({exc!r})") from exc
    data = card.encode("utf-8")
    return lambda fh: fh.write(data)


def build_hf(release: Release, out: Path, options: ExportOptions) -> dict[str, Writer]:
    """``data/<config>/test-00000-of-00001.parquet`` per config, written by ``datasets`` (the image is the
    ``{bytes, path}`` struct of ``Image()``), and the card whose configs point at them."""
    outputs: dict[str, Writer] = {
        _hf_shard(config): lambda fh, config=config, name=name: write_hf_shard(fh, release, config, name, out.parent)
        for config, name in release.configs().items()
    }
    outputs[CARD_FILE] = _card_writer(release)
    return outputs


def hf_rows(release: Release, name: str) -> Iterator[dict]:
    """One question file's records as Hub rows (the image's bytes in its ``Image()`` struct), as read."""
    for r in release.records(name):
        yield {**r, MASK_FIELD: r.get(MASK_FIELD), "image": {"bytes": release.image_bytes(r["image"]),
                                                               "path": r["image"]}}


def write_hf_shard(fh: BinaryIO, release: Release, config: str, name: str, scratch: Path) -> None:
    """One config's shard, streamed: ``Dataset.from_generator`` writes the rows to an Arrow file in a
    temporary folder of ours in ``scratch`` (next to the output: it is as large as the shard), which
    ``to_parquet`` reads back in batches; the folder is removed after, and one a killed export left is
    removed first (see :mod:`vgmed_build.owned_dirs`). Same bytes as ``from_list``."""
    from datasets import Dataset

    with owned_tempdir(HF_CACHE_PREFIX, scratch) as cache:
        # The fingerprint spares datasets hashing the generator's arguments (the cache is new each time).
        dataset = Dataset.from_generator(hf_rows, features=hf_features(), cache_dir=cache,
                                         gen_kwargs={"release": release, "name": name}, fingerprint=f"vgmed-{config}")
        dataset.to_parquet(fh)
        del dataset  # its memory map of the Arrow file, before the folder goes


def hf_is_ours(path: Path, name: str) -> bool:
    """Our card, or a Parquet shard of one of our configs with our columns."""
    if name == CARD_FILE:
        return _text_holds(path, CARD_MARK)
    shard = HF_SHARD.fullmatch(name)
    configs = {*CONFIGS, *(f"control_{t}" for t in CONTROL_CONFIGS)}
    return bool(shard) and shard[1] in configs and _has_our_columns(path)


def _text_holds(path: Path, mark: str) -> bool:
    try:
        return mark in path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False


def _harness_source() -> bytes:
    return resources.files("vgmed_build.harness").joinpath(HARNESS_SOURCE).read_bytes()


def lmms_eval_task(config: str, folder: Path, manifest: dict[str, Any]) -> str:
    """One lmms-eval task YAML (``!function`` tags, so written as text; values JSON-quoted)."""
    release = json.dumps(f"{manifest.get('name')} {manifest.get('version')}")
    return f"""# VGMED lmms-eval task {HARNESS_MARK} from {release}.
# lmms-eval --include_path {json.dumps(str(folder))} --tasks vgmed_{config} --model ...
# dataset_path is this folder (the Hub Parquet layout beside this file): change it if you move the folder.
task: vgmed_{config}
dataset_path: {json.dumps(str(folder))}
dataset_name: {config}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 16
  temperature: 0
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
  vgmed_release: {release}
  preview: {json.dumps(manifest.get("preview") is True)}
"""


def build_lmms_eval(release: Release, out: Path, options: ExportOptions) -> dict[str, Writer]:
    """The ``hf`` folder plus ``vgmed_<config>.yaml`` per config and ``utils.py`` (the hooks they name)."""
    outputs = build_hf(release, out, options)
    folder = out.resolve()
    for config in release.configs():
        data = lmms_eval_task(config, folder, release.manifest).encode("utf-8")
        outputs[f"vgmed_{config}.yaml"] = lambda fh, data=data: fh.write(data)
    source = _harness_source()
    outputs["utils.py"] = lambda fh: fh.write(source)
    return outputs


def lmms_eval_is_ours(path: Path, name: str) -> bool:
    if re.fullmatch(r"vgmed_\w+\.yaml|utils\.py", name):
        return _text_holds(path, HARNESS_MARK)
    return hf_is_ours(path, name)


def write_vlmevalkit_tsv(fh: BinaryIO, records: Iterable[dict], image_bytes: Callable[[str], bytes]) -> None:
    """VLMEvalKit's TSV: a unique integer ``index``, the base64 PNG, question, answer, ``category``
    (the q_type, which the metric splits on) and our id and labels; one record at a time."""
    text = io.TextIOWrapper(fh, encoding="utf-8", newline="", write_through=True)
    writer = csv.writer(text, delimiter="\t", lineterminator="\n")
    writer.writerow(TSV_COLUMNS)
    for index, r in enumerate(records, 1):
        picture = base64.b64encode(image_bytes(r["image"])).decode("ascii")
        writer.writerow([index, picture, r["question"], r["answer"], r["q_type"], r["id"], r["modality"],
                         r["body_part"], r["label"]])
    text.detach()  # the caller's file stays open


def build_vlmevalkit(release: Release, out: Path, options: ExportOptions) -> dict[str, Writer]:
    """``<config file stem>.tsv`` per config, ``vgmed_vlmevalkit.py`` (``VGMEDDataset``) and the
    ``vlmevalkit_config.json`` that names the class for ``run.py --config``."""
    outputs: dict[str, Writer] = {}
    for name in release.record_files():
        outputs[Path(name).stem + ".tsv"] = lambda fh, name=name: write_vlmevalkit_tsv(
            fh, release.records(name), release.image_bytes)
    source = _harness_source()
    outputs["vgmed_vlmevalkit.py"] = lambda fh: fh.write(source)
    stems = [Path(name).stem for name in release.record_files()]
    config = {"data": {stem: {"class": "VGMEDDataset", "dataset": stem} for stem in stems},
              "_comment": f"{HARNESS_MARK}; add a 'model' entry, then: python run.py --config this file"}
    data = (json.dumps(config, indent=1) + "\n").encode("utf-8")
    outputs["vlmevalkit_config.json"] = lambda fh: fh.write(data)
    return outputs


def vlmevalkit_is_ours(path: Path, name: str) -> bool:
    if name.endswith(".tsv"):
        try:
            with path.open(encoding="utf-8") as fh:
                header = fh.readline()
        except (OSError, UnicodeDecodeError):
            return False
        return Path(name).stem + ".parquet" in _parquet_names() and header.rstrip("\n").split("\t") == list(
            TSV_COLUMNS)
    return name in ("vgmed_vlmevalkit.py", "vlmevalkit_config.json") and _text_holds(path, HARNESS_MARK)


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat(
            "parquet", "-parquet", True, build_parquet, parquet_is_ours,
            "one Parquet file per config with nested boxes/source/review columns (a folder)",
        ),
        ExportFormat(
            "vqa-json", "-vqa.json", False, build_vqa_json, vqa_json_is_ours,
            "the attribute and position questions with their answers as [{id, question, answer, images: "
            "[path], q_type, modality, label}], image paths relative to the JSON file (one file)",
        ),
        ExportFormat(
            "hf", "-hf", True, build_hf, hf_is_ours,
            "the Hugging Face Hub layout: data/<config>/test-00000-of-00001.parquet written by `datasets` "
            "(image an Image() feature) and a README.md card whose configs point at them, localization the "
            "default; load_dataset(FOLDER) and an upload of the folder work as for any Hub dataset (a folder)",
        ),
        ExportFormat(
            "lmms-eval", "-lmms-eval", True, build_lmms_eval, lmms_eval_is_ours,
            "the hf folder plus an lmms-eval task per config (vgmed_<config>.yaml) and their utils.py: "
            "lmms-eval --include_path FOLDER --tasks vgmed_attribute (a folder)",
        ),
        ExportFormat(
            "vlmevalkit", "-vlmevalkit", True, build_vlmevalkit, vlmevalkit_is_ours,
            "one VLMEvalKit TSV per config (index, base64 image, question, answer, category = q_type) for "
            "$LMUData, the dataset class VGMEDDataset (vgmed_vlmevalkit.py, exact-match accuracy) and "
            "vlmevalkit_config.json naming it (a folder)",
        ),
    )
}


# ---------------------------------------------------------------- writing


def _in_the_way(fmt: ExportFormat, out: Path, overwrite: bool) -> str | None:
    """Why ``out`` may not be written (a user's file or folder), or None."""
    if out.is_symlink() or (out.exists() and out.is_dir() != fmt.folder):
        return f"{out} exists and is not a {'folder' if fmt.folder else 'file'}"
    if not out.exists() or overwrite:
        return None
    if not fmt.folder:
        return None if fmt.ours(out, out.name) else f"{out} exists and is not a previous {fmt.name} export of vgmed"
    foreign = sorted(rel for rel, p in _entries(out) if p.is_symlink() or not p.is_file() or not fmt.ours(p, rel))
    if foreign:
        shown = ", ".join(foreign[:MAX_SHOWN]) + (", ..." if len(foreign) > MAX_SHOWN else "")
        return f"{out} holds {len(foreign)} entries that are not a previous {fmt.name} export of vgmed ({shown})"
    return None


def _entries(folder: Path) -> list[tuple[str, Path]]:
    """Everything under ``folder`` but its subfolders (which hold our files or others'), as (name, path)."""
    return [(p.relative_to(folder).as_posix(), p) for p in sorted(folder.rglob("*"))
            if p.is_symlink() or not p.is_dir()]


def _write_temp(out: Path, name: str, write: Writer) -> Path:
    """Write one output into a new temporary file of ours next to ``out``; return its path."""
    flat = name.replace("/", ".")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.{flat}.tmp-" if name != out.name else f".{out.name}.tmp-",
                               dir=out.parent)
    try:
        mask = os.umask(0o022)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)  # mkstemp's 0600 would hide the export from its readers
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def export(
    release_dir: str | Path, fmt: ExportFormat, out: str | Path, options: ExportOptions = ExportOptions()
) -> list[Path]:
    """Export the release at ``release_dir`` as ``fmt`` to ``out``; return the files written.

    ExportError (nothing changed) when the release is not ours or differs from its manifest, when
    reading would leave its root, or when ``out`` is someone else's and not ``options.overwrite``.
    """
    with open_release(release_dir, options.verify) as release:
        return _export(release, fmt, Path(out), options)


def _export(release: Release, fmt: ExportFormat, out: Path, options: ExportOptions) -> list[Path]:
    note = preview_note(release.root)
    if note:
        log.warning("%s; the %s export says so too", note, fmt.name)
    outputs = fmt.build(release, out, options)
    problem = _in_the_way(fmt, out, options.overwrite)
    if problem:
        raise ExportError(f"{problem}; nothing was changed; choose another --out, or --overwrite to replace it")
    folder = out if fmt.folder else out.parent
    temps: dict[str, Path] = {}
    target = out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        for name, write in outputs.items():
            target = folder / name
            temps[name] = _write_temp(out, name, write)
        target = folder
        folder.mkdir(exist_ok=True)
        for name, tmp in temps.items():
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
        if fmt.folder:  # files of an earlier export this one no longer writes (a control set now absent)
            for rel, stale in _entries(out):
                if rel not in outputs and not stale.is_symlink() and stale.is_file() and fmt.ours(stale, rel):
                    target = stale
                    stale.unlink()
                    _remove_emptied(stale.parent, out)
    except OSError as exc:
        raise ExportError(
            f"cannot write {target}: {exc.strerror or exc}; an earlier export there is unchanged"
        ) from exc
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return [folder / name for name in outputs]


def _remove_emptied(folder: Path, root: Path) -> None:
    """Remove ``folder`` and its parents below ``root`` while they are empty (a stale shard's folder)."""
    while folder != root and folder.is_relative_to(root):
        try:
            folder.rmdir()
        except OSError:  # not empty: it holds other files
            return
        folder = folder.parent
