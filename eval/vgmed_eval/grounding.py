"""`vgmed-eval grounding`: where does the model look, per question, layer and head.

For every question: the attention of the last prompt token over the image tokens (SDPA + last-row
capture, batched), divided by the same map for the general-description prompt on the same image
(computed once per image and reused for all its questions), scored against the cells the boxes
touch (``--gt box``), the cells the region's mask touches (``--gt mask``) or the fraction of each cell
it covers (``--gt soft``), through the model's real preprocessing geometry; the other two ground
truths and two chance levels (a uniform map; equal-area regions placed at random, ``--chance-draws``)
are scored beside it. Per-question problems (missing image, box outside the image, box on no cell, no
mask for ``--gt mask``, a malformed line) are recorded and the run goes on.

Outputs in ``--out``: ``per_layer.parquet`` (question x layer, heads averaged), ``per_head.parquet``
(question x layer x head), ``errors.jsonl``, ``summary.json`` (by layer, question type, modality and
source, 95% bootstrap CIs) and, with ``--save-maps``, ``maps/<id>.npz``. Under ``torchrun`` /
``accelerate launch`` each rank evaluates its share of the images and rank 0 merges the parts into
the same files (:mod:`vgmed_eval.distributed`).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from vgmed_build.release_format import (
    DEFAULT_READING,
    Q_TYPES,
    BoxReading,
    decode_mask,
    gt_tokens_mapping,
    preview_note,
)
from vgmed_eval import distributed
from vgmed_eval.distributed import World
from vgmed_eval.geometry import BoxOutsideError, GeometryError, GridGeometry, published_geometry
from vgmed_eval.ground_truth import Target, Truths, question_rng, question_truths
from vgmed_eval.metrics import chance_scores, grounding_metrics, normalise, scores
from vgmed_eval.prompts import GENERAL_PROMPT, short_answer
from vgmed_eval.protocol import VGMED, Protocol
from vgmed_eval.release_io import Question, read_release
from vgmed_eval.summary import gt_and_chance, summarise

if TYPE_CHECKING:  # the adapters import torch and transformers: not at start-up
    from vgmed_eval.adapters import Adapter

log = logging.getLogger(__name__)


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """``all`` or a comma list of indices and ranges (``0,4,10-20``; negatives count from the end)."""
    if spec.strip().lower() == "all":
        return list(range(n_layers))
    layers: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        match = re.fullmatch(r"(-?\d+)-(-?\d+)", part)
        values = range(int(match[1]), int(match[2]) + 1) if match else [int(part)]
        for v in values:
            v = v + n_layers if v < 0 else v
            if not 0 <= v < n_layers:
                raise ValueError(f"layer {v} out of range: the model has {n_layers} LLM layers")
            layers.append(v)
    return sorted(set(layers))


@dataclass
class _Item:
    question: Question
    geometry: GridGeometry
    truths: Truths

    @property
    def gt(self) -> np.ndarray:
        """(rows, cols) ground truth of --gt: bool, or cell weights for soft."""
        return self.truths.primary


def capture_maps(adapter: Adapter, images: list[Image.Image], texts: list[str], layers: list[int], rows: str
                  ) -> list[np.ndarray]:
    """Per input, a float32 (layers, heads, cells) map of the grid's image tokens."""
    import torch

    from vgmed_eval.attention import capture

    batch = adapter.build_inputs(images, texts)
    with torch.inference_mode(), capture(adapter.model, layers, batch.grid_positions, rows=rows,
                                         question_from=batch.question_start) as cap:
        adapter.model(**batch.inputs, use_cache=False, logits_to_keep=1)  # only attention is needed
    stacked = torch.stack([cap.maps[layer] for layer in layers], 1).cpu().numpy()  # (B, L, H, N)
    return [stacked[b, :, :, : len(pos)] for b, pos in enumerate(batch.grid_positions)]


class ConventionError(GeometryError):
    kind = "box_convention"


class MaskError(GeometryError):
    kind = "bad_mask"


def question_target(q: Question, width: int, height: int) -> Target:
    """The boxes and (decoded, checked against the image) mask of a question."""
    if q.mask is None:
        return Target(q.boxes)
    try:
        mask = decode_mask(q.mask)
    except ValueError as exc:
        raise MaskError(f"mask cannot be decoded: {exc}") from exc
    if mask.shape != (height, width):
        raise MaskError(f"mask is {mask.shape[1]}x{mask.shape[0]}, the image {width}x{height}")
    return Target(q.boxes, mask)


@dataclass(frozen=True)
class ChanceDraws:
    """Equal-area random regions per question: how many, and the seed (with the question id, so a
    question draws the same regions in any order, batch or process)."""

    draws: int = 8
    seed: int = 0

    def rng(self, qid: str) -> np.random.Generator:
        return question_rng(self.seed, qid)


def check_inside(boxes: list, width: int, height: int, convention: str) -> None:
    """Every edge box within the image, else :class:`BoxOutsideError` naming the box (never clipped silently)."""
    for box in boxes:
        x0, y0, x1, y1 = box
        if x0 < 0 or y0 < 0 or x1 > width + 1e-6 or y1 > height + 1e-6:
            raise BoxOutsideError(f"box {list(box)} (read as {convention}) lies outside the {width}x{height} image")


@dataclass
class GtTokensTally:
    """How many questions' published gt_tokens each mapping reproduces, and the ones none does."""

    agree: dict[str, int] = field(default_factory=dict)
    disagree: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        agree = sum(self.agree.values())
        return {"checked": agree + len(self.disagree), "agree": agree, "agree_by_mapping": self.agree,
                "disagree": self.disagree}


def _chunks(seq: list, size: int) -> Iterator[list]:
    for start in range(0, len(seq), size):
        yield seq[start:start + size]


def safe_name(qid: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", qid)


class GroundingRun:
    """Evaluate one set of questions with one adapter; results accumulate in memory."""

    def __init__(self, adapter: Adapter, layers: list[int], batch_size: int, rows: str = "last",
                 maps_dir: Path | None = None, protocol: Protocol = VGMED, chance: ChanceDraws = ChanceDraws()):
        self.adapter, self.layers, self.batch_size, self.rows = adapter, layers, batch_size, rows
        self.protocol, self.chance = protocol, chance
        self.maps_dir = maps_dir
        self.layer_rows: list[dict] = []
        self.head_blocks: list[tuple[str, np.ndarray]] = []  # (id, metrics (3, L, H))
        self.errors: list[dict] = []
        self.gt_tokens = GtTokensTally()

    def error(self, q: Question, kind: str, message: str) -> None:
        message = f"{q.where}: {message}" if q.where else message
        log.warning("%s (%s): %s", q.id, q.image_rel, message)
        self.errors.append({"id": q.id, "image": q.image_rel, "kind": kind, "error": message})

    def run(self, questions: list[Question], progress: bool = True) -> None:
        by_image: dict[Path, list[Question]] = {}
        for q in questions:
            by_image.setdefault(q.image, []).append(q)
        bar = tqdm(total=len(questions), desc="grounding", unit="q", disable=not progress)
        for paths in _chunks(list(by_image), self.batch_size):
            images, items = {}, []
            for path in paths:
                image = self._open(path, by_image[path])
                if image is None:
                    bar.update(len(by_image[path]))
                    continue
                images[path] = image
                items += self._prepare(image, by_image[path])
            if items:
                self._evaluate(images, items)
            bar.update(sum(len(by_image[p]) for p in images))
        bar.close()

    def _open(self, path: Path, qs: list[Question]) -> Image.Image | None:
        try:
            with Image.open(path) as im:
                im.load()
                return im.convert("RGB")
        except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
            kind = "missing_image" if isinstance(exc, FileNotFoundError) else "unreadable_image"
            for q in qs:
                self.error(q, kind, f"cannot read image {path}: {exc}")
            return None

    def _prepare(self, image: Image.Image, qs: list[Question]) -> list[_Item]:
        items = []
        geometry = published_geometry(self.adapter.geometry(image.width, image.height), self.protocol.box_mapping,
                                      self.protocol.cell_edges)
        for q in qs:
            try:
                check_inside(q.boxes, image.width, image.height, q.box_convention)
                truths = question_truths(self.protocol.gt, geometry, question_target(q, image.width, image.height),
                                         self.chance.rng(q.id), self.chance.draws)
                if q.gt_tokens:
                    self._check_gt_tokens(q, image.width, image.height)
                items.append(_Item(q, geometry, truths))
            except GeometryError as exc:
                self.error(q, exc.kind, str(exc))
        return items

    def _check_gt_tokens(self, q: Question, width: int, height: int) -> None:
        """Count agreement with the published gt_tokens; a record whose gt_tokens only the other box
        format reproduces was read in the wrong convention and is not scored."""
        mapping, difference = gt_tokens_mapping(q.gt_tokens, q.gt_boxes, width, height)
        if mapping is not None:
            self.gt_tokens.agree[mapping] = self.gt_tokens.agree.get(mapping, 0) + 1
            return
        if q.gt_boxes_other and gt_tokens_mapping(q.gt_tokens, q.gt_boxes_other, width, height)[0]:
            raise ConventionError(f"boxes read as {q.box_convention} contradict the record's gt_tokens, which the "
                                  "other box format reproduces: fix --bbox-format or the record's bbox_format")
        self.gt_tokens.disagree.append({"id": q.id, "where": q.where, "error": difference})

    def _evaluate(self, images: dict[Path, Image.Image], items: list[_Item]) -> None:
        used = [p for p in images if any(it.question.image == p for it in items)]
        general = {}
        for paths in _chunks(used, self.batch_size):
            maps = capture_maps(self.adapter, [images[p] for p in paths], [GENERAL_PROMPT] * len(paths),
                                 self.layers, self.rows)
            general.update(zip(paths, maps, strict=True))
        for chunk in _chunks(items, self.batch_size):
            maps = capture_maps(self.adapter, [images[it.question.image] for it in chunk],
                                 [short_answer(it.question.question) for it in chunk], self.layers, self.rows)
            for item, a in zip(chunk, maps, strict=True):
                self._score(item, a, general[item.question.image])

    def _score(self, item: _Item, a: np.ndarray, g: np.ndarray) -> None:
        q, gt, kl = item.question, item.gt.reshape(-1), self.protocol.kl_normalise
        layer_level = grounding_metrics(a.mean(1), g.mean(1), gt, kl)  # heads averaged: (L,)
        # (L, H): each head by its own general map, or by the layer's head-averaged one (submission notebook)
        head_level = grounding_metrics(a, g if self.protocol.head_norm == "head" else g.mean(1, keepdims=True), gt,
                                       kl)
        # beside it: every ground truth the question has, and the chance levels of --gt (heads averaged)
        n = normalise(a.mean(1), g.mean(1))
        beside = {f"{m}_{kind}": v for kind, cells in item.truths.by_kind.items()
                  for m, v in scores(n, cells.reshape(-1), kl).items()}
        beside.update(chance_scores(n, gt, [d.reshape(-1) for d in item.truths.chance], kl))
        base = {"id": q.id, "q_type": q.q_type, "modality": q.modality, "source": q.source, "label": q.label,
                "image": q.image_rel, "grid_rows": item.geometry.rows, "grid_cols": item.geometry.cols,
                "gt": item.truths.kind, "gt_cells": int(np.count_nonzero(gt)), "chance_draws": len(item.truths.chance)}
        for i, layer in enumerate(self.layers):
            self.layer_rows.append({**base, "layer": layer, **{k: float(v[i]) for k, v in layer_level.items()},
                                    **{k: float(v[i]) for k, v in beside.items()}})
        self.head_blocks.append((q.id, np.stack([head_level[k] for k in ("attention_ratio", "kl", "js")])))
        if self.maps_dir is not None:
            shape = (len(self.layers), item.geometry.rows, item.geometry.cols)
            np.savez_compressed(
                self.maps_dir / f"{safe_name(q.id)}.npz", attn=a.mean(1).reshape(shape),
                general=g.mean(1).reshape(shape), gt=item.gt, layers=np.array(self.layers),
                boxes=np.array(q.boxes, dtype=np.float64), image=q.image_rel, image_path=str(q.image),
                question=q.question, box_convention=q.box_convention, plane=q.plane,
                cells=np.array([[item.geometry.cell_to_image(r, c) for c in range(item.geometry.cols)]
                                for r in range(item.geometry.rows)]),
            )

    def per_layer(self) -> pd.DataFrame:
        return pd.DataFrame(self.layer_rows)

    @staticmethod
    def empty_per_head() -> pd.DataFrame:
        return pd.DataFrame(columns=["id", "layer", "head", "attention_ratio", "kl", "js"])

    def per_head(self) -> pd.DataFrame:
        if not self.head_blocks:
            return self.empty_per_head()
        ids = [qid for qid, _ in self.head_blocks]
        arr = np.stack([m for _, m in self.head_blocks])  # (Q, 3, L, H)
        n_q, _, n_l, n_h = arr.shape
        return pd.DataFrame({
            "id": np.repeat(ids, n_l * n_h),
            "layer": np.tile(np.repeat(self.layers, n_h), n_q),
            "head": np.tile(np.arange(n_h), n_q * n_l),
            "attention_ratio": arr[:, 0].reshape(-1), "kl": arr[:, 1].reshape(-1), "js": arr[:, 2].reshape(-1),
        })


def evaluate_release(adapter: Adapter, release: Path, out: Path, *, layers: list[int], batch_size: int, rows: str,
                     save_maps: bool, limit: int | None, q_types: tuple[str, ...], n_boot: int,
                     progress: bool = True, control: bool = False, images: Path | None = None,
                     reading: BoxReading = DEFAULT_READING, world: World = distributed.SINGLE,
                     protocol: Protocol = VGMED, chance: ChanceDraws = ChanceDraws(),
                     exclude: frozenset[str] = frozenset()) -> dict | None:
    """Run one release end to end and write every output; returns the summary.

    ``control``: read the natural-image control files (``COCO_*.jsonl``) first, so a release that
    holds both sets (a build with a coco source) serves as ``--release`` and ``--control-release``.
    Under a launcher (``world.size > 1``) this rank evaluates its share of the images into its part
    of ``OUT/parts/`` (kept if a previous run finished it), and rank 0 merges all parts into the same
    files one process writes; the other ranks return None.
    ``images`` / ``reading``: where published pictures live and how published boxes are read.
    ``chance``: the equal-area random regions of the chance level.
    ``exclude``: absolute paths of images whose questions are left out (``--exclude``, :mod:`vgmed_eval.leakage`).
    """
    preview = preview_note(release)
    if preview and world.main:
        log.warning("%s (summary.json records release_preview: true)", preview)
    questions, read_errors = read_release(release, q_types, images=images, reading=reading, control=control)
    kept = [q for q in questions if str(q.image.resolve()) not in exclude]
    excluded, questions = len(questions) - len(kept), kept
    if excluded and world.main:
        log.info("%s: %d questions left out (their images are on the --exclude list)", release, excluded)
    if limit is not None:
        questions = questions[:limit]
    out.mkdir(parents=True, exist_ok=True)
    maps_dir = out / "maps" if save_maps else None
    if maps_dir:
        maps_dir.mkdir(exist_ok=True)
    started = time.perf_counter()
    if world.distributed:
        _evaluate_part(adapter, questions, out, world, layers, batch_size, rows, maps_dir, progress, protocol,
                       chance)
        distributed.barrier(world)  # every part is on disk
        if not world.main:
            distributed.barrier(world)  # rank 0 has merged: whatever runs next here can read the files
            return None
        per_layer, per_head, errors, gt_tokens = _merge_parts(out, world, questions)
    else:
        run = GroundingRun(adapter, layers, batch_size, rows, maps_dir, protocol, chance)
        run.run(questions, progress=progress)
        per_layer, per_head, errors, gt_tokens = run.per_layer(), run.per_head(), run.errors, run.gt_tokens
    elapsed = time.perf_counter() - started
    errors = [{"id": e.id, "image": None, "kind": "bad_record", "error": f"{e.file}:{e.line}: {e.error}"}
              for e in read_errors] + errors
    per_layer.to_parquet(out / "per_layer.parquet", index=False)
    per_head.to_parquet(out / "per_head.parquet", index=False)
    _write_errors(out / "errors.jsonl", errors)
    summary = {
        "model": adapter.name, "family": adapter.family, "release": str(release),
        "release_preview": preview is not None, "excluded_questions": excluded,
        "layers": layers, "n_llm_layers": adapter.n_layers, "n_heads": adapter.n_heads, "rows": rows,
        "prompt": short_answer("{question}"), "general_prompt": GENERAL_PROMPT,
        "protocol": protocol.as_dict(), "processes": world.size, "seconds": round(elapsed, 3),
        "questions_per_second": round(len(questions) / elapsed, 3) if elapsed > 0 else None,
        **summarise(per_layer, errors, len(questions) + len(read_errors), n_boot=n_boot),
        **gt_and_chance(per_layer, protocol.gt, chance.draws, chance.seed, n_boot=n_boot),
    }
    if gt_tokens.agree or gt_tokens.disagree:
        summary["gt_tokens"] = gt_tokens.summary()
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if world.distributed:
        distributed.remove_parts(out, [distributed.part_path(out, World(r, world.size)) for r in range(world.size)])
        distributed.barrier(world)
    return summary


def _write_errors(path: Path, errors: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for e in errors:
            fh.write(json.dumps(e) + "\n")


def _evaluate_part(adapter: Adapter, questions: list[Question], out: Path, world: World, layers: list[int],
                   batch_size: int, rows: str, maps_dir: Path | None, progress: bool, protocol: Protocol,
                   chance: ChanceDraws) -> None:
    """This rank's images into its part directory, unless an earlier run already wrote that part."""
    final = distributed.part_path(out, world)
    if final.is_dir():
        log.info("rank %d/%d: part %s is already complete, reusing it", world.rank, world.size, final)
        return
    mine = distributed.shard(questions, lambda q: q.image, world)
    log.info("rank %d/%d: %d of %d questions", world.rank, world.size, len(mine), len(questions))
    run = GroundingRun(adapter, layers, batch_size, rows, maps_dir, protocol, chance)
    run.run(mine, progress=progress and world.main)
    with distributed.writing_part(final) as part:
        run.per_layer().to_parquet(part / "per_layer.parquet", index=False)
        run.per_head().to_parquet(part / "per_head.parquet", index=False)
        _write_errors(part / "errors.jsonl", run.errors)
        (part / "gt_tokens.json").write_text(json.dumps(asdict(run.gt_tokens)), encoding="utf-8")


def _merge_parts(out: Path, world: World, questions: list[Question]):
    """Every rank's rows, in the order one process produces them (images in first-appearance order)."""
    position: dict[str, int] = {}
    for i, q in enumerate(distributed.order_by_group(questions, lambda q: q.image)):
        position.setdefault(q.id, i)
    parts = [distributed.part_path(out, World(r, world.size)) for r in range(world.size)]

    def ordered(frames: list[pd.DataFrame]) -> pd.DataFrame:
        frames = [f for f in frames if len(f.columns)]
        if not frames:
            return pd.DataFrame([])
        merged = pd.concat(frames, ignore_index=True)
        keys = merged["id"].map(position).to_numpy()
        return merged.iloc[np.argsort(keys, kind="stable")].reset_index(drop=True)

    per_layer = ordered([pd.read_parquet(p / "per_layer.parquet") for p in parts])
    per_head = ordered([pd.read_parquet(p / "per_head.parquet") for p in parts])
    if per_head.empty:
        per_head = GroundingRun.empty_per_head()
    errors = [json.loads(line) for p in parts for line in (p / "errors.jsonl").read_text("utf-8").splitlines()]
    errors.sort(key=lambda e: position.get(e["id"], -1))
    gt_tokens = GtTokensTally()
    for p in parts:
        tally = json.loads((p / "gt_tokens.json").read_text("utf-8"))
        for mapping, n in tally["agree"].items():
            gt_tokens.agree[mapping] = gt_tokens.agree.get(mapping, 0) + n
        gt_tokens.disagree += tally["disagree"]
    gt_tokens.disagree.sort(key=lambda e: position.get(e["id"], -1))
    return per_layer, per_head, errors, gt_tokens


def input_problem(q_types: tuple[str, ...], batch_size: int, releases: list[Path | None],
                  chance_draws: int = 0) -> str | None:
    """What is wrong with a grounding run's inputs, found before the model is loaded."""
    unknown = [t for t in q_types if t not in Q_TYPES]
    if unknown:
        return f"unknown question type(s) {unknown}; choose from {', '.join(Q_TYPES)}"
    if batch_size < 1:
        return "--batch-size must be at least 1"
    if chance_draws < 0:
        return "--chance-draws must be 0 or more"
    for release in filter(None, releases):
        if not Path(release).is_dir():
            return f"release directory {release} does not exist"
    return None
