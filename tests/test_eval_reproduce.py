"""`vgmed-eval reproduce` end to end on a tiny model, the bundled benchmark fixtures and a small release."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_fixtures import make_release

from vgmed_eval.cli import main
from vgmed_eval.vqa.stats import mcnemar_exact

FIX = Path(__file__).parent / "fixtures" / "vqa"
# The published table as the issue quotes it (VQA-RAD, SLAKE, PathVQA, PMC-VQA).
PAPER = {"HuatuoGPT-Vision-7B": ([67.4, 76.5, 60.7, 53.9], [71.2, 76.9, 67.6, 56.2]),
         "LLaVA-Med-7B": ([51.4, 48.6, 56.8, 24.7], None)}
ORDER = ["vqa-rad", "slake", "pathvqa", "pmc-vqa"]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _argv(tmp_path: Path, out: Path, benchmarks: list[str], *extra: str) -> list[str]:
    argv = ["reproduce", "--model", "builtin:tiny-llava", "--vgmed", str(tmp_path / "release"), "--out", str(out),
            "--control-release", str(tmp_path / "control"), "--top-k", "3", "--max-new-tokens", "2",
            "--bootstrap", "50", "--batch-size", "4", *extra]
    for name in benchmarks:
        argv += ["--benchmark", f"{name}={FIX / name}"]
    return argv


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reproduce")
    make_release(tmp / "release")
    make_release(tmp / "control", errors=False)
    out = tmp / "out"
    argv = _argv(tmp, out, ["pmc-vqa", "slake", "pathvqa"], "--published-as", "HuatuoGPT-Vision-7B")
    assert main(argv) == 0
    return tmp, out, argv


def test_report_holds_measured_beside_published(run):
    _, out, _ = run
    report = json.loads((out / "report.json").read_text())
    assert [s["status"] for s in report["steps"].values()] == ["done"] * 5
    assert report["compared_with"] == "HuatuoGPT-Vision-7B"
    grounding = json.loads((out / "grounding" / "summary.json").read_text())
    layer = grounding["most_sensitive_layer"]
    assert report["grounding"]["most_sensitive_layer"] == layer
    assert report["grounding"]["attention_ratio"] == grounding["overall"]["attention_ratio"][str(layer)]
    # tiny-llava crops like llava-hf: one box of the wide image is cut away (7 scorable, 6 scored)
    assert report["grounding"]["n_ok"] == report["control"]["n_ok"] == grounding["n_ok"] == 6
    heads = json.loads((out / "heads.json").read_text())
    assert report["heads"]["knockout_layer"] == heads["knockout_layer"] and len(heads["heads"]) == 3
    for v in report["vqa"]:
        folder = out / "vqa" / v["benchmark"]
        base, refined = _rows(folder / "predictions_baseline.jsonl"), _rows(folder / "predictions_vgrefine.jsonl")
        assert v["n"] == len(base) == len(refined) > 0
        assert v["baseline"] == pytest.approx(100 * sum(r["correct"] for r in base) / len(base), abs=0.01)
        assert v["vgrefine"] == pytest.approx(100 * sum(r["correct"] for r in refined) / len(refined), abs=0.01)
        m = mcnemar_exact([r["correct"] for r in base], [r["correct"] for r in refined])
        assert (v["paired"]["only_baseline"], v["paired"]["only_vgrefine"]) == (m.only_a, m.only_b)
        assert v["paired"]["mcnemar_p"] == pytest.approx(m.p_value)
        diff = sum(r["score"] for r in refined) / len(refined) - sum(r["score"] for r in base) / len(base)
        assert v["paired"]["diff_score"] == pytest.approx(diff, abs=1e-4)
        i = ORDER.index(v["benchmark"])
        assert v["published"]["baseline"] == PAPER["HuatuoGPT-Vision-7B"][0][i]
        assert v["published"]["vgrefine"] == PAPER["HuatuoGPT-Vision-7B"][1][i]
        assert "VGRefine authors" in v["published"]["source"]
    published = {(r["model"], r["system"], r["source"].split(",")[0]): r["values"] for r in report["published"]}
    columns = ("VQA-RAD", "SLAKE", "PathVQA", "PMC-VQA")
    for model, (base, refined) in PAPER.items():
        assert [published[(model, "baseline", "VGRefine authors' project page")][c] for c in columns] == base
        if refined:
            assert [published[(model, "vgrefine", "VGRefine authors' project page")][c] for c in columns] == refined
    md = (out / "report.md").read_text()
    slake = next(line for line in md.splitlines() if line.startswith("| slake |"))
    assert "| 76.5 | 76.9 |" in slake
    # OmniMedVQA and MMMU: only HuatuoGPT-Vision's README gives figures (74.0, 50.6), for its own model
    assert "| LLaVA-Med-7B | baseline | 51.4 | 48.6 | 56.8 | 24.7 | — | — | VGRefine authors'" in md
    assert "| 63.7 | 76.2 | 57.9 | 54.3 | 74.0 | 50.6 | HuatuoGPT-Vision README" in md
    assert "HuatuoGPT-Vision README" in md and "## Grounding" in md
    # each source says how its answers were decoded: HuatuoGPT-Vision's eval.py samples, the authors' wrapper is greedy
    decoding = {r["source"].split(" ")[0]: r["decoding"] for r in report["published"]}
    assert "sampled (temperature 0.2, repetition penalty 1.2), at most 256 new tokens" in decoding["HuatuoGPT-Vision"]
    assert "greedily, 1 token, at least 1" in decoding["VGRefine"]
    legend = next(line for line in md.splitlines() if "[H] HuatuoGPT-Vision README" in line)
    assert "[H] HuatuoGPT-Vision README (FreedomIntelligence/HuatuoGPT-Vision) (decoding: HuatuoGPT-Vision's " \
           "eval.py through its chatbot: sampled (temperature 0.2" in legend


def test_rerun_skips_finished_steps_and_runs_only_new_ones(run):
    tmp, out, argv = run
    watched = [out / "grounding" / "per_layer.parquet", out / "heads.json",
               out / "vqa" / "slake" / "predictions_vgrefine.jsonl"]
    before = [p.stat().st_mtime_ns for p in watched]
    assert main(argv) == 0
    assert [p.stat().st_mtime_ns for p in watched] == before
    report = json.loads((out / "report.json").read_text())
    assert [s["status"] for s in report["steps"].values()] == ["skipped"] * 5
    # One new benchmark and one whose data is missing: the new one runs, the bad one fails by name,
    # the finished ones stay skipped, and the command says something failed.
    bad = ["--benchmark", f"vqa-rad={tmp / 'no-such-vqa-rad'}"]
    assert main(argv[:] + bad) == 1
    report = json.loads((out / "report.json").read_text())
    statuses = {k: s["status"] for k, s in report["steps"].items()}
    assert statuses["vqa vqa-rad"] == "failed" and statuses["grounding"] == "skipped"
    assert "no-such-vqa-rad: data directory not found" in report["steps"]["vqa vqa-rad"]["message"]
    assert [p.stat().st_mtime_ns for p in watched] == before
    assert "| vqa vqa-rad | failed |" in (out / "report.md").read_text()
    # The same run with the data present: only that step runs.
    fixed = [a if not a.startswith("vqa-rad=") else f"vqa-rad={FIX / 'vqa-rad'}" for a in argv + bad]
    assert main(fixed) == 0
    statuses = {k: s["status"] for k, s in json.loads((out / "report.json").read_text())["steps"].items()}
    assert statuses["vqa vqa-rad"] == "done" and list(statuses.values()).count("skipped") == 5


def test_bad_arguments_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "--model", "builtin:tiny-llava", "--vgmed", str(tmp_path), "--out", str(tmp_path / "o"),
              "--benchmark", "nonsense=/x"])
    assert main(["reproduce", "--model", "builtin:tiny-llava", "--vgmed", str(tmp_path / "none"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_the_release_own_coco_files_are_its_control(tmp_path):
    from vgmed_eval.reproduce import Options, plan_steps

    release = make_release(tmp_path / "release", errors=False)
    grounding = plan_steps(Options(model="m", vgmed=release, out=tmp_path / "o"))[0]
    assert "--control-release" not in grounding.argv
    (release / "COCO_localization.jsonl").write_text((release / "VGMED_localization.jsonl").read_text())
    grounding = plan_steps(Options(model="m", vgmed=release, out=tmp_path / "o"))[0]
    assert grounding.argv[grounding.argv.index("--control-release") + 1] == str(release)
    assert tmp_path / "o" / "grounding" / "control" / "summary.json" in grounding.outputs
    explicit = plan_steps(Options(model="m", vgmed=release, out=tmp_path / "o", control=tmp_path / "c"))[0]
    assert explicit.argv[explicit.argv.index("--control-release") + 1] == str(tmp_path / "c")


@pytest.mark.slow
def test_under_torchrun_matches_one_process(run, tmp_path):
    """Two ranks (gloo, CPU): the steps split their work, rank 0 alone writes heads and the report."""
    import math
    import os
    import subprocess
    import sys

    tmp, single, argv = run
    out = tmp_path / "two"
    args = [a if a != str(single) else str(out) for a in argv[1:]]
    args = args[: args.index("--benchmark")] + ["--benchmark", f"slake={FIX / 'slake'}"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node=2", "-m",
           "vgmed_eval", "reproduce", *args]
    proc = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one, two = (json.loads((d / "report.json").read_text()) for d in (single, out))
    assert [s["status"] for s in two["steps"].values()] == ["done"] * 3
    assert two["grounding"]["most_sensitive_layer"] == one["grounding"]["most_sensitive_layer"]
    assert math.isclose(two["grounding"]["attention_ratio"]["mean"], one["grounding"]["attention_ratio"]["mean"],
                        rel_tol=1e-5)
    assert json.loads((out / "heads.json").read_text())["heads"] == json.loads((single / "heads.json").read_text())[
        "heads"]
    slake = [next(v for v in r["vqa"] if v["benchmark"] == "slake") for r in (one, two)]
    assert (slake[1]["baseline"], slake[1]["vgrefine"]) == (slake[0]["baseline"], slake[0]["vgrefine"])
    assert not (out / "grounding" / "parts").exists()


def test_protocol_reaches_every_step(tmp_path):
    from vgmed_eval.reproduce import Options, plan_steps

    release = make_release(tmp_path / "release", errors=False)
    steps = plan_steps(Options(model="m", vgmed=release, out=tmp_path / "o", benchmarks={"slake": FIX / "slake"},
                               protocol="published"))
    assert [s.argv[s.argv.index("--protocol") + 1] for s in steps] == ["published"] * 3
    assert all(s.argv.count("--protocol") == 1 for s in steps)


def test_images_reach_grounding_and_vgmed_vqa_steps(tmp_path):
    from vgmed_eval.reproduce import Options, plan_steps

    release, pics = make_release(tmp_path / "release", errors=False), tmp_path / "pictures"
    steps = plan_steps(Options(model="m", vgmed=release, out=tmp_path / "o", images=pics,
                               benchmarks={"slake": FIX / "slake", "vgmed-localization": release}))
    given = {s.name: s.argv[s.argv.index("--images") + 1] if "--images" in s.argv else None for s in steps}
    assert given == {"grounding": str(pics), "heads": None, "vqa slake": None, "vqa vgmed-localization": str(pics)}


def test_published_figure_over_other_questions_is_noted(run, tmp_path):
    """HuatuoGPT-Vision's MMMU figure is over MMMU's test set; vgmed reads the validation split: the report says so."""
    from vgmed_eval.reproduce import _vqa_summary, render_markdown

    _, out, _ = run
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"n_questions": 2, "systems": {"baseline": {"overall": {"accuracy": 0.5}}}}))
    row = _vqa_summary("mmmu-med", results, "HuatuoGPT-Vision-7B", "measured")
    assert (row["published"]["baseline"], row["published"]["source"].split(" ")[0]) == (50.6, "HuatuoGPT-Vision")
    assert "MMMU's test set" in row["published"]["population_note"]
    report = json.loads((out / "report.json").read_text())
    assert all(v["published"]["population_note"] is None for v in report["vqa"])  # the paper's own columns
    md = render_markdown({**report, "vqa": [*report["vqa"], row]})
    assert "- mmmu-med: published figure: the README's figure is over MMMU's test set; vgmed reads the " \
           "validation split" in md
