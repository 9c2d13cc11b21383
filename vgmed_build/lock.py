"""One writer per stage: an OS file lock (``flock``) that a second writer is told about, never shares.

Two ``generate --drafter llm`` on one build would pay for every request twice; two ``release`` to one
``--out`` would swap directories under each other. Each writing stage holds an exclusive lock on a
small file (``BUILD/locks/STAGE.lock``, or ``.NAME.lock`` next to a release's ``--out``) for its
whole run; the file records the holder's pid for the message and is removed when the run ends. The
kernel drops the lock when the holder exits, even on SIGKILL, so a file left by a killed run never
blocks anyone (the next holder takes it over). Readers (stats, regions, validate, status) take none.
"""

from __future__ import annotations

import argparse
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCKS_DIR = "locks"


class LockBusy(RuntimeError):
    """Another process holds the lock (the message names it, its pid and the way to wait)."""


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


@contextmanager
def hold(path: Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold the exclusive lock ``path`` for the body; ``what`` names the stage in the busy message.

    The file is removed on release (while still locked); a waiter that then holds the lock of a
    removed file notices (its inode is no longer the path's) and locks the new file instead.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise LockBusy(
                f"another {what} is running (pid {holder}); wait for it to finish, or rerun with --wait"
            ) from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def stage_lock(build_dir: Path, stage: str, wait: bool = False):
    """The lock of ``stage`` ('ingest', 'review push', ...) on ``build_dir`` (see :func:`hold`)."""
    return hold(stage_lock_path(build_dir, stage), f"`vgmed-build {stage}` on {build_dir}", wait)
