"""`vgmed-eval reproduce`: the paper's pipeline for one model in one command, beside the published figures.

Steps, each the evaluator's own command run with the same options a user would give it (so a step
behaves, resumes and scales exactly as that command does):

1. ``grounding`` on the VGMED release and its natural-image control (``--control-release``, else the
   release's own ``COCO_*.jsonl`` when it holds them, as the published hub copy does) -> ``OUT/grounding``;
2. ``heads``: the knockout layer and top-k heads from that run -> ``OUT/heads.json``;
3. per ``--benchmark NAME=DATA``: ``vqa --vgrefine HEADS --compare`` (baseline and VGRefine on the same
   questions, paired tests) -> ``OUT/vqa/NAME``; HEADS = ``OUT/heads.json`` (measured), or under
   ``--protocol published`` the heads the authors published for the compared model (``--heads``);
   without heads, the baseline only;
4. ``OUT/report.md`` and ``OUT/report.json``: measured figures beside the published ones, each
   published figure with its source.

Resumable: ``OUT/steps.json`` records each finished step with its exact command line; a rerun skips
the steps whose command line is unchanged and whose outputs are still there (a VQA step that stopped
half way resumes at the next unanswered question, as ``vqa`` does). A failed step is recorded and
reported; the steps that do not depend on it still run. Under ``torchrun`` / ``accelerate launch``
the grounding and VQA steps split their work over the ranks as those commands do; rank 0 alone
writes the bookkeeping and the report.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vgmed_build import commands
from vgmed_build.release_format import CONTROL_FILES, resolve_image
from vgmed_eval import __version__
from vgmed_eval.distributed import SINGLE, World
from vgmed_eval.leakage import check
from vgmed_eval.protocol import PUBLISHED_HEADS
from vgmed_eval.published import (
    COLUMNS,
    DECODING,
    HUATUO_README,
    PAPER,
    POPULATION_NOTES,
    PUBLISHED_FIGURES,
    figure,
    published_model,
)
from vgmed_eval.vqa.benchmarks import BENCHMARKS, BenchmarkError

log = logging.getLogger(__name__)

STEP_COMMANDS = ["vgmed_eval.cli.grounding", "vgmed_eval.cli.heads", "vgmed_eval.cli.vqa"]


@dataclass
class Step:
    name: str
    argv: list[str]
    outputs: list[Path]  # all present = the step's results exist
    status: Literal["pending", "done", "skipped", "failed", "not run"] = "pending"  # skipped: already done
    message: str = ""
    seconds: float | None = None

    def record(self) -> dict:
        return {"argv": self.argv, "status": self.status, "message": self.message, "seconds": self.seconds}


@dataclass
class Options:
    """What a reproduction needs: the model, the data, and the settings passed on to every step."""

    model: str
    vgmed: Path
    out: Path
    benchmarks: dict[str, Path] = field(default_factory=dict)
    control: Path | None = None
    images: Path | None = None  # pictures outside the release (a published download): grounding, vgmed-* VQA
    device: str | None = None
    dtype: str = "auto"
    batch_size: int = 8
    limit: int | None = None
    top_k: int = 20
    max_new_tokens: int = 16
    bootstrap: int = 1000
    chat_template: Path | None = None
    internvl_grid: str | None = None  # InternVL's metric grid for grounding and VQA (None: the command's default)
    published_as: str | None = None
    protocol: str = "vgmed"
    heads: str | None = None  # "published" | "measured"; None: published under --protocol published when known
    heads_split: str = "all"  # the questions the measured heads are chosen on (heads --split)
    allow_tuning_on_test: bool = False  # run VQA on a benchmark that shares images with the heads' questions


HEADS_CHOICES = ("published", "measured")


def heads_key(model: str | None) -> str | None:
    """The PUBLISHED_HEADS entry of a published model name (HuatuoGPT-Vision-7B -> huatuogpt-vision-7b)."""
    return model.lower() if model and model.lower() in PUBLISHED_HEADS else None


def vgrefine_heads(o: Options) -> tuple[str, str]:
    """(which heads, the vqa --vgrefine argument): the published ones of the compared model, or measured."""
    key = heads_key(o.published_as or published_model(o.model))
    choice = o.heads or ("published" if o.protocol == "published" and key else "measured")
    if choice == "published":
        if key is None:
            raise ValueError(f"--heads published: no published heads for {o.published_as or o.model}; the authors "
                             f"published heads for {', '.join(PUBLISHED_HEADS)} (name the model with --published-as)")
        return choice, f"published:{key}"
    return choice, str(o.out / "heads.json")


def _common(o: Options) -> list[str]:
    argv = ["--model", o.model, "--dtype", o.dtype, "--batch-size", str(o.batch_size)]
    argv += ["--device", o.device] if o.device else []
    argv += ["--limit", str(o.limit)] if o.limit is not None else []
    argv += ["--chat-template", str(o.chat_template)] if o.chat_template else []
    argv += ["--internvl-grid", o.internvl_grid] if o.internvl_grid else []
    return argv + ["--protocol", o.protocol]


def control_release(o: Options) -> Path | None:
    """``--control-release``, else the release itself when it holds the COCO control files (the hub layout)."""
    if o.control is not None:
        return o.control
    has_coco = any((o.vgmed / name).is_file() for names in CONTROL_FILES.values() for name in names)
    return o.vgmed if has_coco else None


def plan_steps(o: Options) -> list[Step]:
    """The steps of a reproduction, in order, as command lines of the evaluator's commands."""
    g, heads = o.out / "grounding", o.out / "heads.json"
    argv = ["grounding", "--release", str(o.vgmed), "--out", str(g), "--bootstrap", str(o.bootstrap),
            "--no-progress", *_common(o)]
    outputs = [g / "summary.json", g / "per_head.parquet"]
    argv += ["--images", str(o.images)] if o.images else []
    control = control_release(o)
    if control is not None:
        argv += ["--control-release", str(control)]
        outputs.append(g / "control" / "summary.json")
    steps = [Step("grounding", argv, outputs),
             Step("heads", ["heads", "--results", str(g), "--top-k", str(o.top_k), "--out", str(heads),
                                   "--protocol", o.protocol, "--split", o.heads_split], [heads])]
    _, refine = vgrefine_heads(o)
    for name, data in o.benchmarks.items():
        out = o.out / "vqa" / name
        images = ["--images", str(o.images)] if o.images and BENCHMARKS.get(name).takes_images else []
        steps.append(Step(f"vqa {name}", ["vqa", "--benchmark", name, "--data", str(data), *images, "--out",
                                          str(out), "--max-new-tokens", str(o.max_new_tokens), "--bootstrap",
                                          str(o.bootstrap), *_common(o), "--vgrefine", refine, "--compare"],
                          [out / "results.json"]))
    return steps


def tuning_overlap(o: Options, name: str) -> str | None:
    """Why the VQA step on benchmark ``name`` would report on images its measured knockout layer and heads
    were chosen on (identical or near-identical pictures, :mod:`vgmed_eval.leakage`), or None."""
    heads = _load_json(o.out / "heads.json")
    if vgrefine_heads(o)[0] != "measured" or not heads:
        return None
    selected = heads.get("selected_on") or {}
    root = Path(selected.get("release") or o.vgmed)
    try:
        paths = [resolve_image(rel, root, o.images) for rel in selected.get("images", [])]
        found = check(root, {name: o.benchmarks[name]}, images=o.images,
                      release_paths=[p for p in paths if p.is_file()])["benchmarks"][name]
    except (BenchmarkError, ValueError, OSError):  # the step itself reports a benchmark it cannot read
        return None
    if not found["identical"] and not found["near"]:
        return None
    example = found["matches"][0]
    return (f"the knockout layer and heads were chosen (heads --split {selected.get('split', 'all')}) on "
            f"{found['identical'] + found['near']} release image(s) that are also in {name} ({found['identical']} "
            f"identical, {found['near']} near-identical; e.g. {example['release']} ~ {example['benchmark']}): "
            "VGRefine would be tuned on the benchmark it is reported on. Choose the heads elsewhere "
            "(--heads-split dev or control, after `vgmed-eval leakage --write-exclusions` and grounding --exclude), "
            "or pass --allow-tuning-on-test")


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def run_steps(o: Options, steps: list[Step], world: World = SINGLE) -> None:
    """Run what is not done yet; ``OUT/steps.json`` is rewritten (by rank 0) after every step.

    Under a launcher every rank runs every step: grounding and VQA split their work themselves, and
    every rank picks the same heads from the merged files (``heads`` replaces its file atomically)."""
    record_path = o.out / "steps.json"
    done = _load_json(record_path).get("steps", {})
    parser = commands.build_parser("vgmed-eval", "", __version__, (), STEP_COMMANDS)
    for step in steps:
        previous = done.get(step.name, {})
        if previous.get("status") in ("done", "skipped") and previous.get("argv") == step.argv \
                and all(p.exists() for p in step.outputs):
            step.status, step.seconds = "skipped", previous.get("seconds")
            log.info("%s: already done, skipped", step.name)
            continue
        if step.name.startswith("vqa") and vgrefine_heads(o)[0] == "measured" and not (o.out / "heads.json").exists():
            step.argv = step.argv[: step.argv.index("--vgrefine")]  # no heads: the baseline only
            step.message = "no heads (grounding or heads failed): baseline only"
        if step.name == "heads" and not all(p.exists() for p in steps[0].outputs):
            step.status, step.message = "not run", "grounding did not finish"
            continue
        tuned = tuning_overlap(o, step.name.removeprefix("vqa ")) if step.name.startswith("vqa") else None
        if tuned and not o.allow_tuning_on_test:
            step.status, step.message = "failed", tuned
            log.error("%s refused: %s", step.name, tuned)
            done[step.name] = step.record()
            continue
        if tuned:
            step.message = f"allowed by --allow-tuning-on-test: {tuned}"
        log.info("%s: vgmed-eval %s", step.name, " ".join(step.argv))
        started = time.perf_counter()
        with commands.failures() as heard:
            try:
                args = parser.parse_args(step.argv)
                rc = args.func(args)
                failure = "" if rc == commands.EXIT_OK else (heard[-1] if heard else f"exit code {rc}")
            except SystemExit as exc:  # argparse refused the step's command line (it printed why)
                failure = f"exit code {exc.code}"
            except Exception as exc:  # one failing step never takes the others down
                log.exception("%s failed", step.name)
                failure = f"{type(exc).__name__}: {exc}"
        step.seconds = round(time.perf_counter() - started, 3)
        missing = [str(p) for p in step.outputs if not p.exists()]
        if not failure and missing:
            failure = f"outputs missing: {', '.join(missing)}"
        step.status = "failed" if failure else "done"
        step.message = "; ".join(filter(None, [step.message, failure]))
        if failure:
            log.error("%s failed: %s", step.name, failure)
        done[step.name] = step.record()
        if world.main:
            record_path.write_text(json.dumps({"model": o.model, "steps": done}, indent=2) + "\n",
                                   encoding="utf-8")


# ------------------------------------------------------------------------------------------- report
def _grounding_summary(path: Path) -> dict | None:
    s = _load_json(path)
    if not s:
        return None
    layer = s.get("most_sensitive_layer")
    ratio = s.get("overall", {}).get("attention_ratio", {}).get(str(layer), {}) if layer is not None else {}
    return {"n_questions": s.get("n_questions"), "n_ok": s.get("n_ok"), "n_errors": s.get("n_errors"),
            "most_sensitive_layer": layer, "attention_ratio": ratio, "seconds": s.get("seconds")}


def _pct(x) -> float | None:
    return None if x is None else round(100.0 * float(x), 2)


def _configuration(r: dict, heads: str) -> str | None:
    """What the VGRefine column ran with: whose heads, knockout layer(s), how many heads, the triage and the
    decoding (from the step's own results.json)."""
    v, d = r.get("vgrefine"), r.get("decoding") or {}
    decoding = f"greedy, {d.get('max_new_tokens')} token(s) at most, at least {d.get('min_new_tokens', 0)}"
    if not v:
        return f"baseline only; {decoding}" if r else None
    layers = ", ".join(str(x) for x in v.get("knockout_layers", []))
    return (f"{heads} heads: knockout layer {layers}, {len(v.get('heads', []))} heads, percentile "
            f"{v.get('percentile'):g}, knockout {v.get('mode')}; {decoding}")


def _vqa_summary(name: str, path: Path, published_as: str | None, heads: str) -> dict:
    r = _load_json(path)
    systems = r.get("systems", {})
    counts = r.get("counts") or {}
    row: dict = {"benchmark": name, "column": COLUMNS.get(name), "n": r.get("n_questions"),
                 "population": (r.get("population") or {}).get("name"), "metric": r.get("metric"),
                 "configuration": _configuration(r, heads),
                 "counts": {"loaded": counts.get("loaded"), "scored": counts.get("scored"),
                            "failed": counts.get("failed"), "skipped": {
                                k: (r.get("population") or {}).get(k) for k in ("skipped_open", "skipped_no_options")}},
                 "copy_notes": r.get("load_notes") or [],
                 "baseline": _pct(systems.get("baseline", {}).get("overall", {}).get("accuracy")),
                 "vgrefine": _pct(systems.get("vgrefine", {}).get("overall", {}).get("accuracy"))}
    comp = r.get("comparison") or {}
    if comp.get("n"):
        boot, mcn = comp["bootstrap"], comp["mcnemar"]
        row["paired"] = {"n": comp["n"], "diff_score": round(boot["diff"], 4),
                         "ci_diff": [round(v, 4) for v in boot["ci_diff"]], "mcnemar_p": mcn["p_value"],
                         "only_baseline": mcn["only_a"], "only_vgrefine": mcn["only_b"]}
    if published_as:
        base, base_source = figure(published_as, "baseline", name), PAPER
        if base is None and figure(published_as, "baseline", name, HUATUO_README) is not None:
            base, base_source = figure(published_as, "baseline", name, HUATUO_README), HUATUO_README
        row["published"] = {"model": published_as, "source": base_source, "baseline": base,
                            "vgrefine": figure(published_as, "vgrefine", name), "vgrefine_source": PAPER,
                            "population_note": POPULATION_NOTES.get((COLUMNS.get(name), base_source))}
    return row


def build_report(o: Options, steps: list[Step]) -> dict:
    published_as = o.published_as or published_model(o.model)
    heads = _load_json(o.out / "heads.json")
    which, refine = vgrefine_heads(o)
    used = f"published ({published_as})" if which == "published" else "measured"
    return {
        "model": o.model, "vgmed": str(o.vgmed), "vgmed_eval": __version__, "protocol": o.protocol,
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "compared_with": published_as,
        "steps": {s.name: s.record() for s in steps},
        "grounding": _grounding_summary(o.out / "grounding" / "summary.json"),
        "control": _grounding_summary(o.out / "grounding" / "control" / "summary.json")
        if control_release(o) else None,
        "heads": {k: heads.get(k) for k in ("knockout_layer", "heads", "k", "metric")} if heads else None,
        "vqa_heads": {"used": which, "vgrefine": refine},
        "vqa": [_vqa_summary(name, o.out / "vqa" / name / "results.json", published_as, used)
                for name in o.benchmarks],
        "published": [{"model": r.model, "system": r.system, "source": r.source, "values": r.values,
                       "decoding": DECODING[r.source]}
                      for r in PUBLISHED_FIGURES],
    }


def _cell(x, fmt: str = "{:.1f}") -> str:
    return "—" if x is None else fmt.format(x)


def render_markdown(report: dict) -> str:
    lines = [f"# Reproduction: {report['model']}", "",
             f"VGMED release `{report['vgmed']}`; vgmed-eval {report['vgmed_eval']}; protocol "
             f"`{report['protocol']}`; written {report['written']}. "
             + (f"Compared with the published figures of **{report['compared_with']}**." if report["compared_with"]
                else "No published model recognised in the model's name (`--published-as` names one)."),
             "", "## Steps", "", "| step | status | seconds | note |", "|---|---|---|---|"]
    for name, s in report["steps"].items():
        note = " ".join(s["message"].split()).replace("|", "\\|")
        lines.append(f"| {name} | {s['status']} | {_cell(s['seconds'], '{:.1f}')} | {note} |")
    lines += ["", "## Grounding", "", "| set | questions | scored | errors | most sensitive layer | "
              "attention ratio there (95% CI) |", "|---|---|---|---|---|---|"]
    for label, g in (("VGMED", report["grounding"]), ("control", report["control"])):
        if g:
            r = g["attention_ratio"]
            ci = f"{_cell(r.get('mean'), '{:.3f}')} ({_cell(r.get('ci_low'), '{:.3f}')}–" \
                 f"{_cell(r.get('ci_high'), '{:.3f}')})"
            lines.append(f"| {label} | {g['n_questions']} | {g['n_ok']} | {g['n_errors']} | "
                         f"{_cell(g['most_sensitive_layer'], '{}')} | {ci} |")
    if report["heads"]:
        h = report["heads"]
        lines += ["", f"Measured heads: knockout layer {h['knockout_layer']}, {h['k']} heads by {h['metric']} "
                  f"(first: {', '.join(f'({a},{b})' for a, b in (h['heads'] or [])[:5])})."]
    used = report.get("vqa_heads") or {}
    lines += ["", f"The VQA steps' VGRefine uses the **{used.get('used')}** heads "
                  f"(`--vgrefine {used.get('vgrefine')}`).",
              "", "## VQA accuracy (%)", "",
              "Each row says which questions its accuracy is over (population), how answers are scored (metric) "
              "and what VGRefine ran with (configuration); loaded = questions read, scored = answered per "
              "system, failed = run-time errors. Paired statistics of VGRefine against the baseline on the same "
              "questions: bootstrap of the mean score, exact McNemar on correctness. Published figures: "
              "[P] " + PAPER + " (decoding: " + DECODING[PAPER] + "); [H] " + HUATUO_README + " (decoding: "
              + DECODING[HUATUO_README] + ").", "",
              "| benchmark | population · metric | configuration | loaded | scored | failed | baseline | + VGRefine "
              "| score diff (95% CI) | McNemar p | published baseline | published + VGRefine | source |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in report["vqa"]:
        p, pub, c = v.get("paired"), v.get("published") or {}, v.get("counts") or {}
        diff = f"{p['diff_score']:+.4f} ({p['ci_diff'][0]:+.4f}, {p['ci_diff'][1]:+.4f})" if p else "—"
        mcn = f"{p['mcnemar_p']:.3g}" if p else "—"
        scored = " / ".join(f"{k} {n}" for k, n in (c.get("scored") or {}).items()) or "—"
        source = "—" if not pub else ("[H]" if pub.get("source") == HUATUO_README else "[P]")
        who = " ".join(str(v.get("metric") or "—").split()).replace("|", "\\|")
        lines.append(f"| {v['benchmark']} | {who} | {_cell(v.get('configuration'), '{}')} | "
                     f"{_cell(c.get('loaded'), '{}')} | {scored} | {_cell(c.get('failed'), '{}')} | "
                     f"{_cell(v['baseline'])} | {_cell(v['vgrefine'])} "
                     f"| {diff} | {mcn} | {_cell(pub.get('baseline'))} | {_cell(pub.get('vgrefine'))} | {source} |")
    notes = [f"- {v['benchmark']}: {n}" for v in report["vqa"] for n in v.get("copy_notes") or []]
    notes += [f"- {v['benchmark']}: published figure: {v['published']['population_note']}" for v in report["vqa"]
              if (v.get("published") or {}).get("population_note")]
    if notes:
        lines += ["", "Notes from the readers:", "", *notes]
    cols = list(COLUMNS.values())
    lines += ["", "## Published figures", "", "| model | system | " + " | ".join(cols) + " | source |",
              "|---|---|" + "---|" * len(cols) + "---|"]
    for r in report["published"]:
        lines.append(f"| {r['model']} | {r['system']} | " + " | ".join(_cell(r['values'].get(c)) for c in cols)
                     + f" | {r['source']} |")
    return "\n".join(lines) + "\n"


def reproduce(o: Options) -> dict:
    """Run the missing steps and write ``report.json`` and ``report.md``; returns the report."""
    world = World.from_env()
    o.out.mkdir(parents=True, exist_ok=True)
    steps = plan_steps(o)
    run_steps(o, steps, world)
    report = build_report(o, steps)
    if world.main:
        (o.out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n",
                                           encoding="utf-8")
        (o.out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    return report
