"""`vgmed-eval report`: the plots people expect from a grounding run (matplotlib PNGs + index.md).

- ``attention_ratio_by_layer.png``: mean attention ratio per layer with its 95% bootstrap CI, for the
  medical release and, when given, a natural-image control set (the paper's Figure 3 comparison);
- ``attention_ratio_by_modality.png``: the same per modality;
- ``head_heatmap.png``: mean attention ratio per (layer, head);
- ``overlays/<id>.png``: the normalised map ``a / g`` of the chosen layer painted on the original image
  through the model's own cell footprints (padding and crops included), with the ground-truth boxes
  (needs a grounding run with ``--save-maps``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from vgmed_build import commands
from vgmed_build.release_format import path_inside

log = logging.getLogger(__name__)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(table: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    layers = np.array(sorted(int(k) for k in table))

    def column(key: str) -> np.ndarray:
        return np.array([np.nan if table[str(x)][key] is None else table[str(x)][key] for x in layers])

    return layers, column("mean"), column("ci_low"), column("ci_high")


def plot_by_layer(curves: dict[str, dict], path: Path, title: str) -> None:
    """One line + CI band per named curve ({name: summary table of attention_ratio by layer})."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, table in curves.items():
        if not table:
            continue
        layers, mean, low, high = _series(table)
        (line,) = ax.plot(layers, mean, marker="o", ms=3, label=name)
        ax.fill_between(layers, low, high, alpha=0.2, color=line.get_color(), label=f"{name}: 95% bootstrap CI")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("LLM layer")
    ax.set_ylabel("attention ratio (GT cells / all cells)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_head_heatmap(per_head: pd.DataFrame, path: Path, title: str) -> None:
    plt = _plt()
    grid = per_head.groupby(["layer", "head"])["attention_ratio"].mean().unstack("head")
    fig, ax = plt.subplots(figsize=(max(4, 0.3 * grid.shape[1] + 2), max(3, 0.25 * grid.shape[0] + 1.5)))
    im = ax.imshow(grid.to_numpy(), aspect="auto", cmap="viridis", origin="lower")
    ax.set_yticks(range(len(grid.index)), [str(i) for i in grid.index], fontsize=7)
    ax.set_xticks(range(len(grid.columns)), [str(i) for i in grid.columns], fontsize=7)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="mean attention ratio")
    fig.tight_layout()
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
COLOURBAR_LABEL = "a / g (above 1: looked at more than for a generic prompt)"
RANDOM_WEIGHTS_NOTE = ("The model is a tiny built-in one with **random weights**: these numbers and plots show the "
                       "machinery, not a finding about any real model.")


# Patient directions at the image edges under vgmed's radiological display convention (docs/ingest.md:
# axial and coronal slices show the patient's left on the image right, sagittal ones anterior on the left).
EDGE_DIRECTIONS = {
    "axial": {"left": "R", "right": "L", "top": "A", "bottom": "P"},
    "coronal": {"left": "R", "right": "L", "top": "S", "bottom": "I"},
    "sagittal": {"left": "A", "right": "P", "top": "S", "bottom": "I"},
}


def edge_directions(plane: str) -> dict[str, str] | None:
    """The letters for each image edge of a slice in ``plane``; None for 2D images and unknown planes
    (published records carry no plane), where a marker would be a guess."""
    return EDGE_DIRECTIONS.get(plane)


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


def plot_overlay(npz_path: Path, release: Path, layer: int, path: Path) -> bool:
    """Overlay of one saved map; False when the map or its image is unavailable."""
    from PIL import Image
    from vgmed_eval.metrics import normalise

    data = np.load(npz_path)
    layers = list(data["layers"])
    if layer not in layers:
        return False
    try:
        # grounding saves where it found the picture (published ids, --images); older maps only the record's path
        image_path = (Path(str(data["image_path"])) if "image_path" in data
                      else path_inside(release, str(data["image"]), "the release directory"))
    except ValueError as exc:
        log.warning("%s: %s, overlay skipped", npz_path.name, exc)
        return False
    if not image_path.exists():
        log.warning("%s: image %s not found, overlay skipped", npz_path.name, image_path)
        return False
    image = Image.open(image_path).convert("RGB")
    i = layers.index(layer)
    n = normalise(data["attn"][i], data["general"][i])
    heat = paint_cells(n, data["cells"], image.width, image.height)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5 * image.height / image.width + 0.6))
    ax.imshow(image)
    shown = ax.imshow(heat, cmap="jet", alpha=0.45)
    for x0, y0, x1, y1 in data["boxes"]:
        ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="white", lw=1.5))
    _mark_edges(ax, str(data["plane"]) if "plane" in data else "", image.width, image.height)
    ax.set_title(f"{data['question']}\n{OVERLAY_NOTE.format(layer=layer)}", fontsize=8)
    ax.axis("off")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label=COLOURBAR_LABEL)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


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


def maps_dir_of(results: Path) -> Path:
    return results / "maps"


def build_report(results: Path, out: Path, control: Path | None, samples: int, layer: int | None) -> list[Path]:
    """Write every plot and index.md; returns the written files."""
    summary = json.loads((results / "summary.json").read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    model = summary.get("model", "model")
    curves = {f"medical ({summary.get('n_ok', 0)} q)": summary["overall"]["attention_ratio"]}
    title = f"{model}: attention ratio by layer"
    comparison: list[str] = []
    if control is not None:
        ctrl = json.loads((control / "summary.json").read_text(encoding="utf-8"))
        curves[f"natural control ({ctrl.get('n_ok', 0)} q)"] = ctrl["overall"]["attention_ratio"]
        title += ", medical vs natural"
        comparison = [comparison_line(summary["overall"]["attention_ratio"], ctrl["overall"]["attention_ratio"],
                                      ctrl.get("release", str(control))), ""]
    plot_by_layer(curves, out / "attention_ratio_by_layer.png", title)
    written.append(out / "attention_ratio_by_layer.png")
    by_mod = {f"{m} ({t['n']} q)": t["attention_ratio"] for m, t in summary.get("by_modality", {}).items()}
    if by_mod:
        plot_by_layer(by_mod, out / "attention_ratio_by_modality.png", f"{model}: attention ratio by modality")
        written.append(out / "attention_ratio_by_modality.png")
    per_head = pd.read_parquet(results / "per_head.parquet")
    if not per_head.empty:
        plot_head_heatmap(per_head, out / "head_heatmap.png", f"{model}: attention ratio per head")
        written.append(out / "head_heatmap.png")
    chosen = layer if layer is not None else summary.get("most_sensitive_layer")
    maps = sorted((results / "maps").glob("*.npz")) if (results / "maps").is_dir() else []
    overlays = []
    if maps and chosen is not None:
        (out / "overlays").mkdir(exist_ok=True)
        for npz in maps[:samples]:
            target = out / "overlays" / f"{npz.stem}.png"
            if plot_overlay(npz, Path(summary["release"]), int(chosen), target):
                overlays.append(target)
    elif not maps:
        log.info("no saved maps in %s: rerun grounding with --save-maps for overlays", results)
    written += overlays
    lines = [f"# Grounding report: {model}", "",
             f"Release: `{summary['release']}`; {summary['n_ok']} questions scored, {summary['n_errors']} errors "
             f"({', '.join(f'{k}: {v}' for k, v in summary.get('errors_by_kind', {}).items()) or 'none'}).",
             f"Most visually sensitive layer: {summary.get('most_sensitive_layer')}.", "", *comparison]
    if str(model).startswith("builtin:"):
        lines += [RANDOM_WEIGHTS_NOTE, ""]
    lines += [f"![{p.stem.replace('_', ' ')}]({p.relative_to(out).as_posix()})" for p in written if p not in overlays]
    if overlays:
        lines += ["", f"## Attention overlays, layer {chosen}", "",
                  f"Each overlay paints {OVERLAY_NOTE.split(' = ', 1)[1]} ({COLOURBAR_LABEL}) over the image; "
                  "the white outlines are the annotated boxes; letters at the edges of a slice give the patient's "
                  "directions (R / L right and left, A / P anterior and posterior, S / I superior and inferior).", ""]
        for p in overlays:
            question = str(np.load(maps_dir_of(results) / f"{p.stem}.npz")["question"])
            lines += [f"![{question}]({p.relative_to(out).as_posix()})", "", f"*{question}*", ""]
    (out / "index.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return written + [out / "index.md"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        description=__doc__,
    )
    p.add_argument("--results", required=True, type=Path, help="output directory of `vgmed-eval grounding`")
    p.add_argument("--control", type=Path, default=None,
                   help="grounding output of a natural-image control set (default: RESULTS/control if present)")
    p.add_argument("--out", required=True, type=Path, help="directory for the PNGs and index.md")
    p.add_argument("--samples", type=int, default=6, help="number of attention overlays to draw")
    p.add_argument("--layer", type=int, default=None,
                   help="layer of the overlays (default: the most visually sensitive layer)")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    if not (args.results / "summary.json").exists():
        return commands.fail(f"{args.results}: no summary.json (run `vgmed-eval grounding` first)")
    control = args.control
    if control is None and (args.results / "control" / "summary.json").exists():
        control = args.results / "control"
    files = build_report(args.results, args.out, control, args.samples, args.layer)
    log.info("wrote %d files to %s", len(files), args.out)
    return commands.EXIT_OK
