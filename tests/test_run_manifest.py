"""run.json (issue 25 item 6): what every grounding / vqa output records, weight hashes, and report's refusal
to draw runs of different protocols in one figure."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import torch
import transformers
from eval_fixtures import make_release

from vgmed_eval.cli import main
from vgmed_eval.run_manifest import model_record, protocol_differences

FIX = Path(__file__).parent / "fixtures" / "vqa"
GROUNDING = ["--model", "builtin:tiny-llava", "--limit", "3", "--layers", "0,1", "--bootstrap", "10",
             "--chance-draws", "2", "--no-progress"]


@pytest.fixture(scope="module")
def grounding_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    release = make_release(root / "release", errors=False)
    out = root / "grounding"
    assert main(["grounding", "--release", str(release), "--out", str(out), "--chance-seed", "7", *GROUNDING]) == 0
    return release, out


def test_grounding_writes_run_json(grounding_run):
    _, out = grounding_run
    run = json.loads((out / "run.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert run["command"] == "grounding"
    assert run["protocol"] == summary["protocol"] and run["protocol"]["gt"] == "box"
    assert run["flags"]["chance_seed"] == 7 and run["seeds"]["chance_seed"] == 7
    assert run["flags"]["layers"] == "0,1" and run["flags"]["limit"] == 3
    model = run["model"]
    assert model["id"] == "builtin:tiny-llava" and "not hashed" in model["weights"]
    assert model["config"]["text_config"]["num_hidden_layers"] == 4
    assert model["dtype"] == "float32" and model["device"] == "cpu"
    assert model["attention_implementation"]  # the registered capture / knockout function
    assert "{question}" in model["prompt_template"] and model["chat_template"]
    assert model["chat_template_sha256"] == hashlib.sha256(model["chat_template"].encode()).hexdigest()
    assert run["packages"]["torch"] == torch.__version__
    assert run["packages"]["transformers"] == transformers.__version__
    head = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    if head.returncode == 0:
        assert run["vgmed_git"]["commit"] == head.stdout.strip()


def test_weights_hashed_per_file(tmp_path):
    ckpt = tmp_path / "ckpt"
    (ckpt / "tower").mkdir(parents=True)
    files = {"model-00001-of-00002.safetensors": b"a" * 1000, "model-00002-of-00002.safetensors": b"b" * 77,
             "tower/pytorch_model.bin": b"tower weights"}
    for name, data in files.items():
        (ckpt / name).write_bytes(data)
    (ckpt / "config.json").write_text("{}")
    record = model_record(str(ckpt))
    assert record["weights"] == {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    (ckpt / "tower/pytorch_model.bin").write_bytes(b"changed weights")  # a new file: hashed again
    assert model_record(str(ckpt))["weights"]["tower/pytorch_model.bin"] == \
        hashlib.sha256(b"changed weights").hexdigest()


def test_protocol_differences():
    a = {"name": "vgmed", "gt": "box", "scorer": "vgmed"}
    assert protocol_differences([("a", a), ("b", dict(a))]) == []
    assert protocol_differences([("a", a)]) == []
    diff = protocol_differences([("a", a), ("b", {**a, "gt": "soft"})])
    assert diff == ["a: gt='box'", "b: gt='soft'"]


def test_report_refuses_mixed_protocols(grounding_run, tmp_path, capsys):
    release, out = grounding_run
    control = tmp_path / "control"
    assert main(["grounding", "--release", str(release), "--out", str(control), "--gt", "soft", *GROUNDING]) == 0
    assert json.loads((control / "run.json").read_text())["protocol"]["gt"] == "soft"
    capsys.readouterr()
    rc = main(["report", "--results", str(out), "--control", str(control), "--out", str(tmp_path / "r")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "different protocols" in err and "gt='soft'" in err and "--allow-mixed" in err
    assert not (tmp_path / "r" / "index.md").exists()
    assert main(["report", "--results", str(out), "--control", str(control), "--out", str(tmp_path / "r"),
                 "--allow-mixed"]) == 0
    assert (tmp_path / "r" / "index.md").exists()


def test_vqa_run_json_and_mixed_vqa_runs(grounding_run, tmp_path, capsys):
    _, out = grounding_run
    runs = {}
    for scorer in ("vgmed", "published"):
        runs[scorer] = tmp_path / scorer
        assert main(["vqa", "--benchmark", "pmc-vqa", "--data", str(FIX / "pmc-vqa"), "--model", "builtin:tiny-llava",
                     "--out", str(runs[scorer]), "--limit", "2", "--max-new-tokens", "2", "--device", "cpu",
                     "--scorer", scorer, "--no-progress"]) == 0
        run = json.loads((runs[scorer] / "run.json").read_text())
        assert run["command"] == "vqa" and run["protocol"]["scorer"] == scorer
        assert run["flags"]["benchmark"] == "pmc-vqa" and run["model"]["dtype"] == "float32"
        assert run["scorer"] == json.loads((runs[scorer] / "results.json").read_text())["metric"]
    # a rerun with nothing left to answer loads no model and keeps the model facts
    assert main(["vqa", "--benchmark", "pmc-vqa", "--data", str(FIX / "pmc-vqa"), "--model", "builtin:tiny-llava",
                 "--out", str(runs["vgmed"]), "--limit", "2", "--max-new-tokens", "2", "--device", "cpu",
                 "--no-progress"]) == 0
    assert json.loads((runs["vgmed"] / "run.json").read_text())["model"]["dtype"] == "float32"
    capsys.readouterr()
    rc = main(["report", "--results", str(out), "--out", str(tmp_path / "r"), "--vqa", str(runs["vgmed"]),
               "--vqa", str(runs["published"])])
    assert rc == 2 and "scorer='published'" in capsys.readouterr().err
