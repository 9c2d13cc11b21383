"""`vgmed-eval report`: the plots people expect from a grounding run (matplotlib PNGs + index.md).

- ``attention_ratio_by_layer.png``: mean attention ratio per layer with its 95% bootstrap CI, for the
  medical release and, when given, a natural-image control set (the paper's Figure 3 comparison);
- ``attention_ratio_by_modality.png``: the same per modality;
- ``head_heatmap.png``: mean attention ratio per (layer, head), on a scale centred on 1.0;
- ``overlays/<id>.png``: the normalised map ``a / g`` of the chosen layer painted on the original image
  through the model's own cell footprints (padding and crops included), with the ground-truth boxes,
  all on one colour range, spread over the modalities and the natural control (needs a grounding run
  with ``--save-maps``);
- ``vqa_by_benchmark.png`` and a table in index.md (with ``--vqa``): accuracy of the baseline and of
  VGRefine per benchmark, with the bootstrap CIs and McNemar's p;
- a table in index.md: the attention ratio under box, mask and soft ground truth side by side, and the
  chance level (equal-area random regions) it is a multiple of, medical (per modality) and natural; the
  chance level is also a line with its band in ``attention_ratio_by_layer.png``.

A colour means one thing in every figure (eval/vgmed_eval/plotting.py).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from vgmed_build import modality
from vgmed_build.directions import edge_directions
from vgmed_build.release_format import path_inside
from vgmed_eval import plotting, run_manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Curve:
    """One line of a by-layer plot: what it stands for (its colour), its legend label, its summary table."""

    key: str
    label: str
    table: dict


def _series(table: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    layers = np.array(sorted(int(k) for k in table))

    def column(key: str) -> np.ndarray:
        return np.array([np.nan if table[str(x)][key] is None else table[str(x)][key] for x in layers])

    return layers, column("mean"), column("ci_low"), column("ci_high")


def plot_by_layer(curves: list[Curve], path: Path, title: str) -> None:
    """One line + CI band per curve, coloured by what it stands for; the bands share one legend entry."""
    from matplotlib.patches import Patch

    plt = plotting.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for curve in curves:
        if not curve.table:
            continue
        layers, mean, low, high = _series(curve.table)
        c = plotting.colour(curve.key)
        ax.plot(layers, mean, marker="o", ms=3, color=c, label=curve.label)
        ax.fill_between(layers, low, high, alpha=0.2, color=c)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("LLM layer")
    ax.set_ylabel("attention ratio (GT cells / all cells)")
    ax.set_title(plotting.wrap(title, 6.5, 11), fontsize=11)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=[*handles, Patch(color="grey", alpha=0.3, label="shaded: 95% bootstrap CI")], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_head_heatmap(per_head: pd.DataFrame, path: Path, title: str) -> None:
    """Mean attention ratio per (layer, head) on the a / g scale centred on 1.0."""
    plt = plotting.pyplot()
    grid = per_head.groupby(["layer", "head"])["attention_ratio"].mean().unstack("head")
    values = grid.to_numpy()
    width = max(5.0, 0.3 * grid.shape[1] + 2.5)
    fig, ax = plt.subplots(figsize=(width, max(3.0, 0.25 * grid.shape[0] + 2)), layout="constrained")
    im = ax.imshow(values, aspect="auto", cmap=plotting.RATIO_CMAP, origin="lower",
                   norm=plotting.ratio_norm(float(np.nanmin(values)), float(np.nanmax(values))))
    ax.set_yticks(range(len(grid.index)), [str(i) for i in grid.index], fontsize=7)
    ax.set_xticks(range(len(grid.columns)), [str(i) for i in grid.columns], fontsize=7)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(plotting.wrap(title, width - 1.5, 10), fontsize=10)
    fig.colorbar(im, ax=ax, label="mean a / g (1 = no preference)")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def paint_cells(values: np.ndarray, cells: np.ndarray, width: int, height: int) -> np.ndarray:
    """(height, width) image of per-cell values painted over each cell's pixel footprint (NaN elsewhere)."""
    canvas = np.full((height, width), np.nan)
    rows, cols = values.shape
    for r in range(rows):
        for c in range(cols):
            x0, y0, x1, y1 = cells[r, c]
            xa, xb = max(0, int(np.floor(x0))), min(width, int(np.ceil(x1)))
            ya, yb = max(0, int(np.floor(y0))), min(height, int(np.ceil(y1)))
            if xb > xa and yb > ya:
                canvas[ya:yb, xa:xb] = values[r, c]
    return canvas


# What an overlay shows, in its title and colour bar: "a / g" alone means nothing to a reader.
OVERLAY_NOTE = "layer {layer}: a / g = attention to each image patch for this question / for a generic prompt"
COLOURBAR_LABEL = "a / g (1 = as for a generic prompt)"
RANDOM_WEIGHTS_NOTE = ("The model is a tiny built-in one with **random weights**: these numbers and plots show the "
                       "machinery, not a finding about any real model.")


def _mark_edges(ax, plane: str, width: int, height: int) -> None:
    marks = edge_directions(plane)
    if not marks:
        return
    style = {"color": "white", "fontsize": 9, "fontweight": "bold",
             "bbox": {"facecolor": "black", "alpha": 0.6, "pad": 1, "lw": 0}}
    at = {"left": (0.02 * width, height / 2, "left", "center"), "right": (0.98 * width, height / 2, "right", "center"),
          "top": (width / 2, 0.02 * height, "center", "top"), "bottom": (width / 2, 0.98 * height, "center", "bottom")}
    for edge, (x, y, ha, va) in at.items():
        ax.text(x, y, marks[edge], ha=ha, va=va, gid=f"edge-{edge}", **style)


@dataclass(frozen=True)
class Overlay:
    """One saved map ready to draw: the picture, a / g painted over its pixels, the boxes and the plane."""

    image: object  # PIL.Image.Image, RGB
    heat: np.ndarray  # (height, width) a / g, NaN outside the model's cells
    boxes: np.ndarray
    plane: str
    question: str
    layer: int


def load_overlay(npz_path: Path, release: Path, layer: int) -> Overlay | None:
    """One saved map and its picture; None (with a warning) when the layer or the picture is unavailable."""
    from PIL import Image

    from vgmed_eval.metrics import normalise

    data = np.load(npz_path)
    layers = list(data["layers"])
    if layer not in layers:
        return None
    try:
        # grounding saves where it found the picture (published ids, --images); older maps only the record's path
        image_path = (Path(str(data["image_path"])) if "image_path" in data
                      else path_inside(release, str(data["image"]), "the release directory"))
    except ValueError as exc:
        log.warning("%s: %s, overlay skipped", npz_path.name, exc)
        return None
    if not image_path.exists():
        log.warning("%s: image %s not found, overlay skipped", npz_path.name, image_path)
        return None
    image = Image.open(image_path).convert("RGB")
    i = layers.index(layer)
    heat = paint_cells(normalise(data["attn"][i], data["general"][i]), data["cells"], image.width, image.height)
    return Overlay(image, heat, np.asarray(data["boxes"]), str(data["plane"]) if "plane" in data else "",
                   str(data["question"]), layer)


def shared_range(overlays: list[Overlay]) -> tuple[float, float]:
    """The smallest and largest a / g over all overlays: one colour range, so colours compare across them."""
    values = np.concatenate([o.heat[np.isfinite(o.heat)] for o in overlays] or [np.array([1.0])])
    return (float(values.min()), float(values.max())) if values.size else (1.0, 1.0)


def draw_overlay(overlay: Overlay, path: Path, vmin: float, vmax: float) -> None:
    """The picture with a / g on the shared scale centred on 1.0, the boxes and the patient's directions."""
    plt = plotting.pyplot()
    image = overlay.image
    fig, ax = plt.subplots(figsize=(5, 5 * image.height / image.width + 0.9))
    ax.imshow(image)
    shown = ax.imshow(overlay.heat, cmap=plotting.RATIO_CMAP, alpha=0.5, norm=plotting.ratio_norm(vmin, vmax))
    for x0, y0, x1, y1 in overlay.boxes:
        ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="black", lw=2.5))
        ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="white", lw=1.2))
    _mark_edges(ax, overlay.plane, image.width, image.height)
    ax.set_title(plotting.wrap(f"{overlay.question}\n{OVERLAY_NOTE.format(layer=overlay.layer)}", 4.2, 8), fontsize=8)
    ax.axis("off")
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label(COLOURBAR_LABEL, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_overlays(maps: list[tuple[Path, Path, str]], layer: int, out: Path) -> list[tuple[Path, str]]:
    """Draw each (saved map, its release, PNG name) that can be drawn into ``out``, all on one colour range;
    returns (PNG, question) per overlay drawn."""
    loaded = [(name, o) for npz, release, name in maps if (o := load_overlay(npz, release, layer)) is not None]
    vmin, vmax = shared_range([o for _, o in loaded])
    drawn = []
    for name, overlay in loaded:
        target = out / f"{name}.png"
        draw_overlay(overlay, target, vmin, vmax)
        drawn.append((target, overlay.question))
    return drawn


def _round_robin(groups: list[list]) -> list:
    """The first of every group, then the second of every group, ..."""
    out, i = [], 0
    while any(i < len(g) for g in groups):
        out += [g[i] for g in groups if i < len(g)]
        i += 1
    return out


def spread(candidates: list[tuple[str, str, object]], n: int) -> list:
    """``n`` of the (modality, plane, item) candidates: every modality before any gets a second, and within
    a modality every plane before any gets a second, in the candidates' order otherwise."""
    by_modality: dict[str, dict[str, list]] = {}
    for mod, plane, item in candidates:
        by_modality.setdefault(mod, {}).setdefault(plane, []).append(item)
    return _round_robin([_round_robin(list(planes.values())) for _, planes in sorted(by_modality.items())])[:n]


def overlay_candidates(results: Path, release: Path, prefix: str = "") -> list[tuple[str, str, tuple]]:
    """(modality, plane, (saved map, release, PNG name)) of every map a grounding run saved."""
    from vgmed_eval.grounding import safe_name

    maps = sorted((results / "maps").glob("*.npz")) if (results / "maps").is_dir() else []
    if not maps:
        return []
    ids = pd.read_parquet(results / "per_layer.parquet", columns=["id", "modality"]).drop_duplicates("id")
    modality_of = {safe_name(str(i)): str(m) for i, m in zip(ids["id"], ids["modality"], strict=True)}
    out = []
    for npz in maps:
        with np.load(npz) as data:
            plane = str(data["plane"]) if "plane" in data else ""
        out.append((modality_of.get(npz.stem, "unknown"), plane, (npz, release, prefix + npz.stem)))
    return out


def comparison_line(medical: dict, natural: dict, control_release: str) -> str:
    """The paper's Figure 3 in one sentence: mean attention ratio over layers, medical vs natural."""

    def mean_over_layers(table: dict) -> float | None:
        values = [v["mean"] for v in table.values() if v.get("mean") is not None]
        return sum(values) / len(values) if values else None

    med, nat = mean_over_layers(medical), mean_over_layers(natural)
    shown = ", ".join(f"{name} {v:.3f}" if v is not None else f"{name} n/a" for name, v in
                      (("medical", med), ("natural", nat)))
    return (f"Medical vs natural images (control `{control_release}`): attention ratio averaged over the "
            f"evaluated layers: {shown} (1 = no preference for the target).")


def ground_truth_section(runs: list[tuple[str, dict]], layer: int | None) -> list[str]:
    """index.md's table: attention ratio at ``layer`` under each ground truth, its chance level and the
    ratio of the two, one row per run (medical, its modalities, the natural control)."""
    if layer is None or not any(summary.get("gt", {}).get("compare") for _, summary in runs):
        return []
    key = str(layer)
    lines = [f"## Ground truth and chance, layer {layer}", "",
             "Attention ratio with the ground truth as the cells the boxes touch (box, the published rule), the "
             "cells the mask touches (mask) and each cell weighted by the fraction of it the target covers "
             "(soft); chance: the same ratio for the `--gt` ground truth moved to random places inside the "
             "image (mean over questions); x chance: measured / chance.", "",
             "| questions | box | mask | soft | --gt | chance | x chance |", "|---|---|---|---|---|---|---|"]

    def cell(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    def at_layer(table: dict | None) -> float | None:  # {metric: {layer: mean}} -> the ratio at `layer`
        value = (table or {}).get("attention_ratio", {}).get(key)
        return value.get("mean") if isinstance(value, dict) else value

    def pick(block: dict, mod: str | None) -> dict | None:  # one modality's part of a summary block, or all
        return block.get("by_modality", {}).get(mod) if mod else block.get("overall")

    for name, summary in runs:
        chance, compare = summary.get("chance", {}), summary.get("gt", {}).get("compare", {})
        modalities = sorted(chance.get("by_modality", {}))
        for label, mod in [(name, None)] + ([(f"{name}: {m}", m) for m in modalities] if len(modalities) > 1 else []):
            ratios = [cell(at_layer(pick(compare.get(k, {}), mod))) for k in ("box", "mask", "soft")]
            block = pick(chance, mod) or {}
            lines.append(f"| {label} | {' | '.join(ratios)} | {summary.get('gt', {}).get('kind', 'box')} | "
                         f"{cell(at_layer(block.get('random')))} | {cell(at_layer(block.get('times_chance')))} |")
    return [*lines, ""]


def build_report(results: Path, out: Path, control: Path | None, samples: int, layer: int | None,
                 vqa: list[Path] = (), causal: Path | None = None) -> list[Path]:
    """Write every plot and index.md; returns the written files."""
    from vgmed_eval.vqa import figures as vqa_figures

    summary = json.loads((results / "summary.json").read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    model = summary.get("model", "model")
    curves = [Curve(plotting.MEDICAL, f"medical ({summary.get('n_ok', 0)} q)", summary["overall"]["attention_ratio"])]
    by_modality = [Curve(m, f"{m} ({t['n']} q)", t["attention_ratio"])
                   for m, t in summary.get("by_modality", {}).items()]
    title = f"{model}: attention ratio by layer"
    comparison: list[str] = []
    ctrl = None
    if control is not None:
        ctrl = json.loads((control / "summary.json").read_text(encoding="utf-8"))
        natural = f"natural control ({ctrl.get('n_ok', 0)} q)"
        curves.append(Curve(modality.NATURAL, natural, ctrl["overall"]["attention_ratio"]))
        if modality.NATURAL not in summary.get("by_modality", {}):
            by_modality.append(Curve(modality.NATURAL, natural, ctrl["overall"]["attention_ratio"]))
        title += ", medical vs natural"
        comparison = [comparison_line(summary["overall"]["attention_ratio"], ctrl["overall"]["attention_ratio"],
                                      ctrl.get("release", str(control))), ""]
    for name, run in (("medical", summary), ("natural", ctrl)):  # the chance level as a line with its band
        random = ((run or {}).get("chance", {}).get("overall") or {}).get("random", {}).get("attention_ratio")
        if random:
            curves.append(Curve(f"chance {name}", f"chance, {name} (random regions of the same area)", random))
    plot_by_layer(curves, out / "attention_ratio_by_layer.png", title)
    written.append(out / "attention_ratio_by_layer.png")
    if by_modality:
        plot_by_layer(by_modality, out / "attention_ratio_by_modality.png", f"{model}: attention ratio by modality")
        written.append(out / "attention_ratio_by_modality.png")
    per_head = pd.read_parquet(results / "per_head.parquet")
    if not per_head.empty:
        plot_head_heatmap(per_head, out / "head_heatmap.png", f"{model}: attention ratio per head")
        written.append(out / "head_heatmap.png")
    chosen = layer if layer is not None else summary.get("most_sensitive_layer")
    candidates = overlay_candidates(results, Path(summary["release"]))
    if ctrl is not None:
        candidates += overlay_candidates(control, Path(ctrl["release"]), prefix="control_")
    overlays: list[tuple[Path, str]] = []
    if candidates and chosen is not None:
        (out / "overlays").mkdir(exist_ok=True)
        overlays = plot_overlays(spread(candidates, samples), int(chosen), out / "overlays")
    elif not candidates:
        log.info("no saved maps in %s: rerun grounding with --save-maps for overlays", results)
    vqa_runs = vqa_figures.load(vqa_figures.find_results(list(vqa)))
    lines = [f"# Grounding report: {model}", "",
             f"Release: `{summary['release']}`; {summary['n_ok']} questions scored, {summary['n_errors']} errors "
             f"({', '.join(f'{k}: {v}' for k, v in summary.get('errors_by_kind', {}).items()) or 'none'}).",
             f"Most visually sensitive layer: {summary.get('most_sensitive_layer')}.", "", *comparison]
    if str(model).startswith("builtin:"):
        lines += [RANDOM_WEIGHTS_NOTE, ""]
    lines += ground_truth_section([("medical", summary)] + ([("natural", ctrl)] if ctrl else []), chosen)
    lines += [f"![{p.stem.replace('_', ' ')}]({p.relative_to(out).as_posix()})" for p in written]
    if overlays:
        lines += ["", f"## Attention overlays, layer {chosen}", "",
                  f"Each overlay paints {OVERLAY_NOTE.split(' = ', 1)[1]} over the image, on one colour scale for "
                  "all overlays (blue below 1, white at 1, red above: looked at more than for a generic prompt); "
                  "the outlined rectangles are the annotated boxes; letters at the edges of a slice give the "
                  "patient's directions (R / L right and left, A / P anterior and posterior, S / I superior and "
                  "inferior). One overlay per modality (and slice plane) before any gets a second.", ""]
        for p, question in overlays:
            lines += [f"![{question}]({p.relative_to(out).as_posix()})", "", f"*{question}*", ""]
        written += [p for p, _ in overlays]
    if vqa_runs:
        vqa_png = out / "vqa_by_benchmark.png"
        vqa_figures.plot(vqa_runs, vqa_png, f"{', '.join(sorted({str(r.get('model')) for r in vqa_runs}))}: "
                                            "VQA, baseline vs VGRefine")
        written.append(vqa_png)
        lines += ["", *vqa_figures.section(vqa_runs, vqa_png.name, "## VQA: baseline vs VGRefine")]
    if causal is not None:
        from vgmed_eval.causal import report_section

        lines += ["", *report_section(json.loads((causal / "summary.json").read_text(encoding="utf-8")))]
    (out / "index.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return written + [out / "index.md"]


def mixed_protocols(results: Path, control: Path | None, vqa_files: list[Path]) -> str:
    """Where the runs that share a figure (the medical run and its control; the VQA runs) differ in
    protocol, as one line; empty when they agree."""
    figures = [[(str(results), run_manifest.protocol_of(results, "summary.json"))]
               + ([(str(control), run_manifest.protocol_of(control, "summary.json"))] if control else []),
               [(str(f.parent), run_manifest.protocol_of(f.parent, f.name)) for f in vqa_files]]
    return "; ".join(line for runs in figures for line in run_manifest.protocol_differences(runs))
