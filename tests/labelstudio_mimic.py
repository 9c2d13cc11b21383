"""A small local HTTP server that answers the few Label Studio API endpoints review push and pull use,
and fails on request the way a real server or network does: a 500, a connection closed mid-answer,
a truncated or garbage export, a project deleted (404).

It keeps projects and tasks in memory. Tests reach it through the real SDK client (real HTTP), so the
failures arrive exactly as they would from Label Studio: an ``ApiError``, an ``httpx`` transport error,
an unreadable body. Starting the real server for each failure would cost a minute per test on a small
machine; the successful exchange is tested against the real one (tests/test_review_labelstudio.py).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

ORG_CREATED = "2026-01-01T00:00:00Z"


def now_z() -> str:
    """The server's clock as Label Studio writes times (and, equally long, compares them as text)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def task_updated(task: dict) -> str:
    """When a task was last saved: imported or refreshed, or an annotation of it saved (the tests also
    put annotations on tasks by hand)."""
    return max([task.get("updated_at", ""), *(a.get("updated_at") or "" for a in task["annotations"]
                                               if isinstance(a, dict))])


@dataclass
class MimicState:
    """What the mimic holds, and the faults it plays: ``faults[name]`` is (kind, how many more times)."""

    projects: dict[int, dict] = field(default_factory=dict)
    tasks: dict[int, dict] = field(default_factory=dict)
    predictions: dict[int, dict] = field(default_factory=dict)  # what push's task refresh replaces
    faults: dict[str, list] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    next_id: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def fault(self, name: str) -> str | None:
        """The fault to play on this request to endpoint ``name`` (counting it down), or None."""
        with self.lock:
            entry = self.faults.get(name)
            if not entry or entry[1] <= 0:
                return None
            entry[1] -= 1
            return entry[0]


class _Handler(BaseHTTPRequestHandler):
    state: MimicState  # set on the subclass made per server

    def log_message(self, *args) -> None:  # quiet
        pass

    # ------------------------------------------------------------ plumbing
    def _body(self) -> object:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else None

    def _send(self, status: int, payload: object = None, raw: bytes | None = None) -> None:
        body = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _cut(self, payload: object) -> None:
        """Announce the whole answer, send half of it, close the connection."""
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(2)

    def _play(self, name: str, payload_fn) -> None:
        """Answer endpoint ``name`` with ``payload_fn()`` unless a fault is set for it."""
        kind = self.state.fault(name)
        if kind == "gone":  # the project was deleted just before this request
            self.state.projects.clear()
            self._send(404, {"detail": "Not found."})
        elif kind == "500":
            self._send(500, raw=b"<h1>Server Error (500)</h1>")
        elif kind == "close":  # the work is done, the answer never arrives
            payload_fn()
            self.close_connection = True
            self.connection.shutdown(2)
        elif kind == "cut":
            self._cut(payload_fn())
        elif kind == "truncated":  # a complete HTTP answer whose JSON is cut short
            body = json.dumps(payload_fn()).encode()
            self._send(200, raw=body[: len(body) // 2])
        elif kind == "garbage":
            self._send(200, {"detail": "not an export", "tasks": "none"})
        else:
            self._send(200 if self.command != "POST" else 201, payload_fn())

    def _route(self) -> None:
        url = urlparse(self.path)
        path, query = url.path.rstrip("/"), parse_qs(url.query)
        self.state.requests.append(f"{self.command} {path}")
        parts = path.split("/")
        s = self.state
        if path == "/health":
            return self._send(200, {"status": "UP"})
        if path == "/api/current-user/whoami":
            return self._send(200, {"id": 1, "email": "admin@mimic.local", "active_organization": 1})
        if path == "/api/organizations":
            return self._send(200, [{"id": 1, "title": "mimic", "created_at": ORG_CREATED}])
        if path == "/api/projects" and self.command == "GET":
            title = (query.get("title") or [""])[0]
            page = int((query.get("page") or ["1"])[0])
            found = [self._project(p) for p in s.projects.values() if title in p["title"]] if page == 1 else []
            return self._send(200, {"count": len(found), "next": None, "previous": None, "results": found})
        if path == "/api/projects" and self.command == "POST":
            body = self._body()

            def create() -> dict:
                pid = s.new_id()
                s.projects[pid] = {**body, "id": pid}
                return self._project(s.projects[pid])

            return self._play("create_project", create)
        if len(parts) >= 4 and parts[2] == "projects" and int(parts[3]) not in s.projects:
            return self._send(404, {"detail": "Not found."})  # deleted, or never made
        if len(parts) == 4 and parts[2] == "projects":
            pid = int(parts[3])
            if self.command == "PATCH":
                s.projects[pid].update(self._body())
                return self._send(200, self._project(s.projects[pid]))
            return self._play("project", lambda: self._project(s.projects[pid]))
        if len(parts) == 5 and parts[2] == "projects" and parts[4] == "import":
            body = self._body()

            def store() -> dict:
                ids = []
                for t in body:
                    tid = s.new_id()
                    s.tasks[tid] = {"id": tid, "project": pid, "data": t["data"], "annotations": [],
                                    "updated_at": now_z()}
                    ids.append(tid)
                return {"task_count": len(ids), "task_ids": ids}

            pid = int(parts[3])
            return self._play("import", store)
        if len(parts) == 5 and parts[2] == "projects" and parts[4] == "export":
            pid, ids = int(parts[3]), {int(i) for i in query.get("ids[]", [])}
            every = (query.get("download_all_tasks") or ["false"])[0] == "true"

            def export() -> list[dict]:
                return [
                    t for t in s.tasks.values()
                    if t["project"] == pid and (not ids or t["id"] in ids) and (every or t["annotations"])
                ]

            return self._play("export", export)
        if path == "/api/storages/localfiles":
            return self._send(200, [] if self.command == "GET" else {"id": 1, **(self._body() or {})})
        if len(parts) == 4 and parts[2] == "tasks" and self.command == "DELETE":
            s.tasks.pop(int(parts[3]), None)
            return self._send(204, raw=b"")
        if path == "/api/tasks" and self.command == "GET":  # the Data Manager's list: ids saved after a time
            return self._play("list", lambda: self._list(query))
        if len(parts) == 5 and parts[2] == "tasks" and parts[4] == "annotations" and self.command == "POST":
            body, task = self._body(), s.tasks[int(parts[3])]
            when = now_z()
            annotation = {"id": s.new_id(), "completed_by": 1, "result": body.get("result", []), "created_at": when,
                          "updated_at": when, "lead_time": body.get("lead_time"), "was_cancelled": False,
                          "task": task["id"], "project": task["project"]}
            task["annotations"].append(annotation)
            return self._send(201, annotation)
        if len(parts) == 4 and parts[2] == "tasks" and int(parts[3]) in s.tasks:  # push refreshing a task
            task = s.tasks[int(parts[3])]
            if self.command == "PATCH":
                task["data"] = self._body()["data"]
                task["updated_at"] = now_z()
            return self._send(200, {**task, "total_annotations": len(task["annotations"]),
                                    "cancelled_annotations": 0})
        if path == "/api/predictions" and self.command == "GET":
            task_id = int(query["task"][0])
            return self._send(200, [p for p in s.predictions.values() if p["task"] == task_id])
        if path == "/api/predictions" and self.command == "POST":
            pred = {**self._body(), "id": s.new_id()}
            s.predictions[pred["id"]] = pred
            return self._send(201, pred)
        if len(parts) == 4 and parts[2] == "predictions" and self.command == "DELETE":
            s.predictions.pop(int(parts[3]), None)
            return self._send(204, raw=b"")
        return self._send(404, {"detail": f"mimic: no {self.command} {path}"})

    def _list(self, query: dict) -> dict:
        """The project's task ids saved after the time of the one filter review pull sends, by id, a page."""
        pid, (item,) = int(query["project"][0]), json.loads(query["query"][0])["filters"]["items"]
        assert (item["filter"], item["operator"]) == ("filter:tasks:updated_at", "greater"), item
        found = sorted(t["id"] for t in self.state.tasks.values()
                       if t["project"] == pid and task_updated(t) > item["value"])
        size, page = int(query["page_size"][0]), int((query.get("page") or ["1"])[0])
        return {"total": len(found), "tasks": [{"id": i} for i in found[(page - 1) * size : page * size]]}

    def _project(self, p: dict) -> dict:
        n = sum(t["project"] == p["id"] for t in self.state.tasks.values())
        return {**p, "task_number": n}

    do_GET = do_POST = do_PATCH = do_DELETE = lambda self: self._route()  # noqa: E731


class Mimic:
    """The running mimic: ``url``, ``state`` (projects, tasks, faults), ``stop()``."""

    def __init__(self) -> None:
        self.state = MimicState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def fail(self, endpoint: str, kind: str, times: int = 99) -> None:
        """Fail the next ``times`` requests to ``endpoint`` ("create_project", "project" (GET), "import",
        "export", "list": the Data Manager's task list) with
        ``kind`` ("500", "close", "cut", "truncated", "garbage", or "gone": every project deleted, then 404)."""
        self.state.faults[endpoint] = [kind, times]

    def heal(self) -> None:
        self.state.faults.clear()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


if __name__ == "__main__":  # a mimic in a process of its own, so its memory is not the measured stage's
    import sys

    server = Mimic()
    print(server.url, flush=True)
    sys.stdin.read()  # serves until the parent closes our stdin
    server.stop()
