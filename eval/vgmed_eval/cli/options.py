"""Options several evaluator commands share (besides the model options, :mod:`vgmed_eval.model_options`):
``--protocol`` with the individual choices of a :class:`~vgmed_eval.protocol.Protocol`, and the
``NAME=DATA`` form of a VQA benchmark (reproduce, leakage)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vgmed_eval.protocol import FLAGS, PIXEL_HELP, PROTOCOLS
from vgmed_eval.vqa.benchmarks import BENCHMARKS


def add_protocol_args(p: argparse.ArgumentParser, choices: tuple[str, ...]) -> None:
    """``--protocol`` plus the individual flags of ``choices`` (Protocol fields); all default to the protocol."""
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="vgmed",
                   help="vgmed: vgmed's defaults; published: every choice the authors' code makes (docs/eval.md "
                        "lists them); an individual flag below wins over the protocol")
    for dest in choices:
        if dest in ("min_pixels", "max_pixels"):
            p.add_argument(f"--{dest.replace('_', '-')}", dest=dest, type=int, default=None, help=PIXEL_HELP)
            continue
        flag, allowed, text = FLAGS[dest]
        kind = float if dest == "percentile" else int if dest in ("mc_max_new_tokens", "min_new_tokens") else str
        p.add_argument(flag, dest=dest, choices=allowed, type=kind, default=None,
                       help=f"{text} (default: from --protocol)")


def parse_benchmark(spec: str) -> tuple[str, Path]:
    """``NAME=DATA`` -> (name, path), the ``--benchmark`` of reproduce and leakage; the name must be one of the
    VQA loaders."""
    name, sep, data = spec.partition("=")
    name = name.strip()
    if not sep or not name or not data:
        raise argparse.ArgumentTypeError(f"{spec!r}: expected NAME=DATA, e.g. vqa-rad=/data/VQA_RAD")
    if name not in BENCHMARKS:
        raise argparse.ArgumentTypeError(f"{spec!r}: unknown benchmark {name!r}; choose from "
                                         f"{', '.join(BENCHMARKS.names())}")
    return name, Path(data)
