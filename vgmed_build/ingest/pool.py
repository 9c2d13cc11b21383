"""Ingest's worker processes: each holds one item at a time, so the parent always knows which item a
worker holds. A worker that dies (SIGKILL from the out-of-memory killer, a crash inside a C library)
costs only that item, reported as :class:`WorkerDied`; a fresh worker takes its place and the run
goes on. (A ``ProcessPoolExecutor`` cannot say which item a dead worker held: it breaks for good.)

Items come from an iterator, read one at a time as a worker frees up: the listing is never held
whole (a source of millions of items costs the memory of the few in flight). Workers are forked
with the ``work`` function; each item is sent to its worker pickled (item loaders are
``functools.partial`` of module functions). Workers ignore Ctrl-C, which the parent handles by
ending them, and exit on their own when the parent is gone (even after a SIGKILL of the parent).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class WorkerDied:
    """The outcome of an item whose worker process died while holding it."""

    exitcode: int | None  # negative: killed by that signal

    def describe(self) -> str:
        if self.exitcode is not None and self.exitcode < 0:
            try:
                how = f"killed by {signal.Signals(-self.exitcode).name}"
            except ValueError:
                how = f"killed by signal {-self.exitcode}"
        else:
            how = f"exit code {self.exitcode}"
        return (
            f"the worker process reading this item died ({how}; SIGKILL is what the out-of-memory killer "
            "sends); the other items went on, rerun ingest to retry this one"
        )


def _die_with_parent(parent: int, poll_s: float = 0.5) -> None:
    """Exit as soon as the ingest process is gone (killed, even by SIGKILL).

    Without it an orphaned worker (~100 MB) blocks forever writing its result into a pipe that
    nobody reads. A thread watches the parent pid, so it fires even while the worker is blocked.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="vgmed-parent-watch", daemon=True).start()


def _serve(pipe: Connection, parent: int, work: Callable[[Any], Any]) -> None:
    """A worker: receive an item, send back ``work(item)``, until told to stop (None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler (inherited by fork)
    _die_with_parent(parent)
    while True:
        item = pipe.recv()
        if item is None:
            return
        pipe.send(work(item))


@dataclass
class _Worker:
    process: multiprocessing.Process
    pipe: Connection
    held: Any = None
    busy: bool = False


def run_parallel(
    items: Iterable[T], work: Callable[[T], Any], workers: int, on_result: Callable[[T, Any], None]
) -> None:
    """Call ``work(item)`` for every item in ``workers`` forked processes and ``on_result(item, result)``
    in this process as each finishes (a :class:`WorkerDied` when its worker died). ``items`` is read
    lazily, one item per free worker (``on_result`` may run before the iterator is exhausted).

    ``work`` must not raise. On any exception here (Ctrl-C included) the workers are ended at once.
    """
    ctx = multiprocessing.get_context("fork")
    todo = iter(items)
    pool: list[_Worker] = []

    def start() -> _Worker:
        parent_end, child_end = ctx.Pipe()
        process = ctx.Process(target=_serve, args=(child_end, os.getpid(), work), daemon=True)
        process.start()
        child_end.close()
        return _Worker(process, parent_end)

    def assign(worker: _Worker) -> None:
        worker.busy = False
        for item in todo:
            worker.held, worker.busy = item, True
            worker.pipe.send(item)
            return
        worker.held = None

    try:
        for _ in range(workers):
            pool.append(start())
            assign(pool[-1])
            if not pool[-1].busy:
                break
        while busy := [w for w in pool if w.busy]:
            ready = set(wait([w.pipe for w in busy] + [w.process.sentinel for w in busy]))
            for i, worker in enumerate(pool):
                if not worker.busy or not ready & {worker.pipe, worker.process.sentinel}:
                    continue
                try:
                    result = worker.pipe.recv() if worker.pipe.poll() else None
                except (EOFError, OSError):
                    result = None
                held = worker.held
                if result is None:  # the worker died holding its item: replace it
                    worker.process.join()
                    worker.pipe.close()
                    result = WorkerDied(worker.process.exitcode)
                    pool[i] = worker = start()
                assign(worker)  # before storing the result: the worker renders while this process writes
                on_result(held, result)
        for worker in pool:
            worker.pipe.send(None)
    finally:
        for worker in pool:
            if worker.process.is_alive():
                worker.process.join(timeout=0 if worker.busy else 2)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.pipe.close()
