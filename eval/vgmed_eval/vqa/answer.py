"""Answering a VQA benchmark's questions in batches (grouped by image, resumable from the rows already
written) and merging the parts of a launched run; `vgmed-eval vqa` (:mod:`vgmed_eval.cli.vqa`) drives it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tqdm import tqdm

from vgmed_eval import distributed
from vgmed_eval.distributed import World
from vgmed_eval.protocol import PUBLISHED_HEADS, Protocol
from vgmed_eval.vqa.benchmarks import VQAItem
from vgmed_eval.vqa.prompts import question_prompt
from vgmed_eval.vqa.scoring import SCORE_FUNCTIONS

log = logging.getLogger(__name__)


def vgrefine_config(heads: str | Path | dict, model: str, protocol: Protocol, *, top_k: int | None = None,
                    knockout_layers: list[int] | None = None, threshold: str = "percentile",
                    minmax_cutoff: float = 0.5, rows: str = "last"):
    """The VGRefineConfig of ``--vgrefine`` (a heads file, ``published:NAME``, or a heads mapping as
    `vgmed-eval heads` writes it) and the triage options; ValueError names what is wrong."""
    from vgmed_eval.vgrefine import VGRefineConfig, heads_from, load_heads

    if isinstance(heads, dict):
        chosen, layer, made_for = heads_from(heads, "heads")
    elif str(heads).startswith("published:"):
        name = str(heads).removeprefix("published:")
        if name not in PUBLISHED_HEADS:
            raise ValueError(f"--vgrefine {heads}: no published heads of that name; known: "
                             f"{', '.join('published:' + n for n in PUBLISHED_HEADS)}")
        chosen, layer, made_for = heads_from(PUBLISHED_HEADS[name], str(heads))
    else:
        chosen, layer, made_for = load_heads(heads)
    if made_for and made_for != model:
        log.warning("heads %s were made for %s, not %s", heads if not isinstance(heads, dict) else "", made_for,
                    model)
    if top_k:
        chosen = chosen[:top_k]
    return VGRefineConfig(heads=chosen, knockout_layers=tuple(knockout_layers or [layer]),
                          percentile=protocol.percentile, threshold=threshold,
                          minmax_cutoff=minmax_cutoff, rows=rows, mode=protocol.vgrefine_mode)


def exclude_items(loaded, path: Path, benchmark: str) -> int:
    """Drop the questions whose image an exclusion list names for ``benchmark``; returns how many went."""
    from vgmed_eval.leakage import excluded_benchmark_images

    images = excluded_benchmark_images(path, benchmark)
    kept = [it for it in loaded.items if it.image.key not in images]
    dropped, loaded.items = len(loaded.items) - len(kept), kept
    if dropped:
        loaded.notes.append(f"{dropped} questions left out: their images are on the exclusion list {path}")
    return dropped


def _done_ids(path: Path) -> dict[str, dict]:
    """Answered rows by id; a line cut short by a killed process is skipped (its question is redone)."""
    rows = {}
    if path.exists():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s:%d: incomplete line (interrupted run), answering that question again", path, n)
                    continue
                rows[row["id"]] = row
    return rows


def _row(item: VQAItem, system: str, prompt: str, answer, benchmark: str, scorer: str) -> dict:
    s = SCORE_FUNCTIONS[scorer](answer.text, item.answer, item.kind, item.options)
    return {
        "id": item.id, "system": system, "benchmark": benchmark, "question": item.question, "prompt": prompt,
        "options": list(item.options), "response": answer.text, "gold": item.answer, "kind": item.kind,
        "modality": item.modality, "category": item.category, "parsed": s.parsed, "score": s.score,
        "correct": s.correct, "knocked_out": answer.knocked_out, "grid_cells": answer.grid_cells,
    }


def _prepare(chunk: list[VQAItem], refiner, prefixes: dict, errors: list[str]):
    """Open the images, compute the missing prefixes (batched), split each prompt into prefix + suffix.

    A bad image or prompt costs its own question only (recorded in ``errors`` as (id, message))."""
    images, failed = {}, set()
    for it in chunk:
        try:
            images.setdefault(it.image.key, it.image.open())
        except Exception as exc:
            errors.append(_error(it, exc))
            failed.add(it.id)
    new = [k for k in images if k not in prefixes]
    try:
        prefixes.update(zip(new, refiner.prefixes([images[k] for k in new]), strict=True))
    except Exception:  # find the culprit(s) one image at a time
        for k in new:
            try:
                prefixes[k] = refiner.prefix(images[k])
            except Exception as exc:
                errors += [_error(it, exc) for it in chunk if it.image.key == k]
                failed.update(it.id for it in chunk if it.image.key == k)
    ready, queries = [], []
    for it in chunk:
        if it.id in failed:
            continue
        try:
            queries.append(refiner.query(prefixes[it.image.key], images[it.image.key], question_prompt(it)))
            ready.append(it)
        except Exception as exc:
            errors.append(_error(it, exc))
    return ready, queries


def _error(item: VQAItem, exc: Exception) -> tuple[str, str]:
    return item.id, f"{item.where or item.id}: {type(exc).__name__}: {exc}"


def answered_rows(out: Path, system: str) -> dict[str, dict]:
    """Rows already answered: the merged file and any rank's part left by an interrupted launch."""
    rows = _done_ids(out / f"predictions_{system}.jsonl")
    for part in sorted(distributed.parts_dir(out).glob(f"*.predictions_{system}.jsonl")):
        rows.update(_done_ids(part))
    return rows


def answer_to_files(adapter, refiner, todo: list[VQAItem], systems: list[str], done: dict, files: dict[str, Path], *,
                    benchmark: str, batch_size: int, scorer: str, progress: bool) -> list[tuple[str, str]]:
    """Answer ``todo``, appending each system's rows to ``files`` (and ``done``) after every batch; returns
    the (id, message) of the questions that failed."""
    errors: list[tuple[str, str]] = []
    handles = {s: _append(f) for s, f in files.items()}
    try:
        for answered in answer_items(refiner, todo, batch_size, errors, baseline="baseline" in systems,
                                     refined="vgrefine" in systems, progress=progress, desc=f"vqa {benchmark}"):
            for it, base, refined in answered:
                prompt = adapter.prompt(question_prompt(it))
                for system, answer in (("baseline", base), ("vgrefine", refined)):
                    if answer is not None and it.id not in done[system]:
                        row = _row(it, system, prompt, answer, benchmark, scorer)
                        handles[system].write(json.dumps(row, ensure_ascii=False) + "\n")
                        done[system][it.id] = row
            for h in handles.values():
                h.flush()
    finally:
        for h in handles.values():
            h.close()
    return errors


def answer_items(refiner, items: list[VQAItem], batch_size: int, errors: list[tuple[str, str]], *,
                 baseline: bool = True, refined: bool = True, progress: bool = False, desc: str = "vqa"):
    """Answer ``items`` in batches (grouped by image, so each image's prefix cache is computed once and
    freed after its last question); yields each batch's [(item, baseline answer, VGRefine answer)].

    A question whose image or prompt fails is appended to ``errors`` as (id, message) and skipped."""
    todo = distributed.order_by_group(items, lambda it: it.image.key)
    remaining: dict[str, int] = {}
    for it in todo:
        remaining[it.image.key] = remaining.get(it.image.key, 0) + 1
    prefixes: dict[str, object] = {}
    with tqdm(total=len(todo), desc=desc, unit="q", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            ready, queries = _prepare(chunk, refiner, prefixes, errors)
            if queries:
                base, ref = refiner.answer(queries, baseline=baseline, refined=refined)
                yield [(it, base[i] if base else None, ref[i] if ref else None) for i, it in enumerate(ready)]
            for it in chunk:
                remaining[it.image.key] -= 1
                if remaining[it.image.key] == 0:
                    prefixes.pop(it.image.key, None)  # free its KV cache
            bar.update(len(chunk))


def _append(path: Path):
    """Open for appending; a last line cut short by a kill is closed first so the next row stays whole."""
    if path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        with path.open("a", encoding="utf-8") as fh:
            fh.write("\n")
    return path.open("a", encoding="utf-8")


def merge_parts(out: Path, world: World, items: list[VQAItem], systems: list[str], files: dict[str, Path],
                 done: dict) -> tuple[list[tuple[str, str]], int]:
    """Rank 0: every rank's rows into ``predictions_<system>.jsonl`` in one process's order, then the parts go."""
    order = distributed.order_by_group(items, lambda it: it.image.key)
    position = {it.id: i for i, it in reversed(list(enumerate(order)))}
    parts = sorted(distributed.parts_dir(out).glob("*.predictions_*.jsonl"))
    for s in systems:
        done[s] = answered_rows(out, s)
        tmp = files[s].with_name(files[s].name + ".merging")
        with tmp.open("w", encoding="utf-8") as fh:
            for it in order:
                if it.id in done[s]:
                    fh.write(json.dumps(done[s][it.id], ensure_ascii=False) + "\n")
        tmp.replace(files[s])
    infos = [distributed.part_path(out, World(r, world.size), ".vqa.json") for r in range(world.size)]
    errors, answered = [], 0
    for info in infos:
        data = json.loads(info.read_text(encoding="utf-8"))
        errors += [tuple(e) for e in data["errors"]]
        answered += data["answered"]
    errors.sort(key=lambda e: position.get(e[0], -1))
    distributed.remove_parts(out, parts + infos)
    return errors, answered
