"""`vgmed-build`: the dataset pipeline's command line (one module per stage, see COMMANDS)."""

from __future__ import annotations

from vgmed_build import __version__, commands

Command = commands.Command

# Every command, in the order of --help: its name, the module that registers it, its summary.
COMMANDS = (
    Command("ingest", "vgmed_build.ingest.cli", "render source datasets to PNG slices + regions in a build catalog"),
    Command("regions", "vgmed_build.ingest.cli", "export the catalog's regions as JSONL"),
    Command("stats", "vgmed_build.ingest.cli", "counts by source, modality, label; errors"),
    Command("generate", "vgmed_build.drafting.cli", "draft localization/attribute/position questions for every region"),
    Command("drafts", "vgmed_build.drafting.cli", "export drafts as JSONL (schemas/draft.schema.json)"),
    Command("judge", "vgmed_build.judge.cli",
            "a multimodal LLM's verdict on every ok draft (stored beside lint; calibrated by `review status --judge`)"),
    Command("labelstudio", "vgmed_build.review.cli",
            "run a local Label Studio server for this build (install on first use, loopback only)"),
    Command("review", "vgmed_build.review.cli",
            "clinician review in Label Studio: push drafts, pull verdicts, agreement"),
    Command("release", "vgmed_build.cli.release",
            "write the validated release (JSONL, images, manifest, dataset card) from a reviewed build"),
    Command("validate", "vgmed_build.cli.validate",
            "check a release (or a published VGMED download) and print every problem as file:line: message"),
    Command("export", "vgmed_build.cli.export",
            "export a release as Parquet or as a VQA JSON for evaluation harnesses"),
    Command("demo", "vgmed_build.cli.demo", "run the whole chain on the bundled real sample data (offline)"),
)

COMMAND_LINE = commands.CommandLine(
    "vgmed-build",
    "Build a clinician-validated VGMED visual grounding benchmark from medical segmentation datasets: "
    "ingest -> generate -> review push/pull -> release.",
    __version__,
    COMMANDS,
)
build_parser = COMMAND_LINE.build_parser
main = COMMAND_LINE.main
