"""How a command stops when it is told to (Ctrl-C, SIGTERM) or cannot go on (a full disk): one line
on stderr and an exit code, never a traceback.

Every stage stores its work one item per transaction, so what finished before the stop is kept and
rerunning the same command resumes; the line says so. SIGTERM (what ``kill``, systemd and batch
schedulers send) is turned into the same clean stop as Ctrl-C while a command runs.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
import threading
from collections.abc import Callable

from vgmed_build.catalog.base import sqlite_disk_full

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_DISK_FULL = 2  # the command cannot run (docs/cli.md)
RESUME_HINT = "rerun the same command to resume (what finished is stored)"


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwinds like Ctrl-C (transactions roll back, locks are released)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the disk or quota is full: an ``OSError``, or the catalog's
    SQLite saying so."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if sqlite_disk_full(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def run_guarded(handler: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a command's handler; Ctrl-C, SIGTERM and a full disk end it with one line, not a traceback."""
    command = " ".join(str(getattr(args, k)) for k in ("command", "action") if getattr(args, k, None))
    command = command or "command"
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(
            f"{command}: stopped by {'SIGTERM' if terminated else 'Ctrl-C'}; {RESUME_HINT}",
            file=sys.stderr,
        )
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except Exception as exc:  # a full disk shows as an OSError or as SQLite's own error (sqlite_disk_full)
        if not disk_full(exc):
            raise
        where = f" writing {exc.filename}" if isinstance(exc, OSError) and exc.filename else ""
        print(f"error: {command}: the disk is full{where}; free some space and {RESUME_HINT}", file=sys.stderr)
        return EXIT_DISK_FULL
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
