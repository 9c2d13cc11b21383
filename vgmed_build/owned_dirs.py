"""Temporary folders vgmed keeps next to an output while it writes it (``datasets``' Arrow cache of a Hub
or lmms-eval export, as large as the shard), and their removal after a kill.

A killed run cannot remove its folder, and a later run may only delete what it can prove vgmed wrote and
nobody uses: each folder holds a marker file, written first and ``flock``-ed by its run for as long as the
folder is in use (the kernel drops the lock when the process ends, even on SIGKILL). The next run removes
a folder of its prefix only when the marker says ``vgmed temporary folder`` and its lock is free; a folder
of that name without our marker, a symbolic link, or one whose run is alive is never touched.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = ".vgmed-owner"
MARK = "vgmed temporary folder"


@contextmanager
def owned_tempdir(prefix: str, parent: Path) -> Iterator[Path]:
    """A new folder ``parent/PREFIX*`` marked and locked as this run's, removed after; first removes the
    folders of ``prefix`` that killed runs left in ``parent``."""
    remove_left_by_killed(prefix, parent)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    fd = None
    try:
        fd = os.open(folder / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # before the mark: a marked folder is always a locked one while in use
        os.write(fd, f"{MARK} pid {os.getpid()} host {socket.gethostname()}\n".encode())
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # still locked: no other run takes it for a killed one's
        if fd is not None:
            os.close(fd)


def remove_left_by_killed(prefix: str, parent: Path) -> list[Path]:
    """Remove the folders ``parent/PREFIX*`` a killed vgmed run left (marked, lock free); return them."""
    removed = []
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(prefix) and e.is_dir(follow_symlinks=False)]
    except OSError:  # no parent yet, or unreadable: nothing of ours to find
        return removed
    for entry in entries:
        folder = Path(entry.path)
        try:
            fd = os.open(folder / MARKER, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # no marker (not ours, or killed before writing it): left alone
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its run is alive
                continue
            head = os.pread(fd, 256, 0).decode("utf-8", "replace")
            if not head.startswith(MARK):
                continue
            log.info("removing %s, left by a killed export (%s)", folder, head.strip())
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        finally:
            with suppress(OSError):
                os.close(fd)
    return removed
