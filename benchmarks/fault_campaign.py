"""Fault and bad-input campaign (issues 12 and 30): kill stages at random moments, feed hostile inputs, plant
identifiers, and count what went wrong. Any user can rerun it; it needs only the package (offline).

What it measures, on copies of the bundled sample:

* kills: each stage (ingest with 2 workers, generate, release, export) is started N times from its starting
  state and SIGKILLed at a random moment of its clean run time, then rerun to completion and the
  later stages run; each result is compared with a clean build: duplicates, lost and extra regions /
  drafts, corrupt PNGs, temp files left, and whether the release is byte-identical to the clean one;
* bad inputs: each hostile case is run through the real command line; its exit code and the error
  line it printed are reported, and whether the run went on (the good items were still ingested);
  each case is judged: a traceback, data loss (a user's file or folder changed), wrongly accepted
  (exit 0 where it must refuse, or a leak), unclear (no error line naming what is wrong);
* planted identifiers: DICOM header values and a patient-named folder planted in the sample; every
  byte and file name of the release and every shared output (regions, drafts, stats, logs) is searched;
* LLM server faults: `generate --drafter llm` over real HTTP against the scripted server
  (tests/llm_server.py) answering too late, 500 on every request, garbage or truncated JSON, or killed
  in the middle of the run; each case is judged as a bad input (a clear line per failed draft, exit 1),
  then rerun against a working server: every draft of a clean run, none twice;
* a full disk, for real: each stage (ingest, generate, release, export, review pull) run with its output on a
  tmpfs filled to the last byte (in a private mount namespace, `unshare -rm`; skipped where that is
  not allowed): one clear line, what was stored before unchanged, and once space is freed the rerun
  completes and its release / export is byte-identical to a clean one;
* Label Studio failing: `review push` / `pull` through the real SDK client against the tests' local server
  answering Label Studio's API (tests/labelstudio_mimic.py): a 500 creating the project, the connection
  closed during the import, an export cut short, closed, truncated or garbage: one line naming the
  server and the step, nothing stored, and the rerun completes with one task per draft.

    python benchmarks/fault_campaign.py --kills 5 --seed 1
    python benchmarks/fault_campaign.py --quick      # 2 kills per stage on 2 cases
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from vgmed_build.resources import resource_dir

CREATED = "2026-01-01T00:00:00Z"
PLANTED = {
    "PatientName": "PLANTED^PATIENTNAME",
    "PatientID": "PLANTEDMRN4455",
    "InstitutionName": "PLANTED GENERAL HOSPITAL",
    "AccessionNumber": "PLANTEDACC991",
    "ReferringPhysicianName": "PLANTED^DOCTOR",
}
PATIENT_FOLDER = "Smith_John_MRN4455"
# the bundled MNI pair's label values, named as the sample's sources.toml names them (lint rejects drafts
# about unnamed structures, `label_N`, so a build of unnamed labels releases nothing)
NAMES = {1: "left grey matter", 2: "right grey matter", 3: "left white matter", 4: "right white matter"}
NAMED = "[source.labels]\n" + "".join(f'"{v}" = "{n}"\n' for v, n in NAMES.items()) + \
    "[source.categories]\n" + "".join(f'"{n}" = "tissue"\n' for n in NAMES.values())


def nifti_sources(path: Path, folder: Path, name: str = "x", options: str = "") -> Path:
    """A sources file of one ``nifti`` folder of MRI pairs with named structures (``options``: TOML lines)."""
    path.write_text(f'[[source]]\nname = "{name}"\nkind = "nifti"\npath = {json.dumps(str(folder))}\n'
                    f'modality = "MRI"\n{NAMED}[source.options]\n{options}', encoding="utf-8")
    return path


def cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vgmed_build.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vgmed_build.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def nifti_source(root: Path, n_cases: int) -> Path:
    """n_cases copies of the bundled MNI pair as a folder of <case>.nii.gz + <case>_seg.nii.gz."""
    sample = resource_dir("sample") / "mni152"
    image = next((sample / "imagesTr").iterdir())
    label = next((sample / "labelsTr").iterdir())
    folder = root / "cases"
    folder.mkdir(parents=True)
    for i in range(n_cases):
        shutil.copy(image, folder / f"case{i:02d}.nii.gz")
        shutil.copy(label, folder / f"case{i:02d}_seg.nii.gz")
    return folder


def export_dir(out: Path) -> Path:
    return out.with_name(out.name + "-parquet")


def stage_args(stage: str, build: Path, sources: Path, out: Path) -> list[str]:
    if stage == "ingest":
        return ["ingest", "--build", str(build), "--sources", str(sources), "--no-progress", "--workers", "2"]
    if stage == "generate":
        return ["generate", "--build", str(build)]
    if stage == "export":
        return ["export", str(out), "--format", "parquet", "--embed-images", "--out", str(export_dir(out))]
    return ["release", "--build", str(build), "--out", str(out), "--include-unreviewed", "--created", CREATED]


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} \
        if root.is_dir() else {}


def state(path: Path) -> dict[str, bytes] | bytes | None:
    """What a file or folder holds (None: absent), to compare before and after."""
    return tree(path) if path.is_dir() else path.read_bytes() if path.exists() else None


def snapshot(build: Path, out: Path) -> dict:
    """What a finished build holds: region ids, draft (id, question, answer), release bytes, PNG health."""
    regions = [json.loads(line)["id"] for line in cli("regions", "--build", str(build)).stdout.splitlines()]
    drafts = [json.loads(line) for line in cli("drafts", "--build", str(build)).stdout.splitlines()]
    corrupt = 0
    for png in (build / "images").rglob("*.png"):
        try:
            with Image.open(png) as im:
                im.load()
        except Exception:
            corrupt += 1
    return {
        "regions": regions,
        "drafts": [(d["id"], d["question"], d["answer"]) for d in drafts],
        "corrupt_png": corrupt,
        "temp_files": len(list(build.rglob("*.tmp"))) + len(list(out.parent.glob(f".{out.name}.*"))),
        # a killed export's temporary file stays by design (vgmed cannot prove it wrote it): counted apart
        "export_temp": len(list(out.parent.glob(f".{export_dir(out).name}.*"))),
        "release": tree(out),
        "export": tree(export_dir(out)),
    }


def compare(clean: dict, got: dict) -> dict:
    def diff(key: str) -> dict:
        a, b = clean[key], got[key]
        return {"duplicates": len(b) - len(set(b)), "lost": len(set(a) - set(b)), "extra": len(set(b) - set(a))}

    return {
        "regions": diff("regions"),
        "drafts": diff("drafts"),
        "corrupt_png": got["corrupt_png"],
        "temp_files_left": got["temp_files"],
        "export_temp_left": got["export_temp"],
        "release_identical": got["release"] == clean["release"],
        "export_identical": got["export"] == clean["export"],
    }


def discard(build: Path, out: Path) -> None:
    for folder in (build, out, export_dir(out)):
        shutil.rmtree(folder, ignore_errors=True)


STAGES = ("ingest", "generate", "release", "export")


def kill_campaign(work: Path, stages: list[str], kills: int, rng: random.Random, n_cases: int) -> dict:
    """Per stage: ``kills`` trials, each from the stage's starting state: start, SIGKILL at a random
    moment of the clean run time, rerun to completion, compare with the clean build. A trial whose
    process had already finished does not count as a kill and is retried (at most 3x ``kills``)."""
    source = nifti_sources(work / "sources.toml", nifti_source(work / "src", n_cases))
    clean_build, clean_out = work / "clean", work / "clean-release"
    seconds, before = {}, {}
    for stage in STAGES:
        before[stage] = work / f"before-{stage}"
        shutil.copytree(clean_build, before[stage]) if clean_build.exists() else before[stage].mkdir()
        t0 = time.monotonic()
        done = cli(*stage_args(stage, clean_build, source, clean_out))
        seconds[stage] = time.monotonic() - t0
        if done.returncode != 0:
            raise SystemExit(f"clean {stage} failed: {done.stderr[-2000:]}")
    clean = snapshot(clean_build, clean_out)
    results = {}
    for stage in stages:
        trials, attempts = [], 0
        while len(trials) < kills and attempts < 3 * kills:
            attempts += 1
            build, out = work / f"trial-{stage}-{attempts}", work / f"trial-{stage}-{attempts}-release"
            shutil.copytree(before[stage], build)
            if stage == "export":  # its starting state is the release
                shutil.copytree(clean_out, out)
            moment = rng.uniform(0.05, 0.95) * seconds[stage]
            proc = start(*stage_args(stage, build, source, out))
            time.sleep(moment)
            if proc.poll() is not None:
                discard(build, out)
                continue
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            rerun = cli(*stage_args(stage, build, source, out))
            for later in STAGES[STAGES.index(stage) + 1:]:  # so the whole build can be compared
                cli(*stage_args(later, build, source, out))
            trials.append({"moment_s": round(moment, 2), "rerun_exit": rerun.returncode,
                           **compare(clean, snapshot(build, out))})
            discard(build, out)
        results[stage] = {
            "kills": len(trials),
            "clean_run_s": round(seconds[stage], 2),
            "kill_moments_s": [t["moment_s"] for t in trials],
            "reruns_ok": sum(t["rerun_exit"] == 0 for t in trials),
            "duplicates": sum(t[k]["duplicates"] for t in trials for k in ("regions", "drafts")),
            "lost": sum(t[k]["lost"] for t in trials for k in ("regions", "drafts")),
            "extra": sum(t[k]["extra"] for t in trials for k in ("regions", "drafts")),
            "corrupt_png": sum(t["corrupt_png"] for t in trials),
            "temp_files_left": sum(t["temp_files_left"] for t in trials),
            "export_temp_files_left": sum(t["export_temp_left"] for t in trials),
            "releases_identical": sum(t["release_identical"] for t in trials),
            "exports_identical": sum(t["export_identical"] for t in trials),
        }
    return results


def first_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if "error" in line.lower()]
    return lines[0][:300] if lines else "(no error line)"


def judge(proc: subprocess.CompletedProcess, *, refuse: bool = True, kept: bool = True, leak: bool = False,
          clear: bool | None = None) -> list[str]:
    """What went wrong in one case: a traceback, data loss (``kept`` false), wrongly accepted (exit 0 where it
    must refuse, or ``leak``), unclear (no error line; ``clear`` overrides that test)."""
    verdict = []
    if "Traceback" in proc.stdout + proc.stderr:
        verdict.append("traceback")
    if not kept:
        verdict.append("data_loss")
    if leak or (refuse and proc.returncode == 0):
        verdict.append("wrongly_accepted")
    if refuse and not (first_error(proc) != "(no error line)" if clear is None else clear):
        verdict.append("unclear")
    return verdict


def case(name: str, proc: subprocess.CompletedProcess, errors: list[str] | None = None, **judged) -> dict:
    facts = {k: v for k, v in judged.items() if k in ("kept", "leak")}
    return {"case": name, "exit": proc.returncode, "errors": errors or [first_error(proc)], **facts,
            "verdict": judge(proc, **judged)}


def done_by_source(build: Path) -> dict[str, int]:
    try:
        with sqlite3.connect(build / "catalog.sqlite") as conn:
            return dict(conn.execute("SELECT source, COUNT(*) FROM items WHERE status='done' GROUP BY source"))
    except sqlite3.Error:
        return {}


def bad_folder(src: Path) -> int:
    """One good MNI pair beside damaged ones in one ``nifti`` folder; returns the number of bad items."""
    import nibabel as nib

    sample = resource_dir("sample") / "mni152"
    image = next((sample / "imagesTr").iterdir())
    label = next((sample / "labelsTr").iterdir())
    src.mkdir()
    bad = {os.fsdecode(b"caf\xe9"): image.read_bytes(), "truncated": image.read_bytes()[:2000],
           "Doe: Jane MRN 12345": image.read_bytes()[:2000]}  # a patient's name in an erroring item's file name
    damaged = bytearray(image.read_bytes())
    damaged[-8] ^= 0xFF  # the gzip CRC-32
    bad["crc"] = bytes(damaged)
    shutil.copy(image, src / "good.nii.gz")
    shutil.copy(label, src / "good_seg.nii.gz")
    for name, data in bad.items():
        (src / f"{name}.nii.gz").write_bytes(data)
        shutil.copy(label, src / f"{name}_seg.nii.gz")
    ref = nib.load(image)
    volumes = {"all_nan": np.full(ref.shape, np.nan, np.float32), "constant": np.full(ref.shape, 7.0, np.float32),
               "complex": np.asanyarray(ref.dataobj).astype(np.complex64)}
    for name, data in volumes.items():
        nib.save(nib.Nifti1Image(data, ref.affine), src / f"{name}.nii.gz")
        shutil.copy(label, src / f"{name}_seg.nii.gz")
    return len(bad) + len(volumes)


def export_cases(work: Path, release: Path) -> list[dict]:
    """A user's file or folder as --out, a tampered release, a link out of the release (issue 30)."""
    cases = []
    results = work / "my-results.json"
    results.write_text('{"accuracy": 0.93}\n')
    folder = work / "analysis"
    folder.mkdir()
    (folder / "VGMED_attribute.parquet").write_bytes(b"my own parquet")
    (folder / "notes.txt").write_text("mine")
    for fmt, target in (("vqa-json", results), ("parquet", folder)):
        before = tree(work / "analysis"), results.read_bytes()
        run = cli("export", str(release), "--format", fmt, "--out", str(target))
        cases.append(case(f"export --format {fmt} --out a user's {'file' if fmt == 'vqa-json' else 'folder'}", run,
                          kept=(tree(work / "analysis"), results.read_bytes()) == before))
    tampered = work / "tampered"
    shutil.copytree(release, tampered)
    first = tampered / "VGMED_localization.jsonl"
    lines = first.read_text().splitlines()
    lines[0] = json.dumps({**json.loads(lines[0]), "answer": "changed"})
    first.write_text("\n".join(lines) + "\n")
    run = cli("export", str(tampered), "--format", "vqa-json", "--out", str(work / "tampered.json"))
    cases.append(case("export of a release whose records were edited after release", run))
    linked = work / "linked"
    shutil.copytree(release, linked)
    secret = work / "secret.key"
    secret.write_bytes(b"-----BEGIN PRIVATE KEY----- TOPSECRET")
    image = json.loads(first.read_text().splitlines()[0])["image"]
    (linked / image).unlink()
    (linked / image).symlink_to(secret)
    manifest = json.loads((linked / "manifest.json").read_text())
    manifest["files"][image] = {**manifest["files"][image], "bytes": secret.stat().st_size,
                                "sha256": hashlib.sha256(secret.read_bytes()).hexdigest()}
    (linked / "manifest.json").write_text(json.dumps(manifest))
    out = work / "linked-parquet"
    run = cli("export", str(linked), "--format", "parquet", "--embed-images", "--out", str(out))
    leaked = any(b"TOPSECRET" in data for data in tree(out).values())
    cases.append(case("export --embed-images of a release whose image links to a file outside", run, leak=leaked))
    return cases


def interrupt_cases(work: Path) -> list[dict]:
    """Ctrl-C (to the process group, as a terminal sends it) and SIGTERM during ingest: one line with the
    resume hint, no traceback, and a rerun completes (issue 30)."""
    sources = nifti_sources(work / "many.toml", nifti_source(work / "many", 12), name="many")
    cases = []
    for sig, said, workers in ((signal.SIGINT, "Ctrl-C", "2"), (signal.SIGTERM, "SIGTERM", "1")):
        build = work / f"stopped-{said}"
        args = ["ingest", "--build", str(build), "--sources", str(sources), "--no-progress", "--workers", workers]
        proc = subprocess.Popen([sys.executable, "-m", "vgmed_build.cli", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.monotonic() + 120
        while not done_by_source(build) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        landed = proc.poll() is None
        if landed:
            os.killpg(proc.pid, sig)
        out, err = proc.communicate(timeout=120)
        stopped = subprocess.CompletedProcess(args, proc.returncode, out, err)
        rerun = cli(*args)
        last = (err.strip().splitlines() or [""])[-1]
        cases.append({**case(f"{said} during ingest --workers {workers}", stopped, [last],
                             kept=rerun.returncode == 0 and done_by_source(build) == {"many": 12},
                             clear=f"stopped by {said}; rerun the same command to resume" in last, refuse=landed),
                      "signal_landed": landed, "rerun_exit": rerun.returncode})
    return cases


def bad_input_campaign(work: Path) -> list[dict]:
    """Each hostile case through the real CLI: exit code, the error it printed, did the run go on, verdict."""
    src = work / "bad"
    n_bad = bad_folder(src)
    sources = nifti_sources(work / "bad-sources.toml", src, name="bad")
    build = work / "bad-build"
    cases = []
    ingest = cli("ingest", "--build", str(build), "--sources", str(sources), "--no-progress")
    shown = cli("ingest", "--build", str(work / "bad-paths"), "--sources", str(sources), "--no-progress",
                "--with-paths")
    errors = [line.strip() for line in shown.stderr.splitlines() if line.strip().startswith("error [")]
    shared = ingest.stdout + ingest.stderr + "".join(
        cli("stats", "--build", str(build), *flag).stdout for flag in ([], ["--json"]))
    went_on = done_by_source(build) == {"bad": 1}
    cases.append({**case(f"one folder: {n_bad} damaged (non-UTF-8 name, all-NaN, constant, truncated, complex, "
                         "bad CRC, a patient-named file) + 1 good", ingest, errors, kept=went_on,
                         leak="Jane" in shared or "12345" in shared, clear=len(errors) == n_bad),
                  "went_on": went_on, "patient_name_in_shared_output": "Jane" in shared})

    typed = cli("ingest", "--build", str(work / "typed"), "--sources",
                str(nifti_sources(work / "sources.toml", src, options="label_suffix = 3\n")))
    cases.append(case("sources option label_suffix = 3", typed))
    for option in ("window = [nan, 400]", "window = [40, inf]", "spacing_mm = inf", "spacing_mm = 1e-9",
                   "min_side_px = 1000000", "midline_margin_mm = -5.0", "midline_mm = nan"):
        run = cli("ingest", "--build", str(work / "options"), "--sources",
                  str(nifti_sources(work / "sources.toml", src, options=option + "\n")))
        cases.append({**case(f"sources option {option}", run), "nothing_written": not (work / "options").exists()})
        shutil.rmtree(work / "options", ignore_errors=True)
    text = (work / "sources.toml").read_text().replace('modality = "MRI"', 'modality = "MIR"')
    (work / "sources.toml").write_text(text)
    for name, args in (("--modality MIR", ["--source", f"nifti:{src}", "--modality", "MIR"]),
                       ('modality = "MIR" in sources.toml', ["--sources", str(work / "sources.toml")])):
        cases.append(case(name, cli("ingest", "--build", str(work / "options"), *args)))
    latin = work / "latin1.toml"
    latin.write_bytes(f'[[source]]\nname = "caf\xe9"\nkind = "nifti"\npath = "{src}"\n'.encode("latin-1"))
    cases.append(case("a latin-1 sources.toml", cli("ingest", "--build", str(work / "options"), "--sources",
                                                      str(latin))))
    user_file = work / "notes.txt"
    user_file.write_text("mine\n")
    build_commands = [(["ingest"], ["--source", f"nifti:{src}"]), (["stats"], []), (["generate"], []),
                      (["release"], ["--out", str(work / "r")]), (["labelstudio", "start"], [])]
    for words, extra in build_commands:
        run = cli(*words, "--build", str(user_file), *extra)
        cases.append(case(f"{' '.join(words)} --build a file", run, kept=user_file.read_text() == "mine\n"))

    generated = cli("generate", "--build", str(build))
    cases.append(case("generate on the bad folder's build", generated, refuse=False))
    for flags in (["--concurrency", "0"], ["--concurrency", "-3"], ["--timeout", "-1"], ["--max-tokens", "0"]):
        run = cli("generate", "--build", str(build), "--drafter", "llm", *flags)
        cases.append(case(f"generate --drafter llm {' '.join(flags)}", run))

    project = work / "X"
    (project / "src").mkdir(parents=True)
    (project / "manifest.json").write_text('{"name":"app"}')
    (project / "src" / "main.js").write_text("work")
    rel = cli("release", "--build", str(build), "--out", str(project), "--include-unreviewed")
    cases.append(case("release --out a project folder with its own manifest.json", rel,
                      kept=(project / "src" / "main.js").is_file()))
    for folder in (".rel.tmp-my-backup", ".rel.old-2024"):
        (work / folder).mkdir()
        (work / folder / "keep.txt").write_text("mine")
    before = {name: tree(work / name) for name in (".rel.tmp-my-backup", ".rel.old-2024")}
    for attempt in ("a new", "a second (replacing)"):
        rel = cli("release", "--build", str(build), "--out", str(work / "rel"), "--include-unreviewed",
                  "--created", CREATED)
        cases.append(case(f"{attempt} release --out rel beside a user's .rel.tmp-my-backup/ and .rel.old-2024/", rel,
                          refuse=False, kept={name: tree(work / name) for name in before} == before))
    umask = os.umask(0)
    os.umask(umask)
    mode = (work / "rel").stat().st_mode & 0o777
    cases.append({"case": f"release root's mode under umask {umask:03o}", "exit": 0, "errors": [f"{mode:03o}"],
                  "verdict": [] if mode == 0o777 & ~umask else ["wrongly_accepted"]})
    swapped = work / "swapped-build"
    shutil.copytree(build, swapped)
    png = next((swapped / "images").rglob("*.png"))
    with Image.open(png) as im:
        picture = np.full(im.size[::-1], 200, np.uint8)
    picture[:8] = 0  # another picture of the same size: only the catalog's SHA-256 tells
    Image.fromarray(picture).save(png)
    rel = cli("release", "--build", str(swapped), "--out", str(work / "swapped-rel"), "--include-unreviewed")
    cases.append(case("release of a build whose PNG was replaced after ingest", rel,
                      clear="changed since ingest" in rel.stdout + rel.stderr,
                      leak=png.read_bytes() in tree(work / "swapped-rel").values()))
    (work / ".rel2.lock").write_text("mine")
    rel = cli("release", "--build", str(build), "--out", str(work / "rel2"), "--include-unreviewed")
    cases.append(case("release --out rel2 beside a user's file .rel2.lock", rel,
                      kept=(work / ".rel2.lock").read_text() == "mine"))

    out = work / "bad-release"
    cli("release", "--build", str(build), "--out", str(out), "--include-unreviewed", "--created", CREATED)
    cases.extend(export_cases(work, out))

    coco = work / "coco"
    shutil.copytree(resource_dir("sample") / "coco", coco)
    annotations = coco / "annotations" / "instances_demo.json"
    data = json.loads(annotations.read_text())
    data["annotations"][0]["segmentation"] = [[1e12, 10, 200, 10, 200, 150, 10, 150]]
    annotations.write_text(json.dumps(data))
    two = work / "two-sources.toml"
    two.write_text(nifti_sources(two, nifti_source(work / "good", 1), name="good").read_text()
                   + f'[[source]]\nname = "coco"\nkind = "coco"\npath = "{coco}"\n[source.options]\nsplit = "demo"\n')
    t0 = time.monotonic()
    run = cli("ingest", "--build", str(work / "coco-build"), "--sources", str(two), "--no-progress", "--workers", "2",
              timeout=300)
    stored = done_by_source(work / "coco-build")
    cases.append({**case("COCO polygon coordinate 1e12 with --workers 2 beside a good source", run,
                         kept=stored.get("good") == 1),
                  "seconds": round(time.monotonic() - t0, 1), "stored": stored})

    cases.extend(interrupt_cases(work))

    first = out / "VGMED_localization.jsonl"
    lines = first.read_text().splitlines()
    lines[0] = json.dumps({**json.loads(lines[0]), "answer": "changed"})
    first.write_text("\n".join(lines) + "\n")
    (out / "manifest.json").unlink()
    bypass = cli("validate", str(out))
    published = cli("validate", "--published", str(out))
    said = [(bypass.stdout.splitlines() or ["(nothing)"])[0], (published.stdout.splitlines() or ["(nothing)"])[0]]
    cases.append({**case("validate after editing an answer and deleting manifest.json", bypass, said,
                         clear=bypass.stdout.startswith("manifest.json") and published.returncode != 0,
                         leak=published.returncode == 0),
                  "exit_published": published.returncode})
    return cases


def planted_campaign(work: Path) -> dict:
    """Plant header values and a patient-named folder; search the release and every shared output."""
    src = work / "planted"
    shutil.copytree(resource_dir("sample") / "dicom", src / PATIENT_FOLDER)
    for path in (src / PATIENT_FOLDER).rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        for keyword, value in PLANTED.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    build, out = work / "planted-build", work / "planted-release"
    logs = [cli("ingest", "--build", str(build), "--source", f"dicom:{src}", "--no-progress"),
            cli("generate", "--build", str(build)),
            cli("release", "--build", str(build), "--out", str(out), "--include-unreviewed", "--created", CREATED),
            cli("validate", str(out)), cli("regions", "--build", str(build)), cli("drafts", "--build", str(build)),
            cli("stats", "--build", str(build)), cli("stats", "--build", str(build), "--json")]
    shared = "".join(p.stdout + p.stderr for p in logs).encode()
    shared += b"".join(p.read_bytes() + p.relative_to(out).as_posix().encode() for p in out.rglob("*") if p.is_file())
    needles = [*PLANTED.values(), PATIENT_FOLDER, "MRN4455"]
    found = {n: shared.count(n.encode()) for n in needles}
    records = sum(1 for _ in (out / "VGMED_localization.jsonl").open()) if out.is_dir() else 0
    return {"planted": len(needles), "found": sum(found.values()), "by_string": found, "release_records": records}


# --- LLM server faults, through real HTTP to the scripted server -------------------------------------

LLM_SERVER = Path(__file__).resolve().parents[1] / "tests" / "llm_server.py"
LLM_FLAGS = ["--drafter", "llm", "--model", "test-model", "--max-retries", "1", "--retry-backoff", "0.1"]


class LlmServer:
    """tests/llm_server.py as a separate process on ``port`` (0: any free port), serving ``script``."""

    def __init__(self, work: Path, script: dict, port: int = 0):
        path = work / f"llm-script-{time.monotonic_ns()}.json"
        path.write_text(json.dumps(script))
        self.proc = subprocess.Popen([sys.executable, str(LLM_SERVER), "--port", str(port), "--script", str(path)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("LISTENING"):
            raise SystemExit(f"the scripted LLM server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def requests(self) -> int:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=10) as reply:
            return json.loads(reply.read())["requests"]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


def draft_ids(build: Path) -> list[str]:
    return [json.loads(line)["id"] for line in cli("drafts", "--build", str(build)).stdout.splitlines()]


def failed_drafts(proc: subprocess.CompletedProcess) -> tuple[int, list[str]]:
    """The summary's count of drafts that failed, and the lines naming a failed draft ("<id>: llm: ...")."""
    counted = next((int(m[1]) for line in proc.stdout.splitlines() if line.startswith("generate:")
                    for m in [re.search(r"(\d+) errors", line)] if m), -1)
    named = [line.strip() for line in proc.stderr.splitlines() if ": llm: " in line]
    return counted, named


def llm_campaign(work: Path) -> list[dict]:
    """``generate --drafter llm`` against a server that fails in each way; each run is judged (a line per
    failed draft, exit 1), then rerun against a working server on the same port: the drafts must be those
    of a clean run, none lost, none twice."""
    work.mkdir()
    build = work / "ingested"
    cli("ingest", "--build", str(build), "--sources", str(nifti_sources(work / "s.toml", nifti_source(work, 1))),
        "--no-progress")
    good = LlmServer(work, {"default": {"kind": "auto"}})
    clean = work / "clean"
    shutil.copytree(build, clean)
    done = cli("generate", "--build", str(clean), *LLM_FLAGS, "--base-url", good.url)
    good.stop()
    if done.returncode != 0:
        raise SystemExit(f"clean LLM generate failed: {done.stderr[-2000:]}")
    expected = sorted(draft_ids(clean))
    faults = [
        ("answers after 3 s with --timeout 0.5", {"default": {"kind": "auto", "delay_ms": 3000}}, ["--timeout", "0.5"]),
        ("HTTP 500 on every request", {"default": {"kind": "status", "status": 500}}, []),
        ("garbage instead of JSON", {"default": {"kind": "text", "content": "{not json at all"}}, []),
        ("JSON cut off mid-reply", {"default": {"kind": "text", "content": '{"question": "What is'}}, []),
        ("killed after 2 replies (kill -9 mid-run)", {"default": {"kind": "auto"}, "latency_ms": 400},
         ["--concurrency", "1"]),
    ]
    cases = []
    for name, script, flags in faults:
        trial = work / f"trial-{len(cases)}"
        shutil.copytree(build, trial)
        server = LlmServer(work, script)
        args = ["generate", "--build", str(trial), *LLM_FLAGS, "--base-url", server.url, *flags]
        t0 = time.monotonic()
        if "killed" in name:
            proc = subprocess.Popen([sys.executable, "-m", "vgmed_build.cli", *args], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            while server.requests() < 2 and proc.poll() is None:
                time.sleep(0.05)
            server.stop()
            out, err = proc.communicate(timeout=300)
            run = subprocess.CompletedProcess(args, proc.returncode, out, err)
        else:
            run = cli(*args, timeout=300)
            server.stop()
        seconds = time.monotonic() - t0
        counted, named = failed_drafts(run)
        healed = LlmServer(work, {"default": {"kind": "auto"}}, port=server.port)
        rerun = cli(*args, timeout=300)
        healed.stop()
        got = draft_ids(trial)
        cases.append({**case(f"LLM server {name}", run, named[:1] or None, clear=counted > 0 and len(named) == counted,
                             kept=rerun.returncode == 0 and sorted(got) == expected),
                      "seconds": round(seconds, 1), "drafts_failed": counted, "lines_naming_a_failed_draft": len(named),
                      "rerun_exit": rerun.returncode, "drafts_after_rerun": f"{len(got)} / {len(expected)}",
                      "duplicates": len(got) - len(set(got))})
    return cases


# --- a full disk, for real: a small tmpfs in a private mount namespace ------------------------------

def fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` to the last byte, then free ``leave`` bytes (room for part of a stage's output)."""
    with open(disk / "filler", "wb", buffering=0) as fh:
        for chunk in (65536, 1):
            try:
                while True:
                    fh.write(b"\0" * chunk)
            except OSError:
                pass
        fh.truncate(max(0, fh.tell() - leave))


def disk_trial(spec: dict) -> dict:
    """Inside the namespace, ``spec["disk"]`` a fresh tmpfs: copy the stage's starting state onto it, fill
    it (but ``leave`` bytes), run the stage (its ``{disk}`` arguments), check the ``keep`` paths did not
    change, free the space, rerun, and copy ``collect`` out for the caller to compare with a clean run."""
    disk = Path(spec["disk"])
    for src, dst in spec["copy"]:
        shutil.copytree(src, disk / dst) if Path(src).is_dir() else shutil.copy(src, disk / dst)
    args = [a.replace("{disk}", str(disk)) for a in spec["args"]]
    kept_before = {k: state(disk / k) for k in spec["keep"]}
    fill(disk, spec["leave"])
    run = cli(*args)
    kept = {k: state(disk / k) for k in spec["keep"]}
    (disk / "filler").unlink()  # first: SQLite needs room to open a catalog, even to check it
    catalog = disk / "b" / "catalog.sqlite"
    integrity = sqlite3.connect(catalog).execute("PRAGMA integrity_check").fetchone()[0] if catalog.exists() else "-"
    rerun = cli(*args)
    for rel_path, out in spec["collect"]:
        if (disk / rel_path).is_dir():
            shutil.copytree(disk / rel_path, out)
        elif (disk / rel_path).exists():
            shutil.copy(disk / rel_path, out)
    return {"exit": run.returncode, "stdout": run.stdout, "stderr": run.stderr, "kept": kept == kept_before,
            "integrity": integrity, "rerun_exit": rerun.returncode, "rerun_stderr": rerun.stderr[-1000:],
            "done": done_by_source(disk / "b"), "drafts": sorted(draft_ids(disk / "b")) if catalog.exists() else []}


def in_namespace(work: Path, spec: dict, env: dict | None = None) -> dict:
    """``disk_trial(spec)`` in a private mount namespace on a fresh tmpfs with room for the starting state
    and the stage's output (``{"failed": why}`` when that cannot run)."""
    disk = work / f"disk-{time.monotonic_ns()}"
    disk.mkdir()
    spec_path = disk.with_suffix(".json")
    spec_path.write_text(json.dumps({**spec, "disk": str(disk)}))
    size = sum(f.stat().st_size for src, _ in spec["copy"]
               for f in ([Path(src)] if Path(src).is_file() else Path(src).rglob("*")) if f.is_file())
    script = 'mount -t tmpfs -o size="$1" tmpfs "$2" && exec "$3" "$4" --disk-trial "$5"'
    got = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(size + (8 << 20)), str(disk),
                          sys.executable, str(Path(__file__).resolve()), str(spec_path)],
                         capture_output=True, text=True, timeout=600, env=env)
    return json.loads(got.stdout) if got.returncode == 0 else {"failed": got.stderr[-500:]}


def full_disk_campaign(work: Path) -> list[dict]:
    """Each stage with its output on a full tmpfs (ingest also with room for only part of its PNGs)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        return [{"case": "a full disk", "skipped": "unshare -rm (a private mount namespace) is not allowed here",
                 "verdict": []}]
    work.mkdir()
    sources = nifti_sources(work / "s.toml", nifti_source(work, 4))
    clean, out = work / "clean", work / "clean-out" / "rel"  # named as on the disk: vqa-json names its folder
    for stage in STAGES:
        cli(*stage_args(stage, clean, sources, out))
    vqa = ["export", "{disk}/rel", "--format", "vqa-json", "--out", "{disk}/rel.json"]
    cli(*[a.replace("{disk}", str(out.parent)) for a in vqa])
    ingested = work / "ingested"
    cli(*stage_args("ingest", ingested, sources, out))
    ingest = ["ingest", "--build", "{disk}/b", "--sources", str(sources), "--no-progress", "--workers", "2"]
    release = ["release", "--build", "{disk}/b", "--out", "{disk}/rel", "--include-unreviewed", "--created", CREATED]
    whole = {"done": {"x": 4}, "drafts": sorted(draft_ids(clean))}  # what each rerun must have stored
    clean_state = {"rel": tree(out), "rel.json": (out.parent / "rel.json").read_bytes()}
    trials = [  # (case, bytes left free, starting state, args, paths that must not change, what to compare)
        ("ingest into a new build", 0, [], ingest, []),
        ("ingest with room for part of its PNGs", 150_000, [], ingest, []),
        ("generate", 0, [(ingested, "b")], ["generate", "--build", "{disk}/b"], ["b/images"]),
        ("generate with room for part of its drafts", 48_000, [(ingested, "b")], ["generate", "--build", "{disk}/b"],
         ["b/images"]),
        ("release replacing an earlier release", 0, [(clean, "b"), (out, "rel")], release, ["rel"]),
        ("release replacing an earlier release, room for part of it", 100_000, [(clean, "b"), (out, "rel")],
         release, ["rel"]),
        ("export vqa-json replacing an earlier export", 0, [(out, "rel"), (out.parent / "rel.json", "rel.json")],
         vqa, ["rel.json"]),
    ]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from labelstudio_mimic import Mimic

    mimic = Mimic()  # review pull on a full disk: a build pushed to the tests' Label Studio stand-in
    env = {**os.environ, "LABEL_STUDIO_API_KEY": "mimic-token-0123456789"}
    env.pop("LABEL_STUDIO_URL", None)
    pushed = work / "pushed"
    shutil.copytree(clean, pushed)
    cli("review", "push", "--no-progress", "--build", str(pushed), "--url", mimic.url, "--document-root", str(pushed),
        env=env)
    trials.append(("review pull", 0, [(pushed, "b")], ["review", "pull", "--no-progress", "--build", "{disk}/b",
                                                      "--url", mimic.url, "--document-root", "{disk}/b"], ["b/images"]))
    cases = []
    for name, leave, copy, args, keep in trials:
        got_dir = work / f"got-{len(cases)}"
        got_dir.mkdir()
        result = in_namespace(work, {"copy": [[str(a), b] for a, b in copy], "args": args, "keep": keep,
                                     "leave": leave, "collect": [[k, str(got_dir / k)] for k in keep if "/" not in k]},
                              env)
        if "failed" in result:
            cases.append({"case": f"full disk: {name}", "skipped": result["failed"], "verdict": []})
            continue
        run = subprocess.CompletedProcess(args, result["exit"], result["stdout"], result["stderr"])
        said = [line for line in run.stderr.splitlines() if line.startswith("error:")]
        same = all(state(got_dir / k) == clean_state[k] for k in keep if "/" not in k)
        stored = (result["done"] == whole["done"] and (args[0] == "ingest" or result["drafts"] == whole["drafts"])
                  if args[0] in ("ingest", "generate") else True)
        kept = result["kept"] and result["integrity"] in ("ok", "-") and result["rerun_exit"] == 0 and same and stored
        full = ("the disk is full", "No space left on device")
        cases.append({**case(f"full disk: {name}", run, said[:1] or None,
                             clear=len(said) == 1 and any(f in said[0] for f in full), kept=kept),
                      "left_free_bytes": leave, "catalog_integrity": result["integrity"], "unchanged": result["kept"],
                      "rerun_exit": result["rerun_exit"], "rerun_stored_everything": stored,
                      "rerun_identical_to_clean": same})
    mimic.stop()
    return cases


# --- Label Studio failing: push and pull against tests/labelstudio_mimic.py -------------------------

def review_state(build: Path) -> list:
    """What review holds in a build's catalog (tasks, events, problems), to compare before and after."""
    with sqlite3.connect(build / "catalog.sqlite") as conn:
        return [conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
                for t in ("review_tasks", "review_events", "review_problems")]


def labelstudio_campaign(work: Path) -> list[dict]:
    """`review push` / `review pull` through the real SDK client against a small local server answering
    Label Studio's API (tests/labelstudio_mimic.py, as tests/test_review_faults.py uses it; starting the
    real server per failure costs a minute) that fails the way a server or network does: a 500 creating
    the project, the connection closed during the import, an export cut short, closed, truncated or
    garbage. Each must stop with one line naming the server and the step (exit 2), store nothing, and
    the rerun once the server is healed must complete with one task per draft."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from labelstudio_mimic import Mimic

    work.mkdir()
    built = work / "built"
    cli("ingest", "--build", str(built), "--sources", str(nifti_sources(work / "s.toml", nifti_source(work, 1))),
        "--no-progress")
    cli("generate", "--build", str(built))
    drafts = sorted(draft_ids(built))
    env = {**os.environ, "LABEL_STUDIO_API_KEY": "mimic-token-0123456789"}
    env.pop("LABEL_STUDIO_URL", None)
    faults = [("push", "create_project", "500", "creating the review project"),
              ("push", "import", "close", "importing tasks"),
              *[("pull", "export", kind, "exporting the review project")
                for kind in ("cut", "close", "truncated", "garbage")]]
    cases = []
    for action, endpoint, kind, step in faults:
        build = work / f"trial-{len(cases)}"
        shutil.copytree(built, build)
        mimic = Mimic()
        review = ["--no-progress", "--build", str(build), "--url", mimic.url, "--document-root", str(build)]
        try:
            if action == "pull":
                cli("review", "push", *review, env=env)
            before = review_state(build)
            mimic.fail(endpoint, kind)
            run = cli("review", action, *review, *(["--batch-size", "4"] if action == "push" else []), env=env)
            unchanged = review_state(build) == before
            mimic.heal()
            rerun = cli("review", action, *review, env=env)
            on_server = sorted(t["data"]["draft_id"] for t in mimic.state.tasks.values())
        finally:
            mimic.stop()
        said = [line for line in run.stderr.splitlines() if line.startswith("error:")]
        cases.append({**case(f"Label Studio {action}: {endpoint} answers {kind}", run, said[:1] or None,
                             clear=len(said) == 1 and mimic.url in said[0] and step in said[0],
                             kept=unchanged and rerun.returncode == 0 and on_server == drafts),
                      "catalog_unchanged": unchanged, "rerun_exit": rerun.returncode,
                      "tasks_after_rerun": f"{len(on_server)} for {len(drafts)} drafts"})
    return cases


def summary(results: dict) -> dict:
    """The issue-30 counts: bad-input, LLM and full-disk cases by verdict, plus kill trials that lost data."""
    cases = results["bad_inputs"] + results["llm"] + results["full_disk"] + results["labelstudio"]
    kill_loss = sum(r["lost"] + r["corrupt_png"] + (r["kills"] - r["releases_identical"])
                    + (r["kills"] - r["exports_identical"]) for r in results["kills"].values())
    return {
        "bad_input_cases": len(results["bad_inputs"]),
        "llm_cases": len(results["llm"]),
        "full_disk_cases": sum("skipped" not in c for c in results["full_disk"]),
        "labelstudio_cases": len(results["labelstudio"]),
        "data_loss": sum("data_loss" in c["verdict"] for c in cases) + kill_loss,
        "tracebacks": sum("traceback" in c["verdict"] for c in cases),
        "wrongly_accepted": sum("wrongly_accepted" in c["verdict"] for c in cases),
        "unclear": sum("unclear" in c["verdict"] for c in cases),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs per stage before the completing rerun")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages to kill")
    parser.add_argument("--cases", type=int, default=8, help="NIfTI cases in the kill campaign's source")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the kill moments")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here too")
    parser.add_argument("--quick", action="store_true",
                        help="a short run: 2 kills per stage on 2 cases (overrides --kills and --cases)")
    parser.add_argument("--disk-trial", type=Path, help=argparse.SUPPRESS)  # the campaign's own use, in a namespace
    args = parser.parse_args()
    if args.disk_trial:
        print(json.dumps(disk_trial(json.loads(args.disk_trial.read_text()))))
        return 0
    if args.quick:
        args.kills, args.cases = 2, 2
    with tempfile.TemporaryDirectory(prefix="vgmed-faults-") as tmp:
        work = Path(tmp)
        results = {
            "kills": kill_campaign(work / "k", args.stages.split(","), args.kills, random.Random(args.seed),
                                   args.cases),
            "bad_inputs": bad_input_campaign(work),
            "planted_identifiers": planted_campaign(work),
            "llm": llm_campaign(work / "llm"),
            "full_disk": full_disk_campaign(work / "disk"),
            "labelstudio": labelstudio_campaign(work / "labelstudio"),
        }
    results["summary"] = summary(results)
    text = json.dumps(results, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    kills_ok = all(
        r["reruns_ok"] == r["releases_identical"] == r["kills"]
        and r["duplicates"] == r["lost"] == r["extra"] == r["corrupt_png"] == 0
        for r in results["kills"].values()
    )
    faults = results["summary"]
    bad_ok = faults["data_loss"] == faults["tracebacks"] == faults["wrongly_accepted"] == faults["unclear"] == 0
    return 0 if kills_ok and bad_ok and results["planted_identifiers"]["found"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
