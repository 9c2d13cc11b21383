"""`vgmed-eval`: the evaluator's command line (grounding, heads, report, vqa, convert, reproduce)."""

from __future__ import annotations

from vgmed_build import commands
from vgmed_eval import __version__

Command = commands.Command

# Every command, in the order of --help: its name, the module that adds it (one per command in this package:
# options and printing; the work is done by the domain module of the same name), its summary.
COMMANDS = (
    Command("grounding", "vgmed_eval.cli.grounding",
            "attention ratio, KL and JS of a model on a VGMED-style release, per layer and head"),
    Command("heads", "vgmed_eval.cli.heads",
            "pick the most visually sensitive layer and top-k heads from a grounding run (for VGRefine)"),
    Command("report", "vgmed_eval.cli.report",
            "plots of a grounding run: ratio by layer (vs a natural control), head heatmap, overlays"),
    Command("causal", "vgmed_eval.cli.causal",
            "knock out the ground-truth cells, then random ones: does the answer flip?"),
    Command("leakage", "vgmed_eval.cli.leakage",
            "release images also in a VQA benchmark (perceptual hash), exclusions"),
    Command("vqa", "vgmed_eval.cli.vqa", "answer a medical VQA benchmark (baseline and/or VGRefine) and score it"),
    Command("convert", "vgmed_eval.cli.convert",
            "convert an original LLaVA-format checkpoint (HuatuoGPT-Vision, LLaVA-Med, LLaVA-1.5) to transformers"),
    Command("reproduce", "vgmed_eval.cli.reproduce",
            "the paper's pipeline for one model (grounding, heads, VQA with and without VGRefine) and a report "
            "beside the published figures"),
)

COMMAND_LINE = commands.CommandLine(
    "vgmed-eval",
    "Evaluate where multimodal LLMs look on a VGMED release (grounding metrics per layer and head), "
    "pick visually sensitive heads, and run medical VQA with and without VGRefine.",
    __version__,
    COMMANDS,
)
build_parser = COMMAND_LINE.build_parser
main = COMMAND_LINE.main
