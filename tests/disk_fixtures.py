"""A full disk, for real: a small tmpfs filled to the last byte (where this process may mount one)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


@pytest.fixture()
def full_disk(tmp_path):
    """A 1 MiB tmpfs (needs the right to mount, e.g. root in a container; skipped otherwise)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True)


def fill(disk: Path, leave: int = 0) -> None:
    """Fill ``disk`` to the last byte, then free ``leave`` bytes (room for a lock file, say)."""
    with open(disk / "filler", "wb", buffering=0) as fh:
        with pytest.raises(OSError):
            while True:
                fh.write(b"\0" * 4096)
        fh.truncate(max(0, fh.tell() - leave))
