"""Fault and bad-input campaign (issue 12): kill stages at random moments, feed hostile inputs, plant
identifiers, and count what went wrong. Any user can rerun it; it needs only the package (offline).

What it measures, on copies of the bundled sample:

* kills: each stage (ingest with 2 workers, generate, release) is started N times from its starting
  state and SIGKILLed at a random moment of its clean run time, then rerun to completion and the
  later stages run; each result is compared with a clean build: duplicates, lost and extra regions /
  drafts, corrupt PNGs, temp files left, and whether the release is byte-identical to the clean one;
* bad inputs: each hostile case is run through the real command line; its exit code and the error
  line it printed are reported, and whether the run went on (the good items were still ingested);
* planted identifiers: DICOM header values and a patient-named folder planted in the sample; every
  byte and file name of the release and every shared output (regions, drafts, stats, logs) is searched.

    python benchmarks/fault_campaign.py --kills 5 --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
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


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vgmed_build.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


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


def stage_args(stage: str, build: Path, source: Path, out: Path) -> list[str]:
    if stage == "ingest":
        return ["ingest", "--build", str(build), "--source", f"nifti:{source}", "--modality", "MRI", "--no-progress",
                "--workers", "2"]
    if stage == "generate":
        return ["generate", "--build", str(build)]
    return ["release", "--build", str(build), "--out", str(out), "--include-unreviewed", "--created", CREATED]


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
    release = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} \
        if out.is_dir() else {}
    return {
        "regions": regions,
        "drafts": [(d["id"], d["question"], d["answer"]) for d in drafts],
        "corrupt_png": corrupt,
        "temp_files": len(list(build.rglob("*.tmp"))) + len(list(out.parent.glob(f".{out.name}.*"))),
        "release": release,
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
        "release_identical": got["release"] == clean["release"],
    }


STAGES = ("ingest", "generate", "release")


def kill_campaign(work: Path, stages: list[str], kills: int, rng: random.Random, n_cases: int) -> dict:
    """Per stage: ``kills`` trials, each from the stage's starting state: start, SIGKILL at a random
    moment of the clean run time, rerun to completion, compare with the clean build. A trial whose
    process had already finished does not count as a kill and is retried (at most 3x ``kills``)."""
    source = nifti_source(work / "src", n_cases)
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
            moment = rng.uniform(0.05, 0.95) * seconds[stage]
            proc = start(*stage_args(stage, build, source, out))
            time.sleep(moment)
            if proc.poll() is not None:
                shutil.rmtree(build)
                shutil.rmtree(out, ignore_errors=True)
                continue
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            rerun = cli(*stage_args(stage, build, source, out))
            for later in STAGES[STAGES.index(stage) + 1:]:  # so the whole build can be compared
                cli(*stage_args(later, build, source, out))
            trials.append({"moment_s": round(moment, 2), "rerun_exit": rerun.returncode,
                           **compare(clean, snapshot(build, out))})
            shutil.rmtree(build)
            shutil.rmtree(out, ignore_errors=True)
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
            "releases_identical": sum(t["release_identical"] for t in trials),
        }
    return results


def first_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if "error" in line.lower()]
    return lines[0][:300] if lines else "(no error line)"


def bad_input_campaign(work: Path) -> list[dict]:
    """Each hostile case through the real CLI: exit code, the error it printed, did the run go on."""
    sample = resource_dir("sample") / "mni152"
    image = next((sample / "imagesTr").iterdir())
    label = next((sample / "labelsTr").iterdir())
    import nibabel as nib

    src = work / "bad"
    src.mkdir()
    shutil.copy(image, src / "good.nii.gz")
    shutil.copy(label, src / "good_seg.nii.gz")
    bad_name = os.fsdecode(b"caf\xe9")
    shutil.copy(image, src / f"{bad_name}.nii.gz")
    shutil.copy(label, src / f"{bad_name}_seg.nii.gz")
    ref = nib.load(image)
    for case, data in (("all_nan", np.full(ref.shape, np.nan, np.float32)),
                       ("constant", np.full(ref.shape, 7.0, np.float32))):
        nib.save(nib.Nifti1Image(data, ref.affine), src / f"{case}.nii.gz")
        shutil.copy(label, src / f"{case}_seg.nii.gz")
    (src / "truncated.nii.gz").write_bytes(image.read_bytes()[:2000])
    shutil.copy(label, src / "truncated_seg.nii.gz")
    nib.save(nib.Nifti1Image(np.asanyarray(ref.dataobj).astype(np.complex64), ref.affine), src / "complex.nii.gz")
    shutil.copy(label, src / "complex_seg.nii.gz")
    damaged = bytearray(image.read_bytes())
    damaged[-8] ^= 0xFF  # the gzip CRC-32
    (src / "crc.nii.gz").write_bytes(bytes(damaged))
    shutil.copy(label, src / "crc_seg.nii.gz")
    build = work / "bad-build"
    cases = []
    ingest = cli("ingest", "--build", str(build), "--source", f"nifti:{src}", "--modality", "MRI", "--no-progress",
                 "--with-paths")
    errors = [line.strip() for line in ingest.stderr.splitlines() if line.strip().startswith("error [")]
    cases.append({"case": "one folder: non-UTF-8 name, all-NaN, constant, truncated, complex, bad CRC + 1 good",
                  "exit": ingest.returncode, "went_on": "1 ingested" in ingest.stdout, "errors": errors})

    sources = work / "sources.toml"
    sources.write_text(f'[[source]]\nname = "x"\nkind = "nifti"\npath = "{src}"\n[source.options]\n'
                       'label_suffix = 3\n', encoding="utf-8")
    typed = cli("ingest", "--build", str(work / "typed"), "--sources", str(sources))
    cases.append({"case": "sources option label_suffix = 3", "exit": typed.returncode, "errors": [first_error(typed)]})
    for option in ("window = [nan, 400]", "spacing_mm = inf", "min_side_px = 1000000", "midline_margin_mm = -5.0",
                   "midline_mm = nan"):
        sources.write_text(f'[[source]]\nname = "x"\nkind = "nifti"\npath = "{src}"\n[source.options]\n{option}\n',
                           encoding="utf-8")
        run = cli("ingest", "--build", str(work / "options"), "--sources", str(sources))
        cases.append({"case": f"sources option {option}", "exit": run.returncode, "errors": [first_error(run)],
                      "nothing_written": not (work / "options").exists()})
    modality = cli("ingest", "--build", str(work / "options"), "--source", f"nifti:{src}", "--modality", "MIR")
    cases.append({"case": "--modality MIR", "exit": modality.returncode, "errors": [first_error(modality)]})
    user_file = work / "notes.txt"
    user_file.write_text("mine\n")
    build_commands = [(["ingest"], ["--source", f"nifti:{src}"]), (["stats"], []), (["generate"], []),
                      (["release"], ["--out", str(work / "r")]), (["labelstudio", "start"], [])]
    for words, extra in build_commands:
        run = cli(*words, "--build", str(user_file), *extra)
        cases.append({"case": f"{' '.join(words)} --build a file", "exit": run.returncode, "errors": [first_error(run)],
                      "kept": user_file.read_text() == "mine\n"})

    project = work / "X"
    (project / "src").mkdir(parents=True)
    (project / "manifest.json").write_text('{"name":"app"}')
    (project / "src" / "main.js").write_text("work")
    cli("generate", "--build", str(build))
    rel = cli("release", "--build", str(build), "--out", str(project), "--include-unreviewed")
    cases.append({"case": "release --out a project folder with its own manifest.json", "exit": rel.returncode,
                  "kept": (project / "src" / "main.js").is_file(), "errors": [first_error(rel)]})

    out = work / "bad-release"
    cli("release", "--build", str(build), "--out", str(out), "--include-unreviewed", "--created", CREATED)
    first = out / "VGMED_localization.jsonl"
    lines = first.read_text().splitlines()
    record = json.loads(lines[0])
    lines[0] = json.dumps({**record, "answer": "changed"})
    first.write_text("\n".join(lines) + "\n")
    (out / "manifest.json").unlink()
    bypass = cli("validate", str(out))
    published = cli("validate", "--published", str(out))
    cases.append({"case": "validate after editing an answer and deleting manifest.json",
                  "exit": bypass.returncode, "exit_published": published.returncode,
                  "errors": [bypass.stdout.splitlines()[0], published.stdout.splitlines()[0]]})
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs per stage before the completing rerun")
    parser.add_argument("--stages", default="ingest,generate,release", help="comma-separated stages to kill")
    parser.add_argument("--cases", type=int, default=8, help="NIfTI cases in the kill campaign's source")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the kill moments")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vgmed-faults-") as tmp:
        work = Path(tmp)
        results = {
            "kills": kill_campaign(work / "k", args.stages.split(","), args.kills, random.Random(args.seed),
                                   args.cases),
            "bad_inputs": bad_input_campaign(work),
            "planted_identifiers": planted_campaign(work),
        }
    text = json.dumps(results, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    kills_ok = all(
        r["reruns_ok"] == r["releases_identical"] == r["kills"]
        and r["duplicates"] == r["lost"] == r["extra"] == r["corrupt_png"] == 0
        for r in results["kills"].values()
    )
    return 0 if kills_ok and results["planted_identifiers"]["found"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
