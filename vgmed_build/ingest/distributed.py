"""Rendering on a Dask distributed cluster (`ingest --dask-scheduler ADDRESS`).

Dask rather than a home-made engine or Ray: it is pure Python on the PyData stack that imaging
pipelines already use, and dask-jobqueue / dask-kubernetes start its workers as SLURM, PBS, SGE,
LSF or Kubernetes jobs, which is what hospital and university clusters run. The cluster only
renders: each task is :func:`~vgmed_build.ingest.run.run_job` on a batch of items (read the source
files, write the PNGs atomically to the shared build folder, return each item's records); this
process stays the catalog's single writer and stores each item of a batch in its own transaction as
the batch comes back, so every guarantee of a local run holds (one item per transaction, resume,
no duplicates, one bad item an error of its own). Batches, not one task per item: the scheduler
spends ~4.7 ms of CPU per task, which at one item a task caps a whole cluster at ~210 items/s. Items
are submitted as the listing produces them, at most a bounded number of tasks in flight, so neither
this process nor the scheduler holds the whole listing.

A worker that dies mid-batch is Dask's to handle: the scheduler gives the task to another worker
(the PNGs are written atomically under stable names, so a rerun writes the same bytes); a task that
kills every worker it reaches (``distributed.scheduler.allowed-failures``, default 3) is split and
its items sent again one per task, so the item at fault becomes an error of that item alone
(:class:`WorkerLost`) and the run goes on.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Any, TypeVar

from vgmed_build.errors import VgmedError

T = TypeVar("T")

INSTALL_HINT = "pip install 'dask[distributed]'"
CONNECT_TIMEOUT_S = 10
PER_THREAD = 2  # tasks in flight per worker thread: one running, one queued, so no thread waits on this process
MIN_IN_FLIGHT = 16  # while the cluster has no workers yet (SLURM jobs pending), still queue this many
REFRESH_S = 5.0  # how often the cluster's size (which adaptive clusters change) is asked again
TARGET_S = 1.0  # worker seconds of one task when its size is chosen: the scheduler's cost per task is ~5 ms
MAX_BATCH = 64  # items per task at most (fast items: a rerun's unchanged ones), so few are held in flight


class DaskError(VgmedError, RuntimeError):
    """The cluster cannot be used (dask not installed, scheduler unreachable): nothing was rendered there."""


@dataclass(frozen=True)
class WorkerLost:
    """The outcome of an item whose task did not come back from the cluster."""

    reason: str

    def describe(self) -> str:
        return (
            f"the Dask cluster could not render this item ({self.reason}); the other items went on, "
            "rerun ingest to retry this one"
        )


def connect(address: str) -> Any:
    """A Dask client of the scheduler at ``address`` (``tcp://host:8786``), or :class:`DaskError`."""
    try:
        from dask.distributed import Client
    except ImportError as exc:
        raise DaskError(f"--dask-scheduler needs dask.distributed ({INSTALL_HINT})") from exc
    try:
        return Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise DaskError(f"cannot reach the Dask scheduler at {address} ({type(exc).__name__}: {exc})") from exc


@dataclass
class Batching:
    """How many items go in one task: ``fixed`` items (``--dask-batch N``), or, when it is 0, as many
    as take about ``TARGET_S`` by the workers' own timing of the tasks so far (1 until one is back)."""

    fixed: int = 0
    seconds: float = 0.0  # worker seconds of the items timed so far
    items: int = 0

    def size(self) -> int:
        if self.fixed:
            return self.fixed
        if not self.items or not self.seconds:
            return 1
        return max(1, min(MAX_BATCH, int(TARGET_S * self.items / self.seconds)))

    def timed(self, items: int, seconds: float) -> None:
        self.items += items
        self.seconds += seconds


def run_batch(work: Callable[[T], Any], items: list[T]) -> tuple[list[Any], float]:
    """On a worker: ``work`` on each item, in order, and the seconds they took. An item whose ``work``
    raises gets a :class:`WorkerLost` of its own; the batch goes on."""
    started = time.perf_counter()
    results: list[Any] = []
    for item in items:
        try:
            results.append(work(item))
        except Exception as exc:
            results.append(WorkerLost(f"{type(exc).__name__}: {exc}"))
    return results, time.perf_counter() - started


def run_on_dask(
    items: Iterable[T], work: Callable[[T], Any], client: Any, on_result: Callable[[T, Any], None], batch: int = 0
) -> None:
    """Call ``work(item)`` on the cluster for every item and ``on_result(item, result)`` here for each,
    in order, as its task comes back (a :class:`WorkerLost` when it failed on the cluster).

    Items go ``batch`` to a task (0: as many as take ~``TARGET_S``, see :class:`Batching`): one task
    per item would cost the scheduler ~4.7 ms each, capping it at ~210 items/s for the whole cluster.
    A task that fails on the cluster (an item killed every worker it reached; Dask also fails the tasks
    that were queued on those workers) is sent again item by item, one such task in flight at a time:
    an item whose task fails on its own is an error (:class:`WorkerLost`), its batch mates are rendered.
    ``items`` is read lazily: at most ``PER_THREAD`` tasks per worker thread (at least
    ``MIN_IN_FLIGHT``) are in flight.
    """
    from dask.distributed import as_completed

    todo = iter(items)
    retry: deque[T] = deque()  # items of a failed task, sent again alone, one at a time
    retrying = ""  # the key of the task of such an item in flight
    held: dict[str, tuple[Any, list[T]]] = {}  # future key -> (future, its items)
    done = as_completed(loop=client.loop)
    sizing = Batching(batch)
    limit, asked = 0, 0.0

    def submit(chunk: list[T]) -> str:
        future = client.submit(run_batch, work, chunk, pure=False)
        held[future.key] = (future, chunk)
        done.add(future)
        return future.key

    def fill() -> None:
        nonlocal limit, asked, retrying
        if time.monotonic() - asked > REFRESH_S:
            limit = max(MIN_IN_FLIGHT, PER_THREAD * sum(client.nthreads().values()))
            asked = time.monotonic()
        if retry and retrying not in held:  # alone on its worker: a death is its item's, not a batch mate's
            retrying = submit([retry.popleft()])
        while len(held) < limit:
            chunk = list(islice(todo, sizing.size()))
            if not chunk:
                return
            submit(chunk)

    try:
        fill()
        for future in done:
            _, chunk = held.pop(future.key)
            try:
                results, seconds = future.result()
                sizing.timed(len(chunk), seconds)
            except Exception as exc:  # KilledWorker, or a worker that cannot import vgmed
                if future.key != retrying:  # sent again, item by item
                    retry += chunk
                    future.release()
                    fill()
                    continue
                results = [WorkerLost(f"{type(exc).__name__}: {exc}")]
            future.release()
            fill()  # before storing: the cluster renders while this process writes
            for item, result in zip(chunk, results, strict=True):
                on_result(item, result)
    finally:
        if held:  # interrupted: nothing more is rendered for this run
            client.cancel([future for future, _ in held.values()])
