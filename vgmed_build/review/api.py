"""The few Label Studio endpoints the SDK does not wrap the way we need (raw calls through its client)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path

from vgmed_build.errors import VgmedError
from vgmed_build.review.client import LabelStudioClient


class LabelStudioError(VgmedError, RuntimeError):
    """The server cannot be installed, started, reached or used; the message says what to do."""


class ServerFailure(LabelStudioError):
    """The server answered an error or something that is not what the endpoint returns; :func:`step`
    names the server and the step it broke."""


RESUME_HINT = "rerun the same command to resume (what finished is stored)"


def _failure(exc: BaseException) -> str | None:
    """What went wrong, in words, for a failure of the server or of the connection to it; None for
    anything else (a bug, or our own refusal, which keeps its message)."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    if isinstance(exc, ServerFailure):
        return str(exc)
    if isinstance(exc, ApiError):
        body = " ".join((exc.body if isinstance(exc.body, str) else json.dumps(exc.body, default=str)).split())
        if exc.status_code is not None and exc.status_code < 300:  # the SDK's wrapper of an unreadable answer
            return f"the answer is not valid JSON (cut short?): {body[:200]!r}"
        return f"HTTP {exc.status_code}: {body[:300]}"
    if isinstance(exc, json.JSONDecodeError):
        return f"the answer is not valid JSON (cut short?): {exc}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"the server closed the connection before answering in full ({exc})"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer in time ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({exc})"
    if isinstance(exc, httpx.HTTPError):
        return f"the connection failed: {type(exc).__name__}: {exc}"
    return None


@contextmanager
def step(url: str, what: str) -> Iterator[None]:
    """Run one step of an exchange with the server at ``url``; a failure of the server or of the
    connection (an HTTP error, a dropped connection, an unreadable or truncated answer) becomes one
    LabelStudioError naming the server, the step and what went wrong, instead of a traceback.

    Steps nest: the innermost names the failure, the outer ones pass it on unchanged.
    """
    try:
        yield
    except Exception as exc:
        reason = _failure(exc)
        if reason is None:
            raise
        raise LabelStudioError(f"Label Studio at {url}: {what} failed: {reason}; {RESUME_HINT}") from None


MAX_FILES_PER_UPLOAD = 100  # Label Studio's limit for one multipart import
# Task ids per sliced export request: the ids travel in the query string, which must stay under the
# 4 KB request line that gunicorn and proxies accept by default and under Django's 1,000-parameter cap.
EXPORT_SLICE = 200
EXPORT_CONCURRENCY = 3  # parallel slices: on two cores, 2-3 beat both 1 and 4 (benchmarks/RESULTS.md)


def _send(client: LabelStudioClient, method: str, path: str, **kwargs):
    resp = client._client_wrapper.httpx_client.request(path, method=method, **kwargs)
    if resp.status_code >= 400:
        text = " ".join(resp.text.split())[:300]
        raise ServerFailure(f"Label Studio answered HTTP {resp.status_code} to {method} /{path}: {text}")
    return resp


def request(client: LabelStudioClient, method: str, path: str, **kwargs) -> object:
    """Call ``path`` with the client's authentication; the JSON answer, or a clear error."""
    resp = _send(client, method, path, **kwargs)
    return resp.json() if resp.content else None


def task_count_and_clock(client: LabelStudioClient, project_id: int) -> tuple[int, datetime]:
    """The project's number of tasks, and the server's own clock now (its HTTP ``Date`` header).

    Task timestamps are the server's, so "changed since" must be measured on its clock, not ours.
    """
    resp = _send(client, "GET", f"api/projects/{project_id}/")
    count = answer_field(resp.json(), "task_number", f"GET /api/projects/{project_id}/", int)
    if "date" not in resp.headers:
        raise ServerFailure(f"GET /api/projects/{project_id}/ answered without a Date header")
    return count, parsedate_to_datetime(resp.headers["date"])


def answer_field(answer: object, key: str, request_line: str, kind: type = object) -> object:
    """``answer[key]`` of a JSON answer, of type ``kind``; ServerFailure when the answer has no such field
    (a garbage answer is the server's failure, never a KeyError traceback)."""
    value = answer.get(key) if isinstance(answer, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        shown = json.dumps(answer, default=str)[:120]
        raise ServerFailure(f"the answer to {request_line} has no {kind.__name__} {key!r}: {shown}")
    return value


def changed_task_ids(client: LabelStudioClient, project_id: int, since: datetime, limit: int) -> list[int] | None:
    """Ids of the project's tasks saved after ``since`` (an annotation saved or revised updates its
    task); None when more than ``limit`` changed, since exporting them all is then no dearer.

    Uses the Data Manager's task filter: counting costs ~50 ms, listing ~1 ms per task.
    """
    value = since.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # the only format it parses
    item = {"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime", "value": value}
    params = {
        "project": project_id,
        "fields": "task_only",
        "include": "id",
        "query": json.dumps({"filters": {"conjunction": "and", "items": [item]}}),
    }
    total = answer_field(request(client, "GET", "api/tasks/", params={**params, "page_size": 1}), "total",
                         "GET /api/tasks/", int)
    if total > limit:
        return None
    if total == 0:
        return []
    listed = answer_field(request(client, "GET", "api/tasks/", params={**params, "page_size": total}), "tasks",
                          "GET /api/tasks/", list)
    return [answer_field(t, "id", "GET /api/tasks/", int) for t in listed]


def export_tasks(client: LabelStudioClient,
                 project_id: int, all_tasks: bool = False, ids: Sequence[int] | None = None) -> list[dict]:
    """The project's tasks with their annotations in one JSON export (far faster than paging tasks).

    ``all_tasks=False`` returns only tasks that have at least one annotation; ``ids`` only those tasks.
    """
    params: dict = {"exportType": "JSON", "download_all_tasks": "true" if all_tasks else "false"}
    if ids:
        params["ids[]"] = list(ids)  # the SDK's client repeats the key once per id
    data = request(
        client,
        "GET",
        f"api/projects/{project_id}/export",
        params=params,
        request_options={"timeout_in_seconds": 900},
    )
    return check_export(data or [])


def check_export(data: object) -> list[dict]:
    """``data`` when it is what an export holds, a list of tasks each with an integer id and a list of
    annotations; else ServerFailure (a garbage answer must not be read as "no reviews")."""
    if not isinstance(data, list):
        raise ServerFailure(f"the export is {type(data).__name__}, not a list of tasks")
    for i, task in enumerate(data):
        ok = isinstance(task, dict) and isinstance(task.get("id"), int) and not isinstance(task["id"], bool)
        if not ok or not isinstance(task.get("annotations", []), list):
            raise ServerFailure(f"entry {i + 1} of the export is not a task with an id and a list of annotations: "
                                f"{json.dumps(task, default=str)[:120]}")
    return data


def export_annotated(
    client, project_id: int, task_ids: Sequence[int], concurrency: int = EXPORT_CONCURRENCY
) -> Iterator[tuple[int, list[dict]]]:
    """The annotated tasks among ``task_ids``, exported in slices by parallel requests, as they arrive:
    (ids asked for, tasks) per slice.

    Label Studio serialises an export inside one Python process (about 2 ms per reviewed task), so
    one request cannot use more than one core; slices spread the work over the server's worker
    processes (``vgmed-build labelstudio start`` runs several). On a single-process server they
    simply queue, at no loss. Every slice either arrives whole or raises.
    """
    slices = [task_ids[i : i + EXPORT_SLICE] for i in range(0, len(task_ids), EXPORT_SLICE)]
    pool = ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="ls-export")
    try:
        futures = {pool.submit(export_tasks, client, project_id, False, part): len(part) for part in slices}
        for future in as_completed(futures):
            yield futures[future], future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def upload_images(client: LabelStudioClient, project_id: int, paths: list[Path]) -> list[str]:
    """Upload image files (at most 100 per request) without creating tasks; their ``/data/upload/`` URLs."""
    urls: list[str] = []
    for start in range(0, len(paths), MAX_FILES_PER_UPLOAD):
        chunk = paths[start : start + MAX_FILES_PER_UPLOAD]
        # Names carry the index, so each stored file maps back to its path whatever order the server keeps.
        files = {f"file{i}": (f"{i:03d}_{p.name}", p.read_bytes(), "image/png") for i, p in enumerate(chunk)}
        answer = request(
            client,
            "POST",
            f"api/projects/{project_id}/import",
            params={"commit_to_project": "false"},
            files=files,
            request_options={"timeout_in_seconds": 600},
        )
        ids = answer_field(answer, "file_upload_ids", f"POST /api/projects/{project_id}/import", list)
        listing = request(client, "GET", f"api/projects/{project_id}/file-uploads", params={"ids": json.dumps(ids)})
        stored = {}
        for f in listing:
            name = f["file"].rsplit("/", 1)[-1].split("-", 1)[-1]  # upload/<project>/<uuid8>-<our name>
            stored[int(name[:3])] = "/data/" + f["file"]
        if len(stored) != len(chunk):
            raise ServerFailure(f"upload to project {project_id}: sent {len(chunk)} images, server lists {len(stored)}")
        urls.extend(stored[i] for i in range(len(chunk)))
    return urls
