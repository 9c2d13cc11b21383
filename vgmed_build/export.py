"""`vgmed-build export`: a release in the formats other tools read.

- ``parquet``: one Parquet file per config (VGMED_localization.parquet, VGMED_attribute.parquet) with
  an explicit Arrow schema (nested boxes, source and review structs); ``--embed-images`` adds the
  PNG bytes so the files stand alone.
- ``vqa-json``: the questions with reference answers (the attribute file: attribute and position
  questions) as a JSON list of ``{id, question, answer, images: [path], ...}``, the shape evaluation
  harnesses take for open VQA; image paths are relative to the JSON file.

Exports go next to the release, never into it (its manifest lists every file it contains).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vgmed_build.commands import EXIT_OK, fail
from vgmed_build.release_format import (
    ATTRIBUTE_FILE,
    MANIFEST_FILE,
    RecordFileError,
    manifest_configs,
    path_inside,
    read_lines,
)
from vgmed_build.resources import schema_errors

FORMATS = ("parquet", "vqa-json")

ARROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.string()),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("bbox", pa.list_(pa.list_(pa.int32(), 4))),
        ("bbox_convention", pa.string()),
        ("q_type", pa.string()),
        ("modality", pa.string()),
        ("body_part", pa.string()),
        ("label", pa.string()),
        ("side", pa.string()),
        ("plane", pa.string()),
        ("area_ratio", pa.float64()),
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


class ExportError(ValueError):
    """The release cannot be exported (the message names the file and line)."""


def check_release(release_dir: Path) -> None:
    """ExportError unless ``release_dir`` is a release made by `vgmed-build release` (has its manifest)."""
    if not (release_dir / MANIFEST_FILE).is_file():
        raise ExportError(f"{release_dir}: no {MANIFEST_FILE}; export works on releases made by `vgmed-build release`")


def read_records(release_dir: Path, name: str) -> list[dict]:
    """Records of one question file, each checked against the release record schema."""
    check_release(release_dir)
    path = release_dir / name
    records = []
    try:
        lines = list(read_lines(path))
    except RecordFileError as exc:
        raise ExportError(str(exc)) from exc
    for line in lines:
        if line.error:
            raise ExportError(f"{path}:{line.number}: {line.error}")
        errors = schema_errors("release_record", line.record)
        if errors:
            raise ExportError(f"{path}:{line.number}: {errors[0]} (run `vgmed-build validate`)")
        records.append(line.record)
    return records


def export_parquet(release_dir: str | Path, out_dir: str | Path, embed_images: bool = False) -> list[Path]:
    """Write one Parquet file per config into ``out_dir``; return their paths."""
    release_dir, out_dir = Path(release_dir), Path(out_dir)
    schema = ARROW_SCHEMA.append(pa.field("image_bytes", pa.binary())) if embed_images else ARROW_SCHEMA
    check_release(release_dir)
    tables = {}
    for name in manifest_configs(p.name for p in release_dir.glob("*.jsonl")).values():
        records = read_records(release_dir, name)  # everything is read and checked before anything is created
        if embed_images:
            records = [
                {**r, "image_bytes": path_inside(release_dir, r["image"], "the release").read_bytes()} for r in records
            ]
        tables[Path(name).stem + ".parquet"] = pa.Table.from_pylist(records, schema=schema)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, table in tables.items():
        pq.write_table(table, out_dir / file_name)
        written.append(out_dir / file_name)
    return written


def vqa_items(records: list[dict], image_prefix: str) -> list[dict]:
    """VQA items (question, answer, image list) for records with a reference answer."""
    return [
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
    ]


def export_vqa_json(release_dir: str | Path, out_file: str | Path) -> Path:
    """Write the attribute file's questions as a VQA JSON list; image paths relative to ``out_file``."""
    release_dir, out_file = Path(release_dir), Path(out_file)
    records = read_records(release_dir, ATTRIBUTE_FILE)  # checked before anything is created
    prefix = os.path.relpath(release_dir.resolve(), out_file.parent.resolve()).replace(os.sep, "/")
    prefix = "" if prefix == "." else prefix + "/"
    items = vqa_items(records, prefix)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(items, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out_file


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        description="Export a release made by `vgmed-build release`. parquet: one file per config with "
        "nested boxes/source/review columns. vqa-json: the attribute and position questions with their "
        "answers as [{id, question, answer, images: [path], q_type, modality, label}], image paths "
        "relative to the JSON file.",
    )
    p.add_argument("dir", type=Path, help="release directory")
    p.add_argument("--format", choices=FORMATS, required=True, help="output format")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output: a folder for parquet (default DIR-parquet), a file for vqa-json "
        "(default DIR-vqa.json); "
        "never inside DIR, whose manifest lists every file%(default).0s",
    )
    p.add_argument("--embed-images", action="store_true", help="parquet: add an image_bytes column with the PNG data")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    release_dir = args.dir.resolve()
    suffix = "-parquet" if args.format == "parquet" else "-vqa.json"
    out = (args.out or release_dir.with_name(release_dir.name + suffix)).resolve()
    if out.is_relative_to(release_dir):
        return fail(f"--out {out} lies inside the release; choose a path outside it")
    try:
        if args.format == "parquet":
            for path in export_parquet(release_dir, out, embed_images=args.embed_images):
                print(f"wrote {path}")
        else:
            print(f"wrote {export_vqa_json(release_dir, out)}")
    except (ExportError, OSError) as exc:
        return fail(str(exc))
    return EXIT_OK
