"""Subcommands `generate` (draft questions per region) and `drafts` (export them as JSONL)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vgmed_build import api
from vgmed_build.catalog import CatalogError, open_catalog
from vgmed_build.commands import EXIT_INCOMPLETE, EXIT_ITEM_ERRORS, EXIT_OK, add_build_arg, fail
from vgmed_build.drafting.export import write_drafts
from vgmed_build.drafting.lint import LintLimits
from vgmed_build.drafting.llm import RESPONSE_FORMATS, LlmConfig, llm_option_problem
from vgmed_build.drafting.plan import UNBALANCED, GenerateOptions
from vgmed_build.drafting.templates import TemplateError
from vgmed_build.lock import LockBusy, add_wait_arg

log = logging.getLogger(__name__)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        description="Draft the questions clinicians will review, for every region of the build catalog. "
        "Offline templates by default; any OpenAI-compatible LLM with --drafter llm (API key from the "
        "OPENAI_API_KEY environment variable only). Reruns redo nothing already drafted and make no LLM "
        "request for replies already cached. Exit code 0: done; 1: some drafts or regions ended in error "
        "(stored, retried by the next run); 2: bad options or catalog, or no request can succeed (the server "
        "refuses the key or does not serve --model); 3: the request/cost budget was reached (rerun to continue).",
    )
    add_build_arg(p)
    p.add_argument(
        "--drafter",
        choices=["templates", "llm"],
        default="templates",
        help="who drafts attribute questions: offline deterministic templates, or the LLM",
    )
    p.add_argument(
        "--prompts",
        type=Path,
        default=None,
        help="folder with the question templates and LLM prompts (default: the bundled prompts/)",
    )
    p.add_argument(
        "--localization-per-region",
        type=int,
        default=1,
        metavar="N",
        help="localization questions per region (distinct templates, rotated per region; 0 = none)",
    )
    p.add_argument(
        "--absent-per-region",
        type=int,
        default=1,
        metavar="N",
        help="localization questions answered 'no' per region of each source, each about a structure of "
        "the same source with no labelled pixel in the image asked about. Balanced per source: images "
        "holding every structure of their source get none and images with more absent structures carry "
        "theirs; a source with too few absent (image, structure) pairs is named in the result line. "
        "Keep it equal to --localization-per-region for balanced yes / no answers; 0 = none (use 0 for "
        "sources whose masks are not exhaustive)",
    )
    p.add_argument(
        "--unbalanced",
        choices=UNBALANCED,
        default="drop-yes",
        help="a source whose images hold too few absent structures for as many 'no' as 'yes' (e.g. every "
        "slice holds every structure): drop-yes drafts only as many of its localization 'yes' as it has "
        "'no' (those on images also asked 'no' first, then by image id; a source with no 'no' gets no "
        "localization question; its regions keep their other questions, and grounding their boxes), so "
        "always answering yes scores 50%% on it; keep drafts every 'yes' and leaves the source unbalanced. "
        "The result line names each such source and how many 'yes' were left out. 'yes' drafts an earlier "
        "run stored are never deleted: they are counted, and released unless review rejects them "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--attributes-per-region",
        type=int,
        default=1,
        metavar="N",
        help="attribute questions per region (0 = none)",
    )
    p.add_argument(
        "--position-questions",
        action="store_true",
        help="also draft 'Which side of the patient ...?' questions, answered from geometry, "
        "for regions on the patient's left or right",
    )
    p.add_argument(
        "--paraphrase",
        action="store_true",
        help="have the LLM paraphrase each localization question (needs --model)",
    )
    p.add_argument(
        "--with-image",
        action="store_true",
        help="send the image with the box drawn on it in LLM attribute requests (multimodal model)",
    )
    p.add_argument(
        "--regenerate-rejected",
        action="store_true",
        help="ask the LLM again (new seed, rejection reason in the prompt) for drafts lint rejected",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="redraft every slot, also those already stored (cached LLM replies are still reused)",
    )
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N regions by id (default: all)")
    p.add_argument("--seed", type=int, default=0, help="base seed sent to the LLM (slot and attempt are added)")
    p.add_argument(
        "--max-question-chars",
        type=int,
        default=LintLimits.max_chars,
        help="lint: longest accepted question, in characters",
    )
    p.add_argument(
        "--max-answer-words",
        type=int,
        default=LintLimits.max_answer_words,
        help="lint: longest accepted answer, in words",
    )
    add_llm_options(p, "model name as the server knows it (needed for --drafter llm)")
    add_wait_arg(p)
    p.set_defaults(func=cmd_generate)

    d = subparsers.add_parser(
        "drafts",
        description="Write the stored drafts, one JSON record per line, valid against schemas/draft.schema.json.",
    )
    add_build_arg(d)
    d.add_argument("--out", type=Path, default=None, help="output file (default: standard output)")
    d.add_argument("--status", choices=["ok", "rejected", "error", "all"], default="all", help="which drafts to export")
    d.add_argument(
        "--q-type",
        choices=["localization", "attribute", "position"],
        default=None,
        help="only this question type (default: all)",
    )
    d.set_defaults(func=cmd_drafts)


def add_llm_options(p: argparse.ArgumentParser, model_help: str) -> None:
    """The LLM client's options (model, server, batch service, retries, timeout, formats, budget), shared by
    every command that asks an OpenAI-compatible server (`generate`, `judge`); :func:`llm_config` reads them."""
    llm = p.add_argument_group("LLM (OpenAI-compatible server)")
    llm.add_argument("--model", default=None, help=model_help)
    llm.add_argument(
        "--base-url",
        default=None,
        help="server URL, e.g. http://localhost:8000/v1 (default: OPENAI_BASE_URL or OpenAI)",
    )
    llm.add_argument(
        "--batch",
        action="store_true",
        help="send the LLM requests through the provider's batch service (files + batches API; half price "
        "on OpenAI): a run submits what it needs and stores what earlier batches answered; rerun later to "
        "collect the rest (nothing is asked twice, also after an interruption)",
    )
    llm.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    llm.add_argument("--max-tokens", type=int, default=300, help="maximum completion tokens per reply")
    llm.add_argument("--concurrency", type=int, default=8, help="requests in flight at most")
    llm.add_argument(
        "--max-retries",
        type=int,
        default=4,
        help="retries per request on 408/409/429, 5xx (unless it says the request cannot work), timeouts and "
        "connection errors",
    )
    llm.add_argument(
        "--retry-backoff",
        type=float,
        default=1.0,
        help="first retry delay in seconds (doubles per retry, with jitter; Retry-After wins)",
    )
    llm.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="deadline in seconds for one request, reply included: a reply still arriving then is cut off "
        "(and retried like a timeout)",
    )
    llm.add_argument(
        "--response-format",
        choices=RESPONSE_FORMATS,
        default="json_schema",
        help="how replies are asked to be JSON: json_schema (strict, the schema sent), json_object (the mode "
        "many local servers support), or text (JSON parsed out of the reply); when the server answers 400 "
        "rejecting a mode, the run goes on with the next one (default: %(default)s)",
    )
    llm.add_argument(
        "--no-json-schema",
        dest="response_format",
        action="store_const",
        const="text",
        help="the same as --response-format text",
    )
    llm.add_argument(
        "--no-model-check",
        action="store_true",
        help="do not ask the server's /models list whether it serves --model before the first request "
        "(for servers whose list does not name what --model names, e.g. deployments)",
    )
    llm.add_argument(
        "--max-requests",
        type=int,
        default=None,
        help="budget: stop cleanly after this many requests, retries included (default: no limit)",
    )
    llm.add_argument(
        "--max-cost-usd",
        type=float,
        default=None,
        help="budget: stop cleanly once the estimated cost reaches this; needs the prices (default: no limit)",
    )
    llm.add_argument("--price-in", type=float, default=0.0, help="USD per 1M prompt tokens, for the estimate")
    llm.add_argument("--price-out", type=float, default=0.0, help="USD per 1M completion tokens, for the estimate")


def llm_config(args: argparse.Namespace) -> LlmConfig:
    """The LlmConfig of the options :func:`add_llm_options` added."""
    return LlmConfig(
        model=args.model or "",
        base_url=args.base_url,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        timeout_s=args.timeout,
        max_retries=args.max_retries,
        backoff_s=args.retry_backoff,
        concurrency=args.concurrency,
        response_format=args.response_format,
        check_model=not args.no_model_check,
        max_requests=args.max_requests,
        max_cost_usd=args.max_cost_usd,
        price_in=args.price_in,
        price_out=args.price_out,
    )


def cmd_generate(args: argparse.Namespace) -> int:
    config = llm_config(args)
    problem = llm_option_problem(config)  # also without --model: a bad option is reported, not ignored
    if problem:
        return fail(problem)
    options = GenerateOptions(
        drafter=args.drafter,
        localization_per_region=args.localization_per_region,
        absent_per_region=args.absent_per_region,
        unbalanced=args.unbalanced,
        attributes_per_region=args.attributes_per_region,
        position_questions=args.position_questions,
        paraphrase=args.paraphrase,
        with_image=args.with_image,
        regenerate_rejected=args.regenerate_rejected,
        force=args.force,
        limit=args.limit,
        seed=args.seed,
        prompts_dir=args.prompts,
        lint_limits=LintLimits(max_chars=args.max_question_chars, max_answer_words=args.max_answer_words),
        llm=config if args.model else None,
        batch=args.batch,
    )
    try:
        stats = api.generate(args.build, options=options, wait=args.wait)
    except (CatalogError, TemplateError, LockBusy, ValueError) as exc:
        return fail(str(exc))
    print(f"generate: {stats.summary()}")  # the result: stdout (docs/cli.md)
    if stats.fatal:
        return fail(f"{stats.fatal}; everything drafted so far is stored")
    if stats.budget_reached:
        log.warning("budget reached: everything drafted so far is stored; rerun to continue")
        return EXIT_INCOMPLETE
    return EXIT_ITEM_ERRORS if stats.errors or stats.regions_failed else EXIT_OK


def cmd_drafts(args: argparse.Namespace) -> int:
    try:
        catalog = open_catalog(args.build, create=False)
    except CatalogError as exc:
        return fail(str(exc))
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    with catalog:
        try:
            n = write_drafts(catalog, out, args.status, args.q_type)
        finally:
            if args.out:
                out.close()
    if args.out:  # records on stdout leave the summary to stderr, so the JSONL stays clean
        print(f"drafts: {n} records -> {args.out}")
    else:
        log.info("drafts: %d records -> stdout", n)
    return EXIT_OK
