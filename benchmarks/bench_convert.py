"""`vgmed-eval convert` time and memory on HuatuoGPT-Vision-7B's original layout, against loading it whole.

One run, same checkpoint (random weights, written first by ``paper_shapes.write_original``):
(a) baseline: every shard read into memory at once (what a converter that loads the checkpoint
    whole, as transformers' own LLaVA script does, holds at its peak);
(b) ``vgmed_eval.convert.convert``: shard by shard.
Prints the checkpoint size, its largest shard, the time and peak RSS growth of each, then loads the
converted checkpoint with the evaluator and runs one forward pass as a check.

CPU (reduced size, shards cut small so there are several):
    .venv/bin/python benchmarks/bench_convert.py --shape huatuo-mini --shard-mib 64
GPU machine (real size, ~15 GiB bfloat16 on disk, ~16 GiB RAM for (a)):
    python benchmarks/bench_convert.py --shape huatuo-7b --dtype bfloat16
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import torch
from bench_grounding import timed
from paper_shapes import SHAPES, write_original
from PIL import Image

from vgmed_eval.adapters import load_adapter
from vgmed_eval.checkpoint_io import read_weights, weight_files
from vgmed_eval.convert import convert


def load_whole(src: Path) -> int:
    """Every tensor in memory at once (copied out of the memory-mapped files, as a rename-and-save does)."""
    tensors = {}
    for path in weight_files(src):
        tensors.update({k: v.clone() for k, v in read_weights(path).items()})
    return sum(t.numel() * t.element_size() for t in tensors.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="huatuo-mini", choices=sorted(SHAPES))
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--max-layers", type=int, default=None, help="cap the LLM and vision depth")
    parser.add_argument("--shard-mib", type=int, default=2048, help="shard size of the written original checkpoint")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vgmed-bench-convert-") as tmp:
        src = write_original(Path(tmp) / "HuatuoGPT-Vision-7B-random", args.shape, getattr(torch, args.dtype),
                             args.max_layers, shard_bytes=args.shard_mib * 2**20)
        files = weight_files(src)
        sizes = [f.stat().st_size for f in files]
        total, t_whole, m_whole = timed(lambda: load_whole(src), "cpu")
        dst = Path(tmp) / "converted"
        _, t_conv, m_conv = timed(lambda: convert(src, dst, progress=False), "cpu")
        adapter = load_adapter(str(dst))
        batch = adapter.build_inputs([Image.new("RGB", (400, 300), (90, 60, 30))], ["Is there a mass?"])
        with torch.inference_mode():
            logits = adapter.model(**batch.inputs, logits_to_keep=1).logits
    print(f"shape {args.shape} ({adapter.n_layers} LLM layers x {adapter.n_heads} heads), {args.dtype}, "
          f"{platform.processor() or 'cpu'}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"checkpoint: {sum(sizes) / 2**20:.0f} MiB in {len(files)} shards (largest {max(sizes) / 2**20:.0f} MiB), "
          f"{total / 2**20:.0f} MiB of tensors")
    print(f"(a) load whole : {t_whole:7.1f} s, peak RSS growth {m_whole.extra / 2**20:8.0f} MiB")
    print(f"(b) convert    : {t_conv:7.1f} s, peak RSS growth {m_conv.extra / 2**20:8.0f} MiB "
          f"({m_conv.extra / max(sizes):.2f}x the largest shard)")
    ok = bool(torch.isfinite(logits).all()) and len(batch.grid_positions[0]) == 576
    print(f"converted model: {len(batch.grid_positions[0])} image tokens ({batch.geometries[0].rows}x"
          f"{batch.geometries[0].cols} grid), finite logits: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
