"""The few Label Studio endpoints the SDK does not wrap the way we need (raw calls through its client)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
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
    import ijson
    from label_studio_sdk.core.api_error import ApiError

    if isinstance(exc, ServerFailure):
        return str(exc)
    if isinstance(exc, ApiError):
        body = " ".join((exc.body if isinstance(exc.body, str) else json.dumps(exc.body, default=str)).split())
        if exc.status_code is not None and exc.status_code < 300:  # the SDK's wrapper of an unreadable answer
            return f"the answer is not valid JSON (cut short?): {body[:200]!r}"
        return f"HTTP {exc.status_code}: {body[:300]}"
    if isinstance(exc, json.JSONDecodeError | ijson.JSONError):
        return f"the answer is not valid JSON (cut short?): {' '.join(str(exc).split())[:200]}"
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
LIST_PAGE = 1000  # task ids per page of the Data Manager's task list
EXPORT_BATCH = 200  # tasks of a whole export handed on at a time (parsed as a stream, never held whole)


def _send(client: LabelStudioClient, method: str, path: str, **kwargs):
    resp = client._client_wrapper.httpx_client.request(path, method=method, **kwargs)
    _check_status(resp, method, path)
    return resp


def _check_status(resp, method: str, path: str) -> None:
    if resp.status_code >= 400:
        text = " ".join(resp.text.split())[:300]
        raise ServerFailure(f"Label Studio answered HTTP {resp.status_code} to {method} /{path}: {text}")


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


def _changed_query(project_id: int, since: datetime) -> dict:
    """The Data Manager's task list of ``project_id``, ids only, of the tasks saved after ``since``, by id."""
    value = since.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # the only format it parses
    item = {"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime", "value": value}
    return {
        "project": project_id,
        "fields": "task_only",
        "include": "id",
        "query": json.dumps({"filters": {"conjunction": "and", "items": [item]}}),
    }


def count_changed_tasks(client: LabelStudioClient, project_id: int, since: datetime) -> int:
    """How many of the project's tasks were saved after ``since`` (an annotation saved or revised updates
    its task); the Data Manager's task filter counts them in ~50 ms."""
    params = {**_changed_query(project_id, since), "page_size": 1}
    return answer_field(request(client, "GET", "api/tasks/", params=params), "total", "GET /api/tasks/", int)


def changed_task_pages(client: LabelStudioClient, project_id: int, since: datetime, total: int) -> Iterator[list[int]]:
    """Ids of the ``total`` tasks saved after ``since``, ``LIST_PAGE`` at a time (~1 ms per task).

    The list is in id order: a task saved while it is read can only join it (its time only grows), which
    repeats an id of the next page, never skips one; and it is after the pull's mark anyway.
    """
    params = _changed_query(project_id, since)
    for page in range(1, -(-total // LIST_PAGE) + 1):
        listed = answer_field(request(client, "GET", "api/tasks/", params={**params, "page": page,
                                                                           "page_size": LIST_PAGE}),
                              "tasks", "GET /api/tasks/", list)
        yield [answer_field(t, "id", "GET /api/tasks/", int) for t in listed]


def _export_params(all_tasks: bool, ids: Sequence[int] | None) -> dict:
    params: dict = {"exportType": "JSON", "download_all_tasks": "true" if all_tasks else "false"}
    if ids:
        params["ids[]"] = list(ids)  # the SDK's client repeats the key once per id
    return params


def export_tasks(client: LabelStudioClient,
                 project_id: int, all_tasks: bool = False, ids: Sequence[int] | None = None) -> list[dict]:
    """The project's tasks with their annotations in one JSON export (far faster than paging tasks).

    ``all_tasks=False`` returns only tasks that have at least one annotation; ``ids`` only those tasks.
    """
    data = request(
        client,
        "GET",
        f"api/projects/{project_id}/export",
        params=_export_params(all_tasks, ids),
        request_options={"timeout_in_seconds": 900},
    )
    return check_export(data or [])


def check_export(data: object) -> list[dict]:
    """``data`` when it is what an export holds, a list of tasks each with an integer id and a list of
    annotations; else ServerFailure (a garbage answer must not be read as "no reviews")."""
    if not isinstance(data, list):
        raise ServerFailure(f"the export is {type(data).__name__}, not a list of tasks")
    for i, task in enumerate(data):
        check_task(i, task)
    return data


def check_task(i: int, task: object) -> dict:
    """Entry ``i`` (from 0) of an export when it is a task with an integer id and a list of annotations."""
    ok = isinstance(task, dict) and isinstance(task.get("id"), int) and not isinstance(task["id"], bool)
    if not ok or not isinstance(task.get("annotations", []), list):
        raise ServerFailure(f"entry {i + 1} of the export is not a task with an id and a list of annotations: "
                            f"{json.dumps(task, default=str)[:120]}")
    return task


class _Body:
    """An HTTP answer's body as the file ijson reads, block by block as it arrives."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self.blocks, self.head = blocks, b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self.head) < size:
            block = next(self.blocks, None)
            if block is None:
                break
            self.head += block
        cut = len(self.head) if size < 0 else size
        out, self.head = self.head[:cut], self.head[cut:]
        return out


def export_stream(client: LabelStudioClient, project_id: int, all_tasks: bool = False) -> Iterator[list[dict]]:
    """:func:`export_tasks` of the whole project, read as a stream: its tasks ``EXPORT_BATCH`` at a time, each
    checked as :func:`check_export` checks them, never the whole export in memory (Label Studio builds
    it whole on its side). An answer that is not a list is read whole and refused as ``check_export`` does."""
    import ijson

    path = f"api/projects/{project_id}/export"
    with client._client_wrapper.httpx_client.stream(path, method="GET", params=_export_params(all_tasks, None),
                                                   request_options={"timeout_in_seconds": 900}) as resp:
        if resp.status_code >= 400:
            resp.read()
            _check_status(resp, "GET", path)
        body = _Body(resp.iter_bytes())
        first = body.read(64).lstrip()
        if not first.startswith(b"["):  # empty (no tasks), or not a list: read whole, refused as before
            rest = first + body.read()
            check_export((json.loads(rest) if rest.strip() else None) or [])
            return
        tasks: list[dict] = []
        body.head = first + body.head
        for i, task in enumerate(ijson.items(body, "item", use_float=True)):
            tasks.append(check_task(i, task))
            if len(tasks) == EXPORT_BATCH:
                yield tasks
                tasks = []
        if tasks:
            yield tasks


def export_annotated(
    client, project_id: int, pages: Iterable[Sequence[int]], concurrency: int = EXPORT_CONCURRENCY
) -> Iterator[tuple[int, list[dict]]]:
    """The annotated tasks among the ids of ``pages``, exported in slices of ``EXPORT_SLICE`` ids by
    parallel requests, as they arrive: (ids asked for, tasks) per slice.

    Label Studio serialises an export inside one Python process (about 2 ms per reviewed task), so
    one request cannot use more than one core; slices spread the work over the server's worker
    processes (``vgmed-build labelstudio start`` runs several). On a single-process server they
    simply queue, at no loss. Every slice either arrives whole or raises. At most ``concurrency``
    slices are asked for or held at once, and ``pages`` is read here, in the caller's thread, as
    slices are needed (a catalog cursor may feed it).
    """
    slices = (page[i : i + EXPORT_SLICE] for page in pages for i in range(0, len(page), EXPORT_SLICE))
    width = max(1, concurrency)
    pool = ThreadPoolExecutor(width, thread_name_prefix="ls-export")
    try:
        running: dict = {}
        for part in itertools.chain(slices, [None] * width):
            if part is not None:
                running[pool.submit(export_tasks, client, project_id, False, part)] = len(part)
            if len(running) < width and part is not None:
                continue
            if not running:
                return
            done = next(as_completed(running))
            yield running.pop(done), done.result()
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
