"""The dataset pipeline as Python functions, for scripts: ingest, generate, judge, release, validate, read a
release.

Each function is the code path of its command (the command's handler calls it and only prints and
picks the exit code), so a script gets the same locks, checks and guarantees: one writer per stage
(:class:`~vgmed_build.lock.LockBusy` when another run holds the build, unless ``wait``), one item per
transaction, a release built aside, validated and only then swapped in. Bad input raises an error
whose message names the file, option or item and what is wrong (the messages use the command's
option names, which are the keyword names here). Heavy libraries are imported only when a function
runs. See docs/api.md for a worked example.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vgmed_build.catalog import open_catalog
from vgmed_build.catalog.ingest import INGEST_STAGE
from vgmed_build.config import ConfigError, check_unique_names, load_sources_file, parse_source_flag
from vgmed_build.lock import stage_lock

if TYPE_CHECKING:
    from vgmed_build.drafting.generate import GenerateStats
    from vgmed_build.drafting.plan import GenerateOptions
    from vgmed_build.ingest.run import IngestReport
    from vgmed_build.judge.run import JudgeOptions, JudgeStats
    from vgmed_build.release import release_build as release
    from vgmed_build.sources import SourceSpec
    from vgmed_build.validate import validate_dir as validate

log = logging.getLogger(__name__)

__all__ = ["generate", "ingest", "judge", "read_release", "release", "source_specs", "validate"]


# ---------------------------------------------------------------- ingest


def source_specs(
    *,
    sources: str | Path | None = None,
    source: Sequence[str] = (),
    options: Mapping[str, Any] | None = None,
    modality: str | None = None,
    body_part: str | None = None,
) -> list[SourceSpec]:
    """The sources to ingest: those of a ``sources`` file plus quick ``source`` flags (``"msd:/data/Task03"``).

    ``options``/``modality``/``body_part`` apply to the ``source`` flags. Checked before anything is
    written (ConfigError naming the entry): a mistyped kind, path or option changes nothing.
    """
    specs = load_sources_file(sources) if sources else []
    if options and not source:
        raise ConfigError("--option sets options of --source flags; give --source KIND:PATH")
    specs += [parse_source_flag(flag, modality, body_part or "", dict(options or {})) for flag in source]
    check_unique_names(specs, "--sources / --source")
    if not specs:
        raise ConfigError("nothing to ingest; give --sources FILE or --source KIND:PATH")
    typed: list[str | None] = [None] * (len(specs) - len(source)) + list(source)
    missing = [
        f"{f'--source {flag}' if flag else f'source {spec.name!r}: {spec.path}'}: no such file or folder"
        for spec, flag in zip(specs, typed, strict=True)
        if not spec.path.exists()
    ]
    if missing:
        raise ConfigError("; ".join(missing))
    return specs


def ingest(
    build: str | Path,
    *,
    sources: str | Path | None = None,
    source: Sequence[str] = (),
    options: Mapping[str, Any] | None = None,
    modality: str | None = None,
    body_part: str | None = None,
    workers: int = 1,
    force: bool = False,
    keep_missing: bool = False,
    with_paths: bool = True,
    wait: bool = False,
    progress: bool | None = False,
    dask_scheduler: str | None = None,
    dask_batch: int = 0,
) -> IngestReport:
    """Render every source item into the build folder ``build`` (created) as ``vgmed-build ingest`` does.

    ``dask_scheduler``: render on that Dask cluster (``tcp://host:8786``) instead of ``workers`` local
    processes; DaskError when it cannot be used; ``dask_batch`` items per task (0: chosen by timing).

    Resumable: unchanged items are skipped; a bad item is an error in the report (the run goes on),
    an item the size filters leave empty is counted in ``report.skipped`` by reason. Items a source
    no longer lists are withdrawn unless ``keep_missing``. Raises ConfigError (bad sources),
    CatalogError, LockBusy (another ingest holds ``build``; ``wait`` waits instead).
    """
    specs = source_specs(sources=sources, source=source, options=options, modality=modality, body_part=body_part)
    from vgmed_build.ingest.run import run_ingest  # numpy, nibabel, pydicom: only once the input is checked
    from vgmed_build.labelnames import name_warnings

    with stage_lock(Path(build), INGEST_STAGE, wait):
        report = run_ingest(
            build, specs, workers=workers, force=force, progress=progress, keep_missing=keep_missing,
            with_paths=with_paths, dask_scheduler=dask_scheduler, dask_batch=dask_batch,
        )
    with open_catalog(build) as catalog:
        stored = catalog.labels_by_source()
    for spec in specs:
        for warning in name_warnings(spec, stored.get(spec.name, ())):
            log.warning(warning)
    return report


# ---------------------------------------------------------------- generate


def generate(build: str | Path, *, options: GenerateOptions | None = None, wait: bool = False) -> GenerateStats:
    """Draft the questions of every region of ``build`` as ``vgmed-build generate`` does (default: offline
    templates; ``options`` is a :class:`~vgmed_build.drafting.plan.GenerateOptions`).

    Reruns redo nothing already drafted. The returned stats say what happened: ``errors`` /
    ``regions_failed`` (stored, retried next run), ``budget_reached`` (rerun to continue), ``fatal``
    (no LLM request could succeed). Raises ValueError (bad options), CatalogError (no build),
    TemplateError (bad prompts folder), LockBusy (another generate holds ``build``).
    """
    from vgmed_build.drafting.generate import run_generate
    from vgmed_build.drafting.llm import install_log_redaction, llm_option_problem
    from vgmed_build.drafting.plan import GenerateOptions

    options = options or GenerateOptions()
    install_log_redaction()
    if options.llm is not None:
        problem = llm_option_problem(options.llm)
        if problem:
            raise ValueError(problem)
        if options.llm.price_in == 0 and options.llm.price_out == 0 and options.llm.max_cost_usd is not None:
            log.warning("--max-cost-usd without --price-in/--price-out: the cost estimate stays 0")
    if options.batch and not options.needs_llm:
        raise ValueError("--batch sends LLM requests: it needs --drafter llm or --paraphrase")
    if options.needs_llm and options.llm is None:
        raise ValueError("--drafter llm and --paraphrase need --model (and --base-url or OPENAI_BASE_URL)")
    with open_catalog(build, create=False) as catalog, stage_lock(Path(build), "generate", wait):
        return run_generate(catalog, options)


# ---------------------------------------------------------------- judge


def judge(build: str | Path, *, options: JudgeOptions, wait: bool = False) -> JudgeStats:
    """A VLM's verdict on every ok draft of ``build`` as ``vgmed-build judge`` does (``options`` is a
    :class:`~vgmed_build.judge.run.JudgeOptions`; its ``llm`` an LlmConfig naming the model and server).

    Reruns judge only drafts without a verdict of this judge on their current content. The returned
    stats say what happened: ``errors`` (stored, asked again next run), ``budget_reached`` (rerun to
    continue), ``fatal`` (no request can succeed, e.g. the server is down). Raises ValueError (bad
    options, no model), CatalogError (no build), TemplateError (bad prompts folder), LockBusy (another
    judge holds ``build``).
    """
    from vgmed_build.drafting.llm import install_log_redaction, llm_option_problem
    from vgmed_build.judge.run import run_judge

    problem = llm_option_problem(options.llm) or (None if options.llm.model else "judge needs --model")
    if problem:
        raise ValueError(problem)
    install_log_redaction()
    with open_catalog(build, create=False) as catalog, stage_lock(Path(build), "judge", wait):
        return run_judge(catalog, options)


# ---------------------------------------------------------------- release and validate

# ``release`` and ``validate`` are the commands' own functions, imported when first used (their modules
# import the release stack, and they import this module's siblings): ``api.release`` is
# :func:`vgmed_build.release.release_build`, ``api.validate`` is :func:`vgmed_build.validate.validate_dir`.
_LAZY = {"release": ("vgmed_build.release", "release_build"), "validate": ("vgmed_build.validate", "validate_dir")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def read_release(release_dir: str | Path, *, verify: bool = True) -> dict[str, list[dict]]:
    """The records of a release made by ``vgmed-build release``, by question file (``VGMED_localization.jsonl``,
    ``VGMED_attribute.jsonl``, and the ``COCO_*.jsonl`` control files when present), in file order.

    Every record is checked against schemas/release_record.schema.json and, with ``verify``, every
    file against the manifest's size and SHA-256 first. Raises ExportError naming the file (and line).
    """
    from vgmed_build.export import open_release

    with open_release(release_dir, verify=verify) as opened:
        return {name: list(opened.records(name)) for name in opened.record_files()}
