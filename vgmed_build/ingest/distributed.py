"""Rendering on a Dask distributed cluster (`ingest --dask-scheduler ADDRESS`).

Dask rather than a home-made engine or Ray: it is pure Python on the PyData stack that imaging
pipelines already use, and dask-jobqueue / dask-kubernetes start its workers as SLURM, PBS, SGE,
LSF or Kubernetes jobs, which is what hospital and university clusters run. The cluster only
renders: each task is :func:`~vgmed_build.ingest.run.run_job` on one item (read the source files,
write the PNGs atomically to the shared build folder, return the records); this process stays the
catalog's single writer, so every guarantee of a local run holds (one item per transaction, resume,
no duplicates). Items are submitted as the listing produces them, at most a bounded number in
flight, so neither this process nor the scheduler holds the whole listing.

A worker that dies mid-item is Dask's to handle: the scheduler gives the task to another worker
(the PNGs are written atomically under stable names, so a rerun writes the same bytes); an item
that kills every worker it reaches (``distributed.scheduler.allowed-failures``, default 3) becomes
an error of that item (:class:`WorkerLost`) and the run goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from vgmed_build.errors import VgmedError

T = TypeVar("T")

INSTALL_HINT = "pip install 'dask[distributed]'"
CONNECT_TIMEOUT_S = 10
PER_THREAD = 2  # tasks in flight per worker thread: one running, one queued, so no thread waits on this process
MIN_IN_FLIGHT = 16  # while the cluster has no workers yet (SLURM jobs pending), still queue this many
REFRESH_S = 5.0  # how often the cluster's size (which adaptive clusters change) is asked again


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


def run_on_dask(
    items: Iterable[T], work: Callable[[T], Any], client: Any, on_result: Callable[[T, Any], None]
) -> None:
    """Call ``work(item)`` on the cluster for every item and ``on_result(item, result)`` here as each
    finishes (a :class:`WorkerLost` when its task failed on the cluster). ``items`` is read lazily:
    at most ``PER_THREAD`` tasks per worker thread (at least ``MIN_IN_FLIGHT``) are in flight."""
    from dask.distributed import as_completed

    todo = iter(items)
    held: dict[str, tuple[Any, T]] = {}  # future key -> (future, item)
    done = as_completed(loop=client.loop)
    limit, asked = 0, 0.0

    def fill() -> None:
        nonlocal limit, asked
        if time.monotonic() - asked > REFRESH_S:
            limit = max(MIN_IN_FLIGHT, PER_THREAD * sum(client.nthreads().values()))
            asked = time.monotonic()
        while len(held) < limit:
            item = next(todo, None)
            if item is None:
                return
            future = client.submit(work, item, pure=False)
            held[future.key] = (future, item)
            done.add(future)

    try:
        fill()
        for future in done:
            _, item = held.pop(future.key)
            try:
                result = future.result()
            except Exception as exc:  # KilledWorker, or a worker that cannot import vgmed
                result = WorkerLost(f"{type(exc).__name__}: {exc}")
            future.release()
            fill()  # before storing: the cluster renders while this process writes
            on_result(item, result)
    finally:
        if held:  # interrupted: nothing more is rendered for this run
            client.cancel([future for future, _ in held.values()])
