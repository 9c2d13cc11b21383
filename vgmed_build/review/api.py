"""The few Label Studio endpoints the SDK does not wrap the way we need (raw calls through its client)."""

from __future__ import annotations

import json
from pathlib import Path

from vgmed_build.review.server import LabelStudioError

MAX_FILES_PER_UPLOAD = 100  # Label Studio's limit for one multipart import


def request(client, method: str, path: str, **kwargs) -> object:
    """Call ``path`` with the client's authentication; the JSON answer, or a clear error."""
    resp = client._client_wrapper.httpx_client.request(path, method=method, **kwargs)
    if resp.status_code >= 400:
        raise LabelStudioError(f"Label Studio answered HTTP {resp.status_code} to {method} /{path}: {resp.text[:300]}")
    return resp.json() if resp.content else None


def export_tasks(client, project_id: int, all_tasks: bool = False) -> list[dict]:
    """The project's tasks with their annotations in one JSON export (far faster than paging tasks).

    ``all_tasks=False`` returns only tasks that have at least one annotation.
    """
    data = request(
        client,
        "GET",
        f"api/projects/{project_id}/export",
        params={"exportType": "JSON", "download_all_tasks": "true" if all_tasks else "false"},
        request_options={"timeout_in_seconds": 600},
    )
    return data or []


def upload_images(client, project_id: int, paths: list[Path]) -> list[str]:
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
        ids = answer["file_upload_ids"]
        listing = request(client, "GET", f"api/projects/{project_id}/file-uploads", params={"ids": json.dumps(ids)})
        stored = {}
        for f in listing:
            name = f["file"].rsplit("/", 1)[-1].split("-", 1)[-1]  # upload/<project>/<uuid8>-<our name>
            stored[int(name[:3])] = "/data/" + f["file"]
        if len(stored) != len(chunk):
            raise LabelStudioError(
                f"upload to project {project_id}: sent {len(chunk)} images, server lists {len(stored)}"
            )
        urls.extend(stored[i] for i in range(len(chunk)))
    return urls
