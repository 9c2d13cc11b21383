"""One writer per stage (issue 12.6): a second writer is told who holds the build, or waits with --wait."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from release_fixtures import make_build

from vgmed_build.cli import main
from vgmed_build.lock import out_lock_path, stage_lock_path

HOLDER = """
import sys, time
from pathlib import Path
from vgmed_build.lock import hold
with hold(Path(sys.argv[1]), "test holder"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def holder(lock: Path, seconds: float) -> subprocess.Popen:
    """Another process holding ``lock`` (the real flock) for ``seconds``."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture()
def build(tmp_path):
    return make_build(tmp_path)[0]


def test_second_generate_is_refused_with_the_holders_pid(build, capsys):
    proc = holder(stage_lock_path(build, "generate"), 30)
    try:
        assert main(["generate", "--build", str(build)]) == 2
        err = capsys.readouterr().err
        assert f"error: another `vgmed-build generate` on {build} is running (pid {proc.pid})" in err
        assert "--wait" in err
        # readers stay free while the writer runs
        assert main(["stats", "--build", str(build)]) == 0
        assert main(["drafts", "--build", str(build)]) == 0
    finally:
        proc.kill()
        proc.wait()
    # the lock died with its holder (even killed): the next writer runs
    assert main(["generate", "--build", str(build)]) == 0


def test_second_release_to_one_out_is_refused_then_waits(build, tmp_path, capsys):
    out = tmp_path / "rel"
    args = ["release", "--build", str(build), "--out", str(out), "--created", "2026-01-01T00:00:00Z",
            "--include-unreviewed"]
    proc = holder(out_lock_path(out), 30)
    try:
        assert main(args) == 2  # could not run (docs/cli.md), like a second generate
        assert f"error: another `vgmed-build release` to {out} is running (pid {proc.pid})" in capsys.readouterr().err
        assert not out.exists()
    finally:
        proc.kill()
        proc.wait()
    proc = holder(out_lock_path(out), 2)
    start = time.monotonic()
    assert main([*args, "--wait"]) == 0
    assert time.monotonic() - start >= 1.0  # it waited for the holder
    proc.wait()
    assert (out / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build", "rel"]  # no lock file left behind


def test_every_writing_stage_takes_wait():
    from vgmed_build.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    review = next(a for a in sub["review"]._actions if a.dest == "action").choices
    for p in (sub["ingest"], sub["generate"], sub["release"], review["push"], review["pull"]):
        assert any(a.dest == "wait" and a.help for a in p._actions), p.prog
