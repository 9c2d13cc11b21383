"""VQA results a reader takes in at a glance: a markdown table and a bar chart, baseline vs VGRefine per benchmark.

Both read ``results.json`` files of `vgmed-eval vqa` (one per benchmark): accuracy and mean score per
system, and with ``--compare`` the paired bootstrap CIs and the exact McNemar p of the difference.
`vqa` writes them for its own run (``results.md``, ``results.png``); `report --vqa` for several.
"""

from __future__ import annotations

import json
from pathlib import Path

from vgmed_eval import plotting

SYSTEMS = (plotting.BASELINE, plotting.VGREFINE)
NAMES = {plotting.BASELINE: "baseline", plotting.VGREFINE: "VGRefine"}


def find_results(paths: list[Path]) -> list[Path]:
    """``results.json`` of each path: the path itself, the file in it, or those in its sub-folders."""
    found: list[Path] = []
    for p in paths:
        if p.is_file():
            found.append(p)
        elif (p / "results.json").is_file():
            found.append(p / "results.json")
        else:
            found += sorted(p.glob("*/results.json"))
    return found


def load(files: list[Path]) -> list[dict]:
    return [json.loads(f.read_text(encoding="utf-8")) for f in files]


def _pct(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}"


def _ci(pair) -> str:
    return f"[{_pct(pair[0])}, {_pct(pair[1])}]"


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def table(runs: list[dict]) -> list[str]:
    """Markdown lines: one row per benchmark; the CIs and the test where the run compared the two systems."""
    lines = ["| benchmark | questions | baseline accuracy % | VGRefine accuracy % | baseline mean score % [95% CI] "
             "| VGRefine mean score % [95% CI] | VGRefine - baseline [95% CI] | only baseline right "
             "| only VGRefine right | McNemar p (exact) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        systems = r["systems"]
        acc = {s: _pct(systems[s]["overall"]["accuracy"]) if s in systems else "-" for s in SYSTEMS}
        c = r.get("comparison") or {}
        if c.get("n"):
            b, m = c["bootstrap"], c["mcnemar"]
            scores = [f"{_pct(b['mean_a'])} {_ci(b['ci_a'])}", f"{_pct(b['mean_b'])} {_ci(b['ci_b'])}",
                      f"{100 * b['diff']:+.1f} {_ci(b['ci_diff'])}", str(m["only_a"]), str(m["only_b"]),
                      _p(m["p_value"])]
        else:
            scores = [_pct(systems[s]["overall"]["mean_score"]) if s in systems else "-" for s in SYSTEMS]
            scores += ["-"] * 4
        lines.append(f"| {r['benchmark']} | {r['n_questions']} | {acc['baseline']} | {acc['vgrefine']} | "
                     + " | ".join(scores) + " |")
    return lines


def plot(runs: list[dict], path: Path, title: str) -> None:
    """Mean score per benchmark, baseline and VGRefine side by side with their bootstrap 95% CIs; above each
    pair the difference with its CI and McNemar's p (where the run compared them)."""
    plt = plotting.pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.9 * len(runs) + 2), 4.2))
    width = 0.38
    for i, r in enumerate(runs):
        c = r.get("comparison") or {}
        b = c.get("bootstrap") if c.get("n") else None
        for j, s in enumerate(SYSTEMS):
            if s not in r["systems"]:
                continue
            mean = 100 * r["systems"][s]["overall"]["mean_score"]
            err = None
            if b:
                low, high = b["ci_a"] if s == plotting.BASELINE else b["ci_b"]
                err = [[mean - 100 * low], [100 * high - mean]]
            ax.bar(i + (j - 0.5) * width, mean, width, yerr=err, capsize=3, color=plotting.colour(s),
                   label=NAMES[s])
        if b:
            top = 100 * max(b["ci_a"][1], b["ci_b"][1])
            ax.text(i, top + 2, f"{100 * b['diff']:+.1f} {_ci(b['ci_diff'])}\nMcNemar p={_p(c['mcnemar']['p_value'])}",
                    ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(runs)), [f"{r['benchmark']}\n(n={r['n_questions']})" for r in runs], fontsize=8)
    ax.set_ylim(0, 119)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("mean score % (accuracy for closed questions)")
    ax.set_title(plotting.wrap(title, fig.get_figwidth() - 1, 10), fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(runs: list[dict], md: Path, png: Path, heading: str) -> None:
    """``png`` (the chart) and ``md`` (heading, the chart, the table, how to read them)."""
    models = sorted({str(r.get("model")) for r in runs})
    plot(runs, png, f"{', '.join(models)}: baseline vs VGRefine")
    md.write_text("\n".join(section(runs, png.relative_to(md.parent).as_posix(), heading)) + "\n", encoding="utf-8")


def section(runs: list[dict], png: str, heading: str) -> list[str]:
    """Markdown: the chart, the table and how to read them."""
    return [heading, "", f"![VQA: baseline vs VGRefine]({png})", "", *table(runs), "",
            "Mean score: the scorer's score averaged over questions (equal to accuracy for closed questions); "
            "its 95% CIs and that of the difference come from a paired bootstrap over questions; McNemar's exact "
            "test compares which questions each system got right (only the discordant pairs count).", ""]
