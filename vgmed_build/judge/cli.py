"""`vgmed-build judge`: a VLM's verdict on every ok draft, before clinicians review (see judge.run)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vgmed_build import api
from vgmed_build.catalog import CatalogError
from vgmed_build.commands import EXIT_INCOMPLETE, EXIT_ITEM_ERRORS, EXIT_OK, add_build_arg, fail
from vgmed_build.drafting.cli import add_llm_options, llm_config
from vgmed_build.drafting.templates import TemplateError
from vgmed_build.lock import LockBusy, add_wait_arg

log = logging.getLogger(__name__)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "judge",
        description="Ask a multimodal LLM (any OpenAI-compatible server; API key from OPENAI_API_KEY only) "
        "for a verdict on every ok draft: the image with the draft's box(es) drawn in red and the question "
        "and answer go in, one of ok / wrong_target / not_answerable / ambiguous / wrong_answer and a short "
        "reason come back (schemas/llm_judge.schema.json). Verdicts are stored in the catalog beside the lint "
        "result, never overwritten; `review status --judge` measures the judge against the clinicians, and "
        "`review push --triage` sends what it flags to review. Reruns judge only drafts without a verdict "
        "(of this model and prompt, on their current text) and send no request for replies already cached. "
        "Exit code 0: done; 1: some drafts could not be judged (stored as errors, asked again next run); "
        "2: bad options or catalog, or no request can succeed; 3: the budget was reached (rerun to continue).",
    )
    add_build_arg(p)
    p.add_argument(
        "--prompts",
        type=Path,
        default=None,
        help="folder with judge_system.txt and judge_user.txt (default: the bundled prompts/)",
    )
    p.add_argument("--limit", type=int, default=None, metavar="N", help="judge at most N drafts (by id; default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed sent with every request")
    add_llm_options(p, "the judge: a multimodal model as the server knows it (required)")
    p.set_defaults(temperature=0.0, max_tokens=200)
    add_wait_arg(p)
    p.set_defaults(func=cmd_judge)


def cmd_judge(args: argparse.Namespace) -> int:
    from vgmed_build.judge.run import JudgeOptions

    options = JudgeOptions(llm=llm_config(args), prompts_dir=args.prompts, limit=args.limit, seed=args.seed,
                           batch=args.batch, progress=not args.no_progress)
    try:
        stats = api.judge(args.build, options=options, wait=args.wait)
    except (CatalogError, TemplateError, LockBusy, ValueError) as exc:
        return fail(str(exc))
    print(stats.summary())
    if stats.fatal:
        return fail(f"{stats.fatal}; every verdict so far is stored")
    if stats.budget_reached:
        log.warning("budget reached: every verdict so far is stored; rerun to continue")
        return EXIT_INCOMPLETE
    return EXIT_ITEM_ERRORS if stats.errors else EXIT_OK
