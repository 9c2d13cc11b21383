"""`vgmed-build labelstudio start|status|stop` on a real server of its own (a second one: ~1-2 min)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vgmed_build.review.server import (
    GUNICORN_VERSION,
    LABEL_STUDIO_VERSION,
    VENV_ENV,
    LabelStudioError,
    _installed,
    health,
    resolve_server,
    venv_dir,
)


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")}
    return subprocess.run(
        [sys.executable, "-m", "vgmed_build.cli", *args], env=env, capture_output=True, text=True, timeout=1200
    )


def test_venv_location_is_configurable(monkeypatch, tmp_path):
    monkeypatch.setenv(VENV_ENV, str(tmp_path / "ls"))
    assert venv_dir() == tmp_path / "ls"
    monkeypatch.delenv(VENV_ENV)
    assert venv_dir().name == "labelstudio-1.23.2"


def _children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (the server's gunicorn workers)."""
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            kids.add(int(stat.parent.name))
    return kids


@pytest.mark.labelstudio
@pytest.mark.slow
def test_start_status_stop_restart(tmp_path):
    build = tmp_path / "build"
    started = cli("labelstudio", "start", "--build", str(build), "--workers", "3")
    assert started.returncode == 0, started.stderr
    state = json.loads((build / "labelstudio" / "server.json").read_text())
    creds = json.loads((build / "labelstudio" / "credentials.json").read_text())
    try:
        assert state["url"].startswith("http://127.0.0.1:") and health(state["url"])
        assert f"Label Studio: {state['url']}" in started.stdout and creds["password"] in started.stdout
        assert creds["api_key"] not in started.stdout + started.stderr
        assert (build / "labelstudio" / "data" / "label_studio.sqlite3").exists()
        workers = _children(state["pid"])
        assert state["workers"] == 3 and len(workers) == 3  # gunicorn master + 3 worker processes
        assert oct((build / "labelstudio").stat().st_mode & 0o777) == "0o700"
        for name in ("credentials.json", "server.json"):
            assert oct((build / "labelstudio" / name).stat().st_mode & 0o777) == "0o600"
        again = cli("labelstudio", "start", "--build", str(build))  # already running: same server
        assert again.returncode == 0 and state["url"] in again.stdout
        assert json.loads((build / "labelstudio" / "server.json").read_text())["pid"] == state["pid"]
        assert cli("labelstudio", "status", "--build", str(build)).returncode == 0
    finally:
        stopped = cli("labelstudio", "stop", "--build", str(build))
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not health(state["url"])
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]  # no worker outlives the server
    status = cli("labelstudio", "status", "--build", str(build))
    assert status.returncode == 3 and "not running" in status.stdout
    # A restart keeps the port, the database and the credentials (warm start).
    restarted = cli("labelstudio", "start", "--build", str(build))
    try:
        assert restarted.returncode == 0, restarted.stderr
        assert state["url"] in restarted.stdout
        assert json.loads((build / "labelstudio" / "credentials.json").read_text()) == creds
    finally:
        assert cli("labelstudio", "stop", "--build", str(build)).returncode == 0


def test_install_counts_as_done_only_once_label_studio_and_gunicorn_are_installed(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "label-studio").write_text("#!/bin/sh\n")
    assert not _installed(tmp_path)  # an interrupted pip run leaves the script without the metadata
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    (site / f"label_studio-{LABEL_STUDIO_VERSION}.dist-info").mkdir(parents=True)
    assert not _installed(tmp_path)  # a venv from before the gunicorn launcher gets gunicorn added
    (site / f"gunicorn-{GUNICORN_VERSION}.dist-info").mkdir()
    assert _installed(tmp_path)


def test_start_refuses_a_bad_worker_count_before_touching_anything(tmp_path):
    build = tmp_path / "build"
    res = cli("labelstudio", "start", "--build", str(build), "--workers", "0")
    assert res.returncode != 0 and "--workers must be at least 1 (got 0)" in res.stderr
    assert not build.exists()  # no state, no credentials, no install, no server


def test_resolve_server_errors_name_the_fix(monkeypatch, tmp_path):
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    with pytest.raises(LabelStudioError, match="LABEL_STUDIO_API_KEY"):
        resolve_server(tmp_path, url="http://127.0.0.1:9")
    with pytest.raises(LabelStudioError, match="labelstudio start --build"):
        resolve_server(tmp_path)
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://example.invalid:8080/")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "k" * 40)
    info = resolve_server(tmp_path)
    assert info.url == "http://example.invalid:8080" and not info.is_local and "k" * 40 not in repr(info)
