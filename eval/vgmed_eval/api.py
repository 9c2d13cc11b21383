"""The evaluator as Python functions, for scripts: load a model, grounding metrics, heads, VGRefine answers.

Each function runs the code of its command (``vgmed-eval grounding``, ``heads``, ``vqa``): the same
checks before the model is loaded, the same outputs and the same per-question error handling (a bad
question is recorded and the run goes on). Bad input raises ValueError (or FileNotFoundError for a
missing release) naming the option or file; messages use the command's option names. ``model`` may be
a hub id, a local checkpoint, ``builtin:tiny-<family>`` (a tiny random model, offline), or an adapter
:func:`load_model` returned (load once, use many times). torch and transformers are imported when a
function runs, not on import. See docs/api.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vgmed_eval.adapters import Adapter
    from vgmed_eval.protocol import Protocol
    from vgmed_eval.vqa.benchmarks import VQAItem

__all__ = ["VQAAnswer", "grounding", "heads", "load_model", "questions", "vgrefine"]


def _protocol(protocol: str | Protocol) -> Protocol:
    from vgmed_eval.protocol import PROTOCOLS

    if isinstance(protocol, str):
        if protocol not in PROTOCOLS:
            raise ValueError(f"--protocol {protocol!r}: unknown; choose from {', '.join(sorted(PROTOCOLS))}")
        return PROTOCOLS[protocol]
    return protocol


def load_model(
    model: str,
    *,
    dtype: str = "auto",
    device: str = "cpu",
    chat_template: str | Path | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> Adapter:
    """The adapter of ``model`` (a hub id, a local checkpoint or ``builtin:tiny-<family>``) on ``device``.

    ``dtype``: auto (the checkpoint's own; float32 for tiny models), float32, float16 or bfloat16;
    ``min_pixels`` / ``max_pixels``: Qwen-VL's image bounds. Raises ValueError naming the model.
    """
    from vgmed_eval.adapters import ready_adapter

    template = Path(chat_template) if chat_template is not None else None
    return ready_adapter(model, dtype=dtype, device=device, chat_template=template, min_pixels=min_pixels,
                         max_pixels=max_pixels)


def _adapter(model: str | Adapter, protocol: Protocol) -> Adapter:
    if not isinstance(model, str):
        return model
    from vgmed_eval.adapters import ready_adapter

    return ready_adapter(model, min_pixels=protocol.min_pixels, max_pixels=protocol.max_pixels,
                         explicit_pixels=False, qwen_resize=protocol.qwen_resize, explicit_resize=False)


def grounding(
    model: str | Adapter,
    release: str | Path,
    out: str | Path,
    *,
    layers: str = "all",
    q_types: Sequence[str] = ("localization", "attribute"),
    batch_size: int = 8,
    rows: str = "last",
    limit: int | None = None,
    save_maps: bool = False,
    control: bool = False,
    images: str | Path | None = None,
    bbox_format: str | None = None,
    bootstrap: int = 1000,
    protocol: str | Protocol = "vgmed",
    progress: bool = False,
) -> dict:
    """Grounding metrics of ``model`` on a release, as ``vgmed-eval grounding`` writes them into ``out``
    (per_layer.parquet, per_head.parquet, errors.jsonl, summary.json); returns the summary.

    ``control``: read the natural-image control files (``COCO_*.jsonl``) first, as the command does
    for ``--control-release`` (into ``OUT/control``). Raises ValueError for a bad option,
    FileNotFoundError when the release holds no question file.
    """
    from vgmed_build.release_format import BoxReading
    from vgmed_eval.grounding import evaluate_release, input_problem, parse_layers

    chosen = _protocol(protocol)
    q_types = tuple(q_types)
    problem = input_problem(q_types, batch_size, [Path(release)])
    if problem:
        raise ValueError(problem)
    adapter = _adapter(model, chosen)
    try:
        measured = parse_layers(layers, adapter.n_layers)
    except ValueError as exc:
        raise ValueError(f"--layers: {exc}") from exc
    return evaluate_release(
        adapter, Path(release), Path(out), layers=measured, batch_size=batch_size, rows=rows, save_maps=save_maps,
        limit=limit, q_types=q_types, n_boot=bootstrap, progress=progress, control=control,
        images=Path(images) if images is not None else None,
        reading=BoxReading(format=bbox_format, xyxy_maxima=chosen.xyxy_maxima), protocol=chosen,
    )


def heads(results: str | Path, *, top_k: int = 20, metric: str = "attention_ratio") -> dict:
    """The knockout layer and the ``top_k`` most visually sensitive heads of a grounding run (its ``out``
    folder), as ``vgmed-eval heads`` writes them: pass the result to :func:`vgrefine` as ``heads``."""
    from vgmed_eval.heads import heads_of

    return heads_of(Path(results), top_k=top_k, metric=metric)


def questions(
    data: str | Path, *, benchmark: str = "vgmed-attribute", images: str | Path | None = None, limit: int | None = None
) -> list[VQAItem]:
    """The questions of a VQA benchmark as ``vgmed-eval vqa --benchmark`` reads them (default: the attribute
    questions of a vgmed release, with their reference answers). Raises BenchmarkError (a ValueError)
    naming the file when nothing can be read, and when no question loads (with the first bad record)."""
    from vgmed_eval.vqa.benchmarks import BenchmarkError, get_benchmark

    loaded = get_benchmark(benchmark).load(Path(data), Path(images) if images is not None else None)
    if not loaded.items:
        first = f"; first: {loaded.errors[0]}" if loaded.errors else ""
        raise BenchmarkError(f"{benchmark}: no question loaded from {', '.join(loaded.files) or data} "
                             f"({len(loaded.errors)} records rejected{first})")
    return loaded.items[:limit] if limit is not None else loaded.items


@dataclass
class VQAAnswer:
    """One question's answers: the baseline's (None unless asked for) and VGRefine's, or why it failed."""

    id: str
    question: str
    gold: str
    baseline: str | None = None
    vgrefine: str | None = None
    knocked_out: int | None = None  # grid cells VGRefine knocked out
    grid_cells: int | None = None
    error: str | None = None


def vgrefine(
    model: str | Adapter,
    items: Sequence[VQAItem],
    *,
    heads: str | Path | Mapping,
    baseline: bool = True,
    top_k: int | None = None,
    knockout_layers: Sequence[int] | None = None,
    threshold: str = "percentile",
    minmax_cutoff: float = 0.5,
    rows: str = "last",
    batch_size: int = 8,
    max_new_tokens: int = 16,
    protocol: str | Protocol = "vgmed",
    progress: bool = False,
) -> list[VQAAnswer]:
    """Answer ``items`` (from :func:`questions`) with VGRefine, and with the plain model too when ``baseline``,
    as ``vgmed-eval vqa --vgrefine HEADS [--compare]`` does (greedy, batched, one prefix cache per image).

    ``heads``: a heads file, ``published:NAME``, or the mapping :func:`heads` returns. Returns one
    answer per item, in order; a question that fails carries its ``error`` and the rest go on.
    Raises ValueError when the heads or options do not fit the model.
    """
    from vgmed_eval.vgrefine import VGRefiner
    from vgmed_eval.vqa.answer import answer_items, vgrefine_config

    if batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    chosen = _protocol(protocol)
    adapter = _adapter(model, chosen)
    spec = dict(heads) if isinstance(heads, Mapping) else heads
    config = vgrefine_config(spec, adapter.name, chosen, top_k=top_k,
                             knockout_layers=list(knockout_layers) if knockout_layers else None,
                             threshold=threshold, minmax_cutoff=minmax_cutoff, rows=rows)
    config.check_fits(adapter.n_layers, adapter.n_heads, adapter.name, "heads")
    refiner = VGRefiner(adapter, config, max_new_tokens=max_new_tokens, min_new_tokens=chosen.min_new_tokens)
    errors: list[tuple[str, str]] = []
    answers = {it.id: VQAAnswer(it.id, it.question, it.answer) for it in items}
    for batch in answer_items(refiner, list(items), batch_size, errors, baseline=baseline, progress=progress):
        for it, base, refined in batch:
            a = answers[it.id]
            a.baseline = base.text if base is not None else None
            a.vgrefine, a.knocked_out, a.grid_cells = refined.text, refined.knocked_out, refined.grid_cells
    for qid, message in errors:
        answers[qid].error = message
    return list(answers.values())
