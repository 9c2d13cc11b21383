"""The model options of every command that loads a model (grounding, vqa, causal; reproduce passes them to
its steps), defined once; :func:`vgmed_eval.adapters.adapter_from_args` turns what they hold into an adapter.

Nothing here imports torch: ``--help`` names the model families from the family table
(:data:`vgmed_eval.families.MODEL_ADAPTERS`, read from the adapter modules without importing them).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vgmed_eval.families import MODEL_ADAPTERS
from vgmed_eval.geometry import TILE_GRIDS

DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")
DEVICE_MAPS = ("auto", "balanced")  # accelerate's strategies for --device-map (vgmed_eval.placement)
DEFAULT_DEVICE = "cpu"


def add_model_options(p: argparse.ArgumentParser, *, placement: bool = True) -> None:
    """``--model``, ``--dtype``, ``--device``, ``--chat-template``, ``--internvl-grid`` and, with
    ``placement``, the options that spread a model over several devices (``--device-map``, ``--max-memory``,
    ``--offload-folder``)."""
    p.add_argument("--model", required=True,
                   help="hub id or local checkpoint (e.g. one written by `vgmed-eval convert`) of a supported "
                        f"family ({', '.join(MODEL_ADAPTERS.names())}), or builtin:tiny-<family> for a tiny "
                        "random model of that family that runs offline")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="model weights dtype; auto = the checkpoint's own (float32 for tiny models)")
    p.add_argument("--device", default=DEFAULT_DEVICE,
                   help="torch device, e.g. cpu, cuda, cuda:1; under torchrun / accelerate launch, cuda is "
                        "each rank's own GPU (cuda:LOCAL_RANK)")
    p.add_argument("--chat-template", type=Path, metavar="FILE",
                   help="chat template (Jinja, or JSON with 'chat_template') to use instead of the checkpoint's "
                        "own; needed for checkpoints that ship none and are not recognised (HuatuoGPT-Vision and "
                        "LLaVA-Med ports are)")
    p.add_argument("--internvl-grid", choices=TILE_GRIDS, default=None,
                   help="InternVL-family models only (InternVL -hf, MedRegA and VILA converted): the grid the "
                        "attention metrics and VGRefine's triage use when an image is cut into several 448 px "
                        "tiles plus a thumbnail. whole (the default) = the 16 x 16 grid of the whole image "
                        "(the thumbnail, or the only tile), the same for every image and the authors' "
                        "gt_tokens_medrega; tiles = the mosaic of all tiles (rows*16 x cols*16, varies per "
                        "image). Knockouts reach every tile and the thumbnail either way; one tile: the two "
                        "are the same")
    if not placement:
        return
    p.add_argument("--device-map", choices=DEVICE_MAPS, default=None,
                   help="spread a model bigger than one GPU over the GPUs (then CPU, then disk), each LLM layer "
                        "whole on one device (accelerate big-model loading): auto fills GPU 0 first, balanced "
                        "splits evenly; under a launcher each rank takes an equal slice of its node's GPUs; "
                        "--device is then ignored")
    p.add_argument("--max-memory", default=None, metavar="DEV=SIZE,...",
                   help="with --device-map: cap per device, e.g. '0=70GiB,1=70GiB,cpu=200GiB' (plain numbers: bytes)")
    p.add_argument("--offload-folder", default=None, metavar="DIR",
                   help="with --device-map: where weights that fit neither GPUs nor --max-memory's cpu go")
