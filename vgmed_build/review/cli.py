"""`vgmed-build labelstudio start|stop|status|invite` and `vgmed-build review push|pull|status`."""

from __future__ import annotations

import argparse
import json

from vgmed_build.catalog import CatalogError, open_catalog
from vgmed_build.commands import EXIT_INCOMPLETE, EXIT_ITEM_ERRORS, EXIT_OK, add_build_arg, fail
from vgmed_build.lock import LockBusy, add_wait_arg, stage_lock
from vgmed_build.review.api import EXPORT_CONCURRENCY, LabelStudioError
from vgmed_build.review.decision import POLICIES, decide
from vgmed_build.review.pull import pull
from vgmed_build.review.push import BATCH_SIZE, push
from vgmed_build.review.server import (
    invite_url,
    resolve_server,
    server_status,
    start_server,
    state_dir,
    stop_server,
)
from vgmed_build.review.state import ADJUDICATION, REVIEW
from vgmed_build.review.status import adjudication_notes, json_safe, status_lines, summary
from vgmed_build.review.triage import select_for_review


def add_commands(subparsers) -> None:
    _register_labelstudio(subparsers)
    _register_review(subparsers)


def _add_server(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        default=None,
        help="URL of your own Label Studio (else $LABEL_STUDIO_URL, else the build's local server "
        "from `labelstudio start`); its token comes from $LABEL_STUDIO_API_KEY, never from the "
        "command line",
    )
    p.add_argument(
        "--document-root",
        default=None,
        metavar="DIR",
        help="with --url on this machine: the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, so images "
        "are served from disk instead of uploaded",
    )


def _register_labelstudio(subparsers) -> None:
    p = subparsers.add_parser(
        "labelstudio",
        description="Manage the build's local Label Studio: its own virtual environment (installed on first "
        "use; $VGMED_LABELSTUDIO_VENV picks where), SQLite and credentials under <build>/labelstudio/, "
        "bound to 127.0.0.1 on a free port.",
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = sub.add_parser(
        "start",
        help="start the server (or report the running one)",
        description="Start the build's Label Studio and print where to log in.",
    )
    add_build_arg(s)
    s.add_argument(
        "--document-root",
        default=None,
        metavar="DIR",
        help="folder the server may serve local image files from (default: the build directory)",
    )
    s.add_argument(
        "--port",
        type=int,
        default=None,
        help="port to use when free (default: the previous port, else any free one)",
    )
    s.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds to wait for the server to answer /health (a first start migrates its database)",
    )
    s.add_argument(
        "--workers",
        type=int,
        default=None,
        help="server processes (gunicorn workers, ~350 MB each); `review pull` exports slices of a project "
        "in parallel across them (default: 2 per CPU core, at least 2, at most 4)",
    )
    s.set_defaults(func=cmd_labelstudio_start)
    for name, func, text in (
        ("stop", cmd_labelstudio_stop, "stop the build's server"),
        ("status", cmd_labelstudio_status, "say whether the build's server runs, and where"),
    ):
        s = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        add_build_arg(s)
        s.set_defaults(func=func)
    s = sub.add_parser(
        "invite",
        help="print a sign-up link for a new reviewer",
        description="Print a link that lets a clinician create a reviewer account on the server "
        "(open sign-up is disabled).",
    )
    add_build_arg(s)
    _add_server(s)
    s.set_defaults(func=cmd_labelstudio_invite)


def _register_review(subparsers) -> None:
    p = subparsers.add_parser(
        "review",
        description="Push drafts to Label Studio as pre-filled tasks, pull the reviewers' verdicts and edits "
        "back into the catalog, and follow progress and agreement.",
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    s = sub.add_parser(
        "push",
        help="create or update review tasks from the ok drafts",
        description="Create one task per ok draft (idempotent: only new drafts are added, drafts "
        "not yet reviewed are updated, and an interrupted push resumes without duplicates).",
    )
    add_build_arg(s)
    _add_server(s)
    s.add_argument(
        "--reviewers-per-item",
        type=int,
        default=1,
        metavar="N",
        help="how many different reviewers see each task (Label Studio's overlap)",
    )
    s.add_argument(
        "--images",
        choices=("auto", "local", "upload"),
        default="auto",
        help="how images reach the server: local files (server on this machine, images under its "
        "document root), upload, or auto (local when possible)",
    )
    s.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="tasks per import request")
    s.add_argument("--title", default=None, help="project title when creating it (default: 'vgmed review (<build>)')")
    s.add_argument(
        "--adjudication",
        action="store_true",
        help="push the drafts disputed under --policy to a separate adjudication project instead",
    )
    triage = s.add_argument_group("triage (see docs/review.md): review what the judge flags plus an audit sample")
    triage.add_argument(
        "--triage",
        action="store_true",
        help="push only the ok drafts the judge (`vgmed-build judge`) flags or has not judged, plus a uniform random "
        "audit sample of those it passed; the audit is recorded and kept by later pushes (only topped up), and "
        "`release --policy sampled` uses it to estimate the error rate of the drafts nobody reviewed",
    )
    triage.add_argument("--audit", type=int, default=None, metavar="N", help="audit sample size")
    triage.add_argument(
        "--audit-target",
        type=float,
        default=None,
        metavar="RATE",
        help="derive the audit size from a target error rate (e.g. 0.02): the smallest sample whose exact 95%% "
        "interval lies at or below RATE when it holds no error (0.02: 183 drafts); recorded for release",
    )
    triage.add_argument(
        "--lint-audit",
        type=int,
        default=0,
        metavar="N",
        help="also push a uniform sample of N drafts lint rejected, so `review status --judge` can measure the lint "
        "(they never reach a release)",
    )
    triage.add_argument("--audit-seed", type=int, default=0, help="seed of the audit samples")
    _add_policy(s)
    add_wait_arg(s)
    s.set_defaults(func=cmd_review_push)

    s = sub.add_parser(
        "pull",
        help="bring new annotations into the catalog",
        description="Store every annotation revision made since the last pull as a review event. The first "
        "pull exports every task this build pushed; later pulls only the tasks saved since (on the server's clock, "
        "with a 5-minute overlap). An annotation that cannot be stored (no or an unknown verdict, a box with a "
        "missing or non-numeric coordinate, task data rewritten on the server) is listed as a warning and kept "
        "for `review status`; the others are stored, and the exit status is 1. A failure of the server or of "
        "the connection is one error naming the server and the step (exit 2); rerun to resume.",
    )
    add_build_arg(s)
    _add_server(s)
    s.add_argument(
        "--concurrency",
        type=int,
        default=EXPORT_CONCURRENCY,
        help="export requests in flight at once; each exports a slice of the project, so a server with "
        "several worker processes (as `labelstudio start` runs) serialises them in parallel",
    )
    s.add_argument(
        "--full",
        action="store_true",
        help="export every task of the projects, not only those saved since the previous pull (revisions "
        "already stored are still kept once)",
    )
    add_wait_arg(s)
    s.set_defaults(func=cmd_review_pull)

    s = sub.add_parser(
        "status",
        help="progress, agreement and disputed drafts (offline)",
        description="Summarise the review from the catalog (run `review pull` first): progress, "
        "decisions under the policy, percent agreement, Cohen's and Fleiss' kappa, disputed drafts.",
    )
    add_build_arg(s)
    _add_policy(s)
    s.add_argument("--limit", type=int, default=20, help="disputed drafts to list (0 = all)")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.add_argument(
        "--judge",
        action="store_true",
        help="also measure the VLM judge (`vgmed-build judge`) and the rule lint against the clinicians' decisions: "
        "confusion matrix, precision and recall of a flag, Cohen's kappa, with bootstrap 95%% intervals",
    )
    s.add_argument(
        "--judge-model",
        default=None,
        metavar="NAME",
        help="with --judge (implied): which judge to measure when several were run (another model or an edited "
        "prompt): a judge as stored, MODEL@PROMPT-HASH, or a model name (its latest prompt); default: the judge "
        "that ran last. The report names the judge measured and the others run",
    )
    s.set_defaults(func=cmd_review_status)


def _add_policy(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--policy",
        choices=POLICIES,
        default="majority",
        help="how reviewers' verdicts decide a draft (see docs/review.md)",
    )
    p.add_argument(
        "--adjudicator",
        default=None,
        metavar="REVIEWER",
        help="pseudonymous reviewer id (r-xxxxxxxx, see `review status`) whose verdict wins under --policy adjudicator",
    )


# ---------------------------------------------------------------- labelstudio


def _print_login(info, build: str) -> None:
    print(f"Label Studio: {info.url}")
    print(f"  login:    {info.username}")
    print(f"  password: {info.password}")
    print(f"  (login and API token kept owner-only in {state_dir(build) / 'credentials.json'})")


def cmd_labelstudio_start(args) -> int:
    try:
        info = start_server(
            args.build, document_root=args.document_root, port=args.port, timeout=args.timeout, workers=args.workers
        )
    except LabelStudioError as exc:
        return fail(str(exc))
    _print_login(info, args.build)
    return EXIT_OK


def cmd_labelstudio_stop(args) -> int:
    print("stopped" if stop_server(args.build) else f"no Label Studio running for {args.build}")
    return EXIT_OK


def cmd_labelstudio_status(args) -> int:
    info = server_status(args.build)
    if info is None:
        print(f"not running (start it with `vgmed-build labelstudio start --build {args.build}`)")
        return EXIT_INCOMPLETE
    print(f"running (pid {info.pid}), serving files under {info.document_root}")
    _print_login(info, args.build)
    return EXIT_OK


def cmd_labelstudio_invite(args) -> int:
    try:
        print(invite_url(resolve_server(args.build, args.url, document_root=args.document_root)))
    except LabelStudioError as exc:
        return fail(str(exc))
    return EXIT_OK


# ---------------------------------------------------------------- review


def cmd_review_push(args) -> int:
    try:
        with open_catalog(args.build, create=False) as catalog, stage_lock(args.build, "review push", args.wait):
            server = resolve_server(args.build, args.url, document_root=args.document_root)
            project, reviewers, notes, ids, selection = REVIEW, args.reviewers_per_item, None, None, None
            if args.triage and not args.adjudication:
                selection = select_for_review(catalog, args.audit, args.audit_target, args.lint_audit,
                                              args.audit_seed)
                ids = selection.ids
            if args.adjudication:
                notes = adjudication_notes(catalog, decide(catalog, args.policy, args.adjudicator))
                if not notes:
                    print(f"no disputed drafts under policy '{args.policy}' (pull first?)")
                    return EXIT_OK
                project, reviewers = ADJUDICATION, 1
            report = push(
                catalog,
                server,
                project=project,
                title=args.title,
                reviewers_per_item=reviewers,
                images=args.images,
                draft_ids=notes if notes is not None else ids,
                notes=notes,
                batch_size=args.batch_size,
                progress=not args.no_progress,
                with_rejected=bool(selection and selection.lint_audit),
            )
    except (LabelStudioError, CatalogError, ValueError, LockBusy) as exc:
        return fail(str(exc))
    if selection is not None:
        print(f"triage: {len(selection.flagged)} flagged by the judge, {len(selection.unjudged)} not judged, "
              f"audit {len(selection.audit)} of {len(selection.audit) + len(selection.passed)} judge-passed, "
              f"{len(selection.lint_audit)} lint-rejected audited; {len(selection.passed)} left unreviewed")
    print(
        f"{report.project} project {report.project_id} at {server.url}/projects/{report.project_id}/data: "
        f"{report.created} new, {report.updated} updated, {report.unchanged} unchanged, "
        f"{report.kept_reviewed} kept (already reviewed), {report.adopted} recovered, {report.withdrawn} deleted "
        f"(withdrawn source items); images: {report.images}"
    )
    return EXIT_OK


def cmd_review_pull(args) -> int:
    try:
        with open_catalog(args.build, create=False) as catalog, stage_lock(args.build, "review pull", args.wait):
            server = resolve_server(args.build, args.url, document_root=args.document_root)
            report = pull(
                catalog, server, progress=not args.no_progress, concurrency=args.concurrency, full=args.full
            )
    except (LabelStudioError, CatalogError, LockBusy) as exc:
        return fail(str(exc))
    print(
        f"pulled {report.new_events} new review event(s); {report.known_events} already stored, "
        f"{report.skipped} skipped annotation(s), {len(report.errors)} invalid annotation(s) not stored "
        f"({report.new_problems} new; `review status` lists them)"
    )
    return EXIT_ITEM_ERRORS if report.errors else EXIT_OK


def cmd_review_status(args) -> int:
    try:
        with open_catalog(args.build, create=False) as catalog:
            s = summary(catalog, args.policy, args.adjudicator, args.limit, judge=args.judge or bool(args.judge_model),
                        judge_model=args.judge_model)
    except (CatalogError, ValueError) as exc:
        return fail(str(exc))
    if args.json:
        print(json.dumps(json_safe(s), indent=2, allow_nan=False))
    else:
        for line in status_lines(s):
            print(line)
    return EXIT_OK
