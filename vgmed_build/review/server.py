"""Run and reach a Label Studio server.

A build may own a local server (``vgmed-build labelstudio start``): Label Studio in its own
virtual environment (its pins fight ours), served by several gunicorn worker processes
(``ls_serve.py``; exports then run in parallel), bound to loopback, SQLite under ``<build>/labelstudio/``,
an admin password and API token generated once and kept in an owner-only ``credentials.json``.
Users with their own server pass its URL and token instead (``--url`` / ``LABEL_STUDIO_URL``,
``LABEL_STUDIO_API_KEY``). Tokens are never logged and never written to the catalog.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from vgmed_build.catalog.base import CatalogError, check_build_dir
from vgmed_build.review import api
from vgmed_build.review.api import LabelStudioError
from vgmed_build.review.client import LabelStudioClient

log = logging.getLogger(__name__)

LABEL_STUDIO_VERSION = "1.23.2"
GUNICORN_VERSION = "27.0.1"
WORKERS_ENV = "VGMED_LABELSTUDIO_WORKERS"  # read by ls_serve.py
LAUNCHER = Path(__file__).with_name("ls_serve.py")
VENV_ENV = "VGMED_LABELSTUDIO_VENV"
DEFAULT_VENV = Path.home() / ".cache" / "vgmed" / f"labelstudio-{LABEL_STUDIO_VERSION}"
STATE_DIR = "labelstudio"
ADMIN_USER = "admin@vgmed.local"
LOOPBACK = "127.0.0.1"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass
class ServerInfo:
    """How to reach one Label Studio server. Secrets are kept out of ``repr`` so logs never show them."""

    url: str
    api_key: str = field(repr=False)
    # Stable name of the server's organisation (filled in by connect): keys reviewer pseudonyms and
    # projects, so a changed port or a different URL to the same server changes nothing.
    identity: str | None = None
    document_root: Path | None = None  # set when the server serves local files from this machine
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    pid: int | None = None

    @property
    def is_local(self) -> bool:
        return urlparse(self.url).hostname in LOCAL_HOSTS


# ---------------------------------------------------------------- installation


def venv_dir() -> Path:
    return Path(os.environ.get(VENV_ENV) or DEFAULT_VENV).expanduser()


def _has(venv: Path, dist: str) -> bool:
    """True once pip finished installing ``dist`` (its dist-info is written after its dependencies)."""
    return any(venv.glob(f"lib/python*/site-packages/{dist}.dist-info"))


def _installed(venv: Path) -> bool:
    return (
        (venv / "bin" / "python").exists()
        and _has(venv, f"label_studio-{LABEL_STUDIO_VERSION}")
        and _has(venv, f"gunicorn-{GUNICORN_VERSION}")
    )


def ensure_installed(venv: Path | None = None) -> Path:
    """Install label-studio and gunicorn into their own venv on first use (~2 min, ~1 GB); its python."""
    venv = venv or venv_dir()
    python = venv / "bin" / "python"
    if _installed(venv):
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel install (another test session) waits here
        if _installed(venv):
            return python
        log.info("installing label-studio %s into %s (first use; takes a few minutes)", LABEL_STUDIO_VERSION, venv)
        pins = [f"label-studio=={LABEL_STUDIO_VERSION}", f"gunicorn=={GUNICORN_VERSION}"]
        try:
            if not python.exists():
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise LabelStudioError(
                f"could not install {' '.join(pins)} into {venv}: {exc}. Install them yourself "
                f"(python -m venv {venv} && {venv}/bin/pip install {' '.join(pins)}) or point {VENV_ENV} "
                "at an existing one."
            ) from exc
    return python


# ---------------------------------------------------------------- managed server state


def state_dir(build_dir: str | Path) -> Path:
    return Path(build_dir).resolve() / STATE_DIR


def _write_private(path: Path, payload: dict) -> None:
    """Write JSON readable by the owner only (created 0600, never briefly world-readable), in a folder
    only the owner may enter (it also holds the server's database of users and tokens)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def credentials(build_dir: str | Path) -> dict:
    """The build's admin login and token, generated on first use."""
    path = state_dir(build_dir) / "credentials.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    creds = {
        "username": ADMIN_USER,
        "password": secrets.token_urlsafe(18),
        "api_key": secrets.token_hex(20),
    }
    _write_private(path, creds)
    return creds


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def health(url: str, timeout: float = 3.0) -> bool:
    """True when ``url`` answers Label Studio's ``/health`` with status UP."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(url.rstrip("/") + "/health", timeout=timeout) as resp:
            return resp.status == 200 and json.loads(resp.read() or b"{}").get("status") == "UP"
    except (OSError, ValueError, urllib.error.URLError):
        return False


def _alive(pid: int) -> bool:
    """True when ``pid`` runs and is a Label Studio server (guards against a recycled pid)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        return LAUNCHER.name.encode() in cmdline.read_bytes()
    return True


def _managed_info(build_dir: str | Path, state: dict) -> ServerInfo:
    creds = credentials(build_dir)
    return ServerInfo(
        url=state["url"],
        api_key=creds["api_key"],
        document_root=Path(state["document_root"]),
        username=creds["username"],
        password=creds["password"],
        pid=state["pid"],
    )


def server_status(build_dir: str | Path) -> ServerInfo | None:
    """The build's managed server when it runs and answers, else None."""
    state = _read_json(state_dir(build_dir) / "server.json")
    if not state or not _alive(int(state["pid"])) or not health(state["url"]):
        return None
    return _managed_info(build_dir, state)


def _free_port(preferred: int | None) -> int:
    """A free loopback port, the preferred one when it is free (keeps the URL stable across restarts)."""
    for candidate in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As the server itself does: a port left in TIME_WAIT by our previous run is free to reuse.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((LOOPBACK, candidate))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise LabelStudioError("no free loopback port")


def default_workers() -> int:
    """Two server processes per core up to 4: enough for parallel export slices and the reviewers' UI."""
    return max(2, min(4, 2 * (os.cpu_count() or 1)))


def start_server(
    build_dir: str | Path,
    document_root: str | Path | None = None,
    port: int | None = None,
    timeout: float = 600.0,
    workers: int | None = None,
) -> ServerInfo:
    """Start (or find running) the build's Label Studio; wait until ``/health`` answers on its port.

    ``document_root`` is the folder Label Studio may serve local files from (default: the build
    directory); every image pushed as a local file must lie under it. ``workers``: server processes
    (default: ``default_workers()``); each holds ~350 MB.
    """
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise LabelStudioError(f"--workers must be at least 1 (got {workers})")
    try:
        check_build_dir(Path(build_dir))
    except CatalogError as exc:
        raise LabelStudioError(str(exc)) from None
    running = server_status(build_dir)
    if running:
        return running
    python = ensure_installed()
    sdir = state_dir(build_dir)
    creds = credentials(build_dir)
    previous = _read_json(sdir / "server.json") or {}
    port = _free_port(port or previous.get("port"))
    url = f"http://{LOOPBACK}:{port}"
    root = Path(document_root or Path(build_dir)).resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(sdir / "data"),
        DJANGO_DB="sqlite",
        LABEL_STUDIO_USERNAME=creds["username"],
        LABEL_STUDIO_PASSWORD=creds["password"],
        LABEL_STUDIO_USER_TOKEN=creds["api_key"],
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(root),
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
        LATEST_VERSION_CHECK="false",
        COLLECT_ANALYTICS="false",
        **{WORKERS_ENV: str(workers)},
    )
    (sdir / "data").mkdir(parents=True, exist_ok=True)
    logfile = open(sdir / "server.log", "ab")
    cmd = [str(python), str(LAUNCHER), "start", "--no-browser", "--internal-host", LOOPBACK, "--port", str(port)]
    with logfile:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    state = {
        "pid": proc.pid,
        "port": port,
        "url": url,
        "document_root": str(root),
        "workers": workers,
        "started_at": time.time(),
    }
    _write_private(sdir / "server.json", state)
    log.info("starting Label Studio on %s (log: %s)", url, sdir / "server.log")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabelStudioError(
                f"Label Studio exited with code {proc.returncode} while starting; "
                f"see {sdir / 'server.log'}:\n" + _tail(sdir / "server.log")
            )
        if health(url, timeout=2):
            return _managed_info(build_dir, state)
        time.sleep(0.5)
    _terminate(proc.pid)
    raise LabelStudioError(
        f"Label Studio did not answer on {url}/health within {timeout:.0f} s; see {sdir / 'server.log'}"
    )


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _terminate(pid: int, grace: float = 30.0) -> None:
    """SIGTERM the server's process group, SIGKILL it if it has not gone after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it when we are its parent
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def stop_server(build_dir: str | Path) -> bool:
    """Stop the build's managed server; False when none was running."""
    path = state_dir(build_dir) / "server.json"
    state = _read_json(path)
    if not state or not _alive(int(state["pid"])):
        return False
    _terminate(int(state["pid"]))
    return True


def resolve_server(
    build_dir: str | Path | None,
    url: str | None = None,
    api_key: str | None = None,
    document_root: str | Path | None = None,
) -> ServerInfo:
    """The server a command talks to: an explicit URL (``--url`` or ``LABEL_STUDIO_URL``) with its token
    from ``LABEL_STUDIO_API_KEY``, else the build's running managed server."""
    url = url or os.environ.get("LABEL_STUDIO_URL")
    if url:
        key = api_key or os.environ.get("LABEL_STUDIO_API_KEY")
        if not key:
            raise LabelStudioError(
                f"no API token for {url}: set LABEL_STUDIO_API_KEY (never pass it on the command line)"
            )
        root = Path(document_root).resolve() if document_root else None
        return ServerInfo(url=url.rstrip("/"), api_key=key, document_root=root)
    if build_dir is None:
        raise LabelStudioError("no Label Studio server: pass --url (or set LABEL_STUDIO_URL) or --build")
    info = server_status(build_dir)
    if info is None:
        raise LabelStudioError(
            f"no Label Studio server is running for build {build_dir}: run `vgmed-build labelstudio start "
            f"--build {build_dir}`, or pass --url / set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"
        )
    return info


def connect(server: ServerInfo) -> LabelStudioClient:
    """An SDK client for ``server``, after checking that it answers and accepts the token."""
    from label_studio_sdk import LabelStudio
    from label_studio_sdk.core.api_error import ApiError

    from vgmed_build.review.transport import AcyclicClient

    if not health(server.url):
        raise LabelStudioError(f"Label Studio at {server.url} does not answer (GET /health failed): is it running?")
    client = LabelStudio(base_url=server.url, api_key=server.api_key, timeout=300,
                         httpx_client=AcyclicClient(timeout=300, follow_redirects=True))
    try:
        me = client.users.whoami()
    except ApiError as exc:
        if exc.status_code in (401, 403):
            raise LabelStudioError(
                f"Label Studio at {server.url} refused the API token (HTTP {exc.status_code}): check "
                "LABEL_STUDIO_API_KEY (a personal access token or, with legacy tokens enabled, "
                "the user token)"
            ) from None
        raise LabelStudioError(f"Label Studio at {server.url} answered HTTP {exc.status_code} to whoami") from None
    if server.identity is None:
        orgs = api.request(client, "GET", "api/organizations/")
        org = next((o for o in orgs if o["id"] == me.active_organization), orgs[0])
        server.identity = f"label-studio-org:{org['id']}:{org['created_at']}"
    return client


def invite_url(server: ServerInfo) -> str:
    """A sign-up link that adds a reviewer to the server's organisation (sign-up is otherwise closed)."""
    with api.step(server.url, "asking for an invite link"):
        answer = api.request(connect(server), "GET", "api/invite")
        return server.url + api.answer_field(answer, "invite_url", "GET /api/invite", str)
