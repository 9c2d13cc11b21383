"""Data-parallel evaluation: one process per device under ``torchrun`` or ``accelerate launch``.

Both launchers export ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and ``MASTER_ADDR/PORT``); a plain
run has none and is rank 0 of 1. Work is split by image, deterministically, so each image's
general-prompt map (and VQA prefix cache) is computed on one rank only. Ranks exchange nothing but
files: each writes its own part under ``OUT/parts/`` (atomically: a part is there whole or not at
all), then all meet at a barrier, rank 0 merges the parts into the files a single process writes, and
a second barrier holds the other ranks until the merged files exist (so a command run next on any
rank, as ``reproduce`` does, reads them).
Why files rather than collectives: a rank that dies loses only its own part, and a rerun computes
only the parts that are missing. The barrier runs on gloo (it exchanges no tensors, so it needs no
NCCL, and it is how the CPU tests run); it is set up only after the work, so a slow rank never holds
the others at a rendezvous while they could be computing.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import shutil
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from vgmed_build.errors import VgmedError

PARTS_DIR = "parts"
BARRIER_TIMEOUT = timedelta(hours=72)  # ranks may finish hours apart on an uneven split

T = TypeVar("T")
_LEAVING: list[bool] = []  # set once the process group's exit handler is registered


class WorldError(VgmedError, ValueError):
    """The launcher's environment does not describe a valid process group."""


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank, number of processes, rank on its own node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1  # processes on this node

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> World:
        env = os.environ if env is None else env
        try:
            rank, size = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
            local = int(env.get("LOCAL_RANK", rank))
            local_size = int(env.get("LOCAL_WORLD_SIZE", size))
        except ValueError as exc:
            raise WorldError(f"RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE must be integers ({exc})") from None
        if size < 1 or not 0 <= rank < size or not 0 <= local < local_size:
            raise WorldError(f"RANK={rank} WORLD_SIZE={size} LOCAL_RANK={local} LOCAL_WORLD_SIZE={local_size} is not "
                             "a valid process group")
        return cls(rank, size, local, local_size)

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> str:
        """``cuda`` means this rank's own GPU (``cuda:LOCAL_RANK``); an explicit index or ``cpu`` is kept."""
        return f"cuda:{self.local_rank}" if device == "cuda" and self.distributed else device


SINGLE = World()  # a plain run: rank 0 of 1


def assign(weights: Sequence[int], size: int) -> list[int]:
    """Rank of each group: heaviest groups first, each to the least-loaded rank (ties: lowest rank).

    Pure and deterministic: every rank computes the same split from the same question list."""
    owner = [0] * len(weights)
    loads = [(0, r) for r in range(size)]
    for i in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        load, rank = heapq.heappop(loads)
        owner[i] = rank
        heapq.heappush(loads, (load + weights[i], rank))
    return owner


def shard(items: Sequence[T], key: Callable[[T], Hashable], world: World) -> list[T]:
    """This rank's items (order kept): all items of one ``key`` (an image) go to the same rank."""
    counts: dict[Hashable, int] = {}
    for item in items:
        counts[key(item)] = counts.get(key(item), 0) + 1
    owner = dict(zip(counts, assign(list(counts.values()), world.size), strict=True))
    return [item for item in items if owner[key(item)] == world.rank]


def order_by_group(items: Sequence[T], key: Callable[[T], Hashable]) -> list[T]:
    """Items of one group next to each other, groups in first-appearance order (one process's order)."""
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return [item for group in groups.values() for item in group]


def parts_dir(out: Path) -> Path:
    return out / PARTS_DIR


def part_path(out: Path, world: World, suffix: str = "") -> Path:
    """Where this rank's part lives; the world size is in the name so a different split never mixes in."""
    return parts_dir(out) / f"rank{world.rank:04d}-of-{world.size:04d}{suffix}"


@contextlib.contextmanager
def writing_part(final: Path) -> Iterator[Path]:
    """A scratch directory that becomes ``final`` only once everything in it was written."""
    scratch = final.with_name(final.name + ".partial")
    if scratch.exists():  # left by a rank that died while writing (we made it)
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    yield scratch
    scratch.rename(final)


def remove_parts(out: Path, names: Sequence[Path]) -> None:
    """Delete the merged parts (files and directories vgmed wrote) and ``parts/`` once it is empty."""
    for path in names:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    with contextlib.suppress(OSError):
        parts_dir(out).rmdir()


def barrier(world: World) -> None:
    """Wait until every rank got here (no-op in a single process)."""
    if not world.distributed:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=world.rank, world_size=world.size, timeout=BARRIER_TIMEOUT)
    dist.barrier()


def finish(world: World) -> None:
    """Leave the process group cleanly when the process ends.

    Not at the end of each command: a process that runs several commands (``reproduce``) keeps one
    group, because a group created again after ``destroy_process_group`` rendezvouses under the same
    store keys as the first and its ranks reach for the first group's closed sockets."""
    if world.distributed:
        import atexit

        import torch.distributed as dist

        if dist.is_initialized() and not _LEAVING:
            _LEAVING.append(True)
            atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
