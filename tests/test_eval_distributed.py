"""Data-parallel `vgmed-eval grounding` / `vqa` under real torchrun processes (gloo, CPU, tiny models).

Two processes must write the same files as one; a launch whose rank 1 is SIGKILLed, rerun, must end
with the same files and leave rank 0's finished part alone."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from eval_fixtures import QUESTIONS, make_release

from vgmed_eval.cli import main
from vgmed_eval.distributed import World, WorldError, assign, shard
from vgmed_eval.release_io import read_release

pytestmark = pytest.mark.slow
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
TIMING = {"seconds", "questions_per_second", "processes", "questions_per_s", "answered"}


# ----------------------------------------------------------------------------------------- the split
def test_split_keeps_images_whole_and_balances():
    weights = [5, 1, 1, 3, 2, 2, 1]
    owner = assign(weights, 3)
    loads = [sum(w for w, o in zip(weights, owner, strict=True) if o == r) for r in range(3)]
    # by hand, heaviest first to the least-loaded rank: 5->r0, 3->r1, 2->r2, 2->r2 (2 < 3), 1->r1 (3 < 4),
    # 1->r1 (4 = 4, lower rank), 1->r2
    assert owner == [0, 1, 1, 1, 2, 2, 2] and loads == [5, 5, 5]
    items = [(f"q{i}", f"img{i % 4}") for i in range(11)]
    parts = [shard(items, lambda it: it[1], World(r, 3)) for r in range(3)]
    assert sorted(sum(parts, [])) == sorted(items)  # every question once
    images = [{img for _, img in p} for p in parts]
    assert all(not (images[a] & images[b]) for a in range(3) for b in range(a + 1, 3))  # an image on one rank
    assert parts == [shard(items, lambda it: it[1], World(r, 3)) for r in range(3)]  # deterministic


def test_world_from_env():
    assert World.from_env({}) == World(0, 1, 0)
    assert World.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}).device("cuda") == "cuda:1"
    assert World.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}).device("cpu") == "cpu"
    with pytest.raises(WorldError, match="RANK=4 WORLD_SIZE=4"):
        World.from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(WorldError, match="integers"):
        World.from_env({"RANK": "x"})


# ------------------------------------------------------------------------------------ helpers
def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _torchrun(args: list[str], nproc: int = 2) -> subprocess.Popen:
    cmd = [TORCHRUN, "--standalone", f"--nproc-per-node={nproc}", "-m", "vgmed_eval", *args]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _accelerate(args: list[str], nproc: int = 2) -> subprocess.Popen:
    """``accelerate launch``; on a machine without GPUs --multi_gpu still starts N gloo processes."""
    cmd = [ACCELERATE, "launch", "--multi_gpu", f"--num_processes={nproc}", "--num_machines=1",
           "--mixed_precision=no", "--dynamo_backend=no", "-m", "vgmed_eval", *args]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def _rank_pid(agent: int, rank: int, timeout: float = 120) -> int:
    """The worker process of ``rank`` started by the torchrun agent ``agent`` (from /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                environ = (entry / "environ").read_bytes().split(b"\0")
            except (OSError, IndexError, ValueError):
                continue
            if ppid == agent and f"RANK={rank}".encode() in environ:
                return int(entry.name)
        time.sleep(0.02)
    raise AssertionError(f"no rank {rank} worker under torchrun pid {agent}")


def _kill_rank1_after_rank0(args: list[str], rank0_done) -> None:
    """Launch 2 ranks, freeze rank 1 at once, wait until rank 0's part is on disk, SIGKILL rank 1."""
    proc = _torchrun(args)
    rank1 = _rank_pid(proc.pid, 1)
    os.kill(rank1, signal.SIGSTOP)
    deadline = time.monotonic() + 600
    while not rank0_done():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-4000:]
        time.sleep(0.1)
    os.kill(rank1, signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0, out[-2000:]  # the launch failed as a whole


def _close(a, b, path="") -> None:
    """Same JSON structure; floats equal to 1e-5 (batches of different composition round differently)."""
    if isinstance(a, dict):
        assert set(a) - TIMING == set(b) - TIMING, path
        for k in set(a) - TIMING:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6), (path, a, b)
    else:
        assert a == b, (path, a, b)


# ----------------------------------------------------------------------------------------- grounding
def _grounding_args(release: Path, out: Path) -> list[str]:
    return ["grounding", "--release", str(release), "--model", "builtin:tiny-llava", "--out", str(out),
            "--batch-size", "2", "--bootstrap", "50", "--save-maps", "--no-progress"]


def _same_grounding(one: Path, two: Path) -> None:
    for name in ("per_layer.parquet", "per_head.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(one / name), pd.read_parquet(two / name),
                                      check_exact=False, rtol=1e-5, atol=1e-7)
    assert (one / "errors.jsonl").read_text() == (two / "errors.jsonl").read_text()
    _close(json.loads((one / "summary.json").read_text()), json.loads((two / "summary.json").read_text()))
    maps = sorted(p.name for p in (one / "maps").iterdir())
    assert maps == sorted(p.name for p in (two / "maps").iterdir()) and maps
    for name in maps:
        a, b = np.load(one / "maps" / name), np.load(two / "maps" / name)
        np.testing.assert_allclose(a["attn"], b["attn"], rtol=1e-5, atol=1e-8)
        np.testing.assert_array_equal(a["gt"], b["gt"])
    assert not (two / "parts").exists()  # merged and cleaned up: exactly one process's files


@pytest.fixture(scope="module")
def grounding_single(tmp_path_factory):
    root = tmp_path_factory.mktemp("ground")
    release = make_release(root / "release")
    assert main(_grounding_args(release, root / "one")) == 0
    return release, root / "one"


def test_grounding_two_processes_equal_one(grounding_single, tmp_path):
    release, one = grounding_single
    out = _finish(_torchrun(_grounding_args(release, tmp_path / "two")))
    _same_grounding(one, tmp_path / "two")
    assert "rank 1/2:" in out and "rank 0/2:" in out
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["n_ok"] == len(QUESTIONS) - 1


def test_grounding_rank_killed_then_rerun(grounding_single, tmp_path):
    release, one = grounding_single
    out = tmp_path / "two"
    part0 = out / "parts" / "rank0000-of-0002"
    _kill_rank1_after_rank0(_grounding_args(release, out), part0.is_dir)
    assert not (out / "parts" / "rank0001-of-0002").exists() and not (out / "summary.json").exists()
    # rank 0's part holds only its own images; remember when its maps were written
    mine = {q.image.name for q in shard(read_release(release, ("localization", "attribute"))[0],
                                        lambda q: q.image, World(0, 2))}
    assert set(pd.read_parquet(part0 / "per_layer.parquet")["image"].map(lambda p: Path(p).name)) <= mine
    rank0_maps = {p.name: p.stat().st_mtime_ns for p in (out / "maps").iterdir()
                  if str(np.load(p)["image"]).split("/")[-1] in mine}
    assert rank0_maps

    log = _finish(_torchrun(_grounding_args(release, out)))
    assert "rank 0/2: part" in log and "already complete" in log
    assert {p.name: p.stat().st_mtime_ns for p in (out / "maps").iterdir() if p.name in rank0_maps} == rank0_maps
    _same_grounding(one, out)


# ----------------------------------------------------------------------------------------------- VQA
def _vqa_data(root: Path) -> Path:
    """A vgmed-attribute benchmark: the grounding fixture's 4 images, 7 questions, one unreadable image."""
    make_release(root, errors=False)
    recs = [{"id": qid, "image": f"images/{name}.png", "question": q, "answer": "yes" if i % 2 else "round",
             "modality": "CT", "body_part": name} for i, (qid, name, q, _, _) in enumerate(QUESTIONS)]
    (root / "images" / "broken.png").write_bytes(b"not a png")
    recs.append({"id": "q-broken", "image": "images/broken.png", "question": "Is it there?", "answer": "no"})
    (root / "VGMED_attribute.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return root


def _vqa_args(data: Path, out: Path, heads: Path) -> list[str]:
    return ["vqa", "--benchmark", "vgmed-attribute", "--data", str(data), "--model", "builtin:tiny-qwen2_vl",
            "--vgrefine", str(heads), "--compare", "--max-new-tokens", "3", "--batch-size", "2",
            "--bootstrap", "50", "--device", "cpu", "--out", str(out)]


@pytest.fixture(scope="module")
def vqa_single(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqa")
    heads = root / "heads.json"
    heads.write_text(json.dumps({"knockout_layer": 2, "heads": [[1, 0], [2, 1], [3, 2]]}))
    data = _vqa_data(root / "data")
    assert main(_vqa_args(data, root / "one", heads)) == 0
    return data, heads, root / "one"


def _same_vqa(one: Path, two: Path) -> None:
    for system in ("baseline", "vgrefine"):
        assert (one / f"predictions_{system}.jsonl").read_text() == (two / f"predictions_{system}.jsonl").read_text()
    _close(json.loads((one / "results.json").read_text()), json.loads((two / "results.json").read_text()))
    assert not (two / "parts").exists()


def test_vqa_two_processes_equal_one(vqa_single, tmp_path):
    data, heads, one = vqa_single
    _finish(_accelerate(_vqa_args(data, tmp_path / "two", heads)))
    _same_vqa(one, tmp_path / "two")
    results = json.loads((tmp_path / "two" / "results.json").read_text())
    assert results["timing"]["processes"] == 2 and results["timing"]["answered"] == len(QUESTIONS) + 1
    assert len(results["errors"]) == 1 and "broken.png" in results["errors"][0]


def test_vqa_rank_killed_then_rerun(vqa_single, tmp_path):
    data, heads, one = vqa_single
    out = tmp_path / "two"
    info0 = out / "parts" / "rank0000-of-0002.vqa.json"
    _kill_rank1_after_rank0(_vqa_args(data, out, heads), info0.exists)
    rank0_rows = (out / "parts" / "rank0000-of-0002.predictions_baseline.jsonl").read_text().splitlines()
    assert rank0_rows and not (out / "results.json").exists()
    _finish(_torchrun(_vqa_args(data, out, heads)))
    _same_vqa(one, out)
    answered = json.loads((out / "results.json").read_text())["timing"]["answered"]
    assert answered == len(QUESTIONS) + 1 - len(rank0_rows)  # rank 0's answers were not asked again
