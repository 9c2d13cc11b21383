"""One writer per stage: an OS file lock (``flock``) that a second writer is told about, never shares.

Two ``generate --drafter llm`` on one build would pay for every request twice; two ``release`` to one
``--out`` would swap directories under each other. Each writing stage holds an exclusive lock on a
small file (``BUILD/locks/STAGE.lock``, or ``.NAME.lock`` next to a release's ``--out``) for its
whole run; the file records the holder's pid for the message and is removed when the run ends. The
kernel drops the lock when the holder exits, even on SIGKILL, so a file left by a killed run never
blocks anyone (the next holder takes it over). Readers (stats, regions, validate, status) take none.

The file is marked as ours (its first line starts with :data:`LOCK_MARK`): a file of that name that
vgmed did not write (a user's ``.rel.lock``, a symbolic link) is refused, never truncated or removed.
A holder also notes in it the names it creates next to its target (:meth:`Held.claim`), so the next
holder after a kill can clean up exactly those and nothing that merely looks like them.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import re
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from vgmed_build.errors import VgmedError

LOCKS_DIR = "locks"
LOCK_MARK = "vgmed lock"
CLAIM = "claim "
_LEGACY_CONTENT = re.compile(r"\d+\n?")  # what locks held before the mark held: the pid alone
_EMPTY_RETRIES = 40  # x 25 ms: how long an empty file may be a lock another run is just creating


class LockBusy(VgmedError, RuntimeError):
    """Another process holds the lock (the message names it, its pid and the way to wait), or a file
    vgmed did not write stands where the lock belongs (the message names it)."""


@dataclass
class Held:
    """A held lock: the names a killed earlier holder claimed, and a way to claim this run's own."""

    fd: int
    left_by_killed: list[str] = field(default_factory=list)

    def claim(self, name: str) -> None:
        """Note ``name`` (a file or folder this run created next to its target) in the lock file."""
        os.lseek(self.fd, 0, os.SEEK_END)
        os.write(self.fd, f"{CLAIM}{name}\n".encode("utf-8", "surrogateescape"))


def add_wait_arg(p: argparse.ArgumentParser) -> None:
    """The ``--wait`` option of every writing stage."""
    p.add_argument(
        "--wait",
        action="store_true",
        help="if another run of this stage holds the build (or --out), wait for it to finish instead of "
        "stopping with a message",
    )


def stage_lock_path(build_dir: Path, stage: str) -> Path:
    return Path(build_dir) / LOCKS_DIR / f"{stage.replace(' ', '-')}.lock"


def out_lock_path(out_dir: Path) -> Path:
    """The lock of a release target: next to it, so that two builds releasing to one --out collide."""
    out_dir = Path(out_dir).resolve()
    return out_dir.parent / f".{out_dir.name}.lock"


def _not_ours(path: Path) -> LockBusy:
    return LockBusy(
        f"{path} exists but was not written by vgmed (it is not one of its lock files); nothing was "
        "changed; move it away and rerun"
    )


def _open(path: Path) -> tuple[int, bool]:
    """The lock file's descriptor and whether this call created it (then it already carries the mark)."""
    flags = os.O_RDWR | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        pass
    else:
        try:
            os.write(fd, f"{LOCK_MARK}\n".encode())
        except OSError as exc:  # a full disk: the file we just created must not stay behind unmarked
            os.close(fd)
            path.unlink(missing_ok=True)
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        return fd, True
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return _open(path)  # its holder just removed it
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR):  # a symbolic link or a folder: never ours
            raise _not_ours(path) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _not_ours(path)
    return fd, False


def _read(fd: int) -> bytes:
    return os.pread(fd, 1 << 16, 0)


def _ours(content: bytes) -> bool:
    text = content.decode("utf-8", "surrogateescape")
    return text.startswith(LOCK_MARK) or _LEGACY_CONTENT.fullmatch(text) is not None


def _claims(content: bytes) -> list[str]:
    lines = content.decode("utf-8", "surrogateescape").splitlines()
    return [line[len(CLAIM) :] for line in lines[1:] if line.startswith(CLAIM)]


def _holder(content: bytes) -> str:
    first = content.decode("ascii", "replace").splitlines()[:1]
    pid = first[0].removeprefix(LOCK_MARK).strip().removeprefix("pid").strip() if first else ""
    return pid or "unknown"


@contextmanager
def hold(path: Path, what: str, wait: bool = False) -> Iterator[Held]:
    """Hold the exclusive lock ``path`` for the body; ``what`` names the stage in the busy message.

    The file is removed on release (while still locked, and only while it is still the file this run
    locked); a waiter that then holds the lock of a removed file notices (its inode is no longer the
    path's) and locks the new file instead. A file at ``path`` that is not a lock of ours is refused.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    empty_seen = 0
    while True:
        fd, created = _open(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            content = _read(fd)
            os.close(fd)
            if content and not _ours(content):
                raise _not_ours(path) from None
            raise LockBusy(
                f"another {what} is running (pid {_holder(content)}); wait for it to finish, or rerun with --wait"
            ) from None
        content = _read(fd)
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same and not created and not _ours(content):
            os.close(fd)
            if content or empty_seen >= _EMPTY_RETRIES:
                raise _not_ours(path)
            empty_seen += 1  # another run may have created it and not yet written its mark
            time.sleep(0.025)
            continue
        if same:
            break
        os.close(fd)
    held = Held(fd, [] if created else _claims(content))
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{LOCK_MARK} pid {os.getpid()}\n".encode(), 0)
        yield held
    finally:
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                path.unlink()
        except FileNotFoundError:
            pass
        os.close(fd)


def stage_lock(build_dir: Path, stage: str, wait: bool = False):
    """The lock of ``stage`` ('ingest', 'review push', ...) on ``build_dir`` (see :func:`hold`); a
    ``build_dir`` that is a file is a CatalogError naming it, before anything is created."""
    from vgmed_build.catalog.base import check_build_dir

    check_build_dir(Path(build_dir))
    return hold(stage_lock_path(build_dir, stage), f"`vgmed-build {stage}` on {build_dir}", wait)
