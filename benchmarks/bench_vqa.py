"""VGRefine throughput: the published recipe versus vgmed-eval, same model, same questions, one run.

(a) published: per question at batch 1, a question pass and a general-prompt pass with eager attention
    and ``output_attentions=True`` on every layer, triage from those matrices, then greedy generation
    with eager attention and the knockout as an additive -inf mask (the model's own KV cache);
(b) ours (``VGRefiner``, the code path of ``vgmed-eval vqa --vgrefine``): SDPA everywhere, the
    keys/values up to the image computed once per image, the general map once per image (as extra
    rows of the question pass), question and knockout passes batched, greedy decoding with the cache.
Both triage with the same heads and percentile and knock out at the same layer in the same mode
(``prefill``, the public code's, by default). The script prints questions/s and peak memory (CUDA: max
allocated; CPU: peak RSS growth) of each, the fraction of questions whose greedy answers are
identical, and of those whose knocked-out cells are identical. Exit status 1 below 99% agreement.

CPU, tiny model (the default):
    .venv/bin/python benchmarks/bench_vqa.py --shape tiny-llava
GPU, random-weight model of real size (weights cannot be downloaded; shapes only):
    python benchmarks/bench_vqa.py --device cuda --dtype float16 --shape llava-7b --batch-size 16
HuatuoGPT-Vision-7B's original checkpoint shape, converted first (to run on a GPU; --shape huatuo-mini on a CPU):
    python benchmarks/bench_vqa.py --device cuda --dtype bfloat16 --shape huatuo-7b --batch-size 16
Its check of the quick guard (benchmarks/quick.py):
    .venv/bin/python benchmarks/bench_vqa.py --quick
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch
from bench_grounding import QUESTION_TEXTS, add_model_args, bench_adapter, timed
from PIL import Image

from vgmed_eval.prompts import SHORT_ANSWER
from vgmed_eval.vgrefine import VGRefineConfig, VGRefiner
from vgmed_eval.vqa.reference import published_vgrefine, reference_attention


def make_questions(root: Path, n_images: int, per_image: int, side: int) -> list[tuple[Path, str]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n_images):
        w, h = side + 37 * (i % 3), side - 23 * (i % 2)
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        out += [(path, f"{QUESTION_TEXTS[(i + j) % len(QUESTION_TEXTS)]} {SHORT_ANSWER}") for j in range(per_image)]
    return out


def triage_heads(n_layers: int, n_heads: int, k: int) -> tuple[tuple[int, int], ...]:
    """k heads, half of them around the middle layer (the published shape of the top-k set)."""
    rng = np.random.default_rng(1)
    mid = [(layer, h) for layer in range(max(0, n_layers // 2 - 2), min(n_layers, n_layers // 2 + 3))
           for h in range(n_heads)]
    rest = [(layer, h) for layer in range(n_layers) for h in range(n_heads) if (layer, h) not in mid]
    pick = [mid[i] for i in rng.choice(len(mid), min(len(mid), k // 2), replace=False)]
    pick += [rest[i] for i in rng.choice(len(rest), min(len(rest), k - len(pick)), replace=False)]
    return tuple(sorted(pick))


def published(adapter, questions, cfg, max_new, eos):
    with reference_attention(adapter.model, vision="eager"):
        results = [published_vgrefine(adapter, Image.open(p).convert("RGB"), t, cfg, max_new, eos, recompute=False)
                   for p, t in questions]
    return [(r.tokens, r.low.nonzero().flatten().tolist()) for r in results]


def ours(adapter, questions, cfg, max_new, batch_size):
    refiner = VGRefiner(adapter, cfg, max_new_tokens=max_new)
    prefixes, out = {}, []
    for start in range(0, len(questions), batch_size):
        chunk = [(path, Image.open(path).convert("RGB"), text) for path, text in questions[start : start + batch_size]]
        new = list({path: image for path, image, _ in chunk if path not in prefixes}.items())
        prefixes.update(zip([p for p, _ in new], refiner.prefixes([im for _, im in new]), strict=True))
        queries = [refiner.query(prefixes[path], image, text) for path, image, text in chunk]
        _, answers = refiner.answer(queries, baseline=False)
        out += [(a.tokens, a.cells) for a in answers]
        prefixes = {path: prefixes[path] for path, _, _ in chunk}  # questions come grouped by image
    return out


def agreement(ref: list, got: list) -> tuple[float, float]:
    """Fractions of questions with identical greedy answers, and with identical knocked-out cells."""
    n = len(ref)
    return (sum(a[0] == b[0] for a, b in zip(ref, got, strict=True)) / n,
            sum(a[1] == b[1] for a, b in zip(ref, got, strict=True)) / n)


def vgrefine_config(adapter, top_k: int = 20, percentile: float = 80.0, mode: str = "prefill") -> VGRefineConfig:
    """``top_k`` triage heads (see ``triage_heads``), knockout at the middle layer."""
    return VGRefineConfig(heads=triage_heads(adapter.n_layers, adapter.n_heads, top_k),
                          knockout_layers=(adapter.n_layers // 2,), percentile=percentile, mode=mode)


QUICK = {"shape": "tiny-llava", "images": 4, "per_image": 2, "batch_size": 8, "max_new_tokens": 10, "repeats": 3}


def quick(only: str | None = None) -> list:
    """Check of benchmarks/quick.py: CPU of the published VGRefine over ``VGRefiner``'s on 8 questions of the
    tiny LLaVA, best of 3 each; the answers and knocked-out cells must agree as in the full benchmark (99%)."""
    from quick import Ratio, best_cpu

    torch.manual_seed(0)
    torch.set_num_threads(1)  # as under OMP_NUM_THREADS=1: spinning idle threads would count as CPU time
    adapter = bench_adapter(QUICK["shape"], "float32", "cpu")
    cfg = vgrefine_config(adapter)
    eos = VGRefiner(adapter, cfg).eos
    new = QUICK["max_new_tokens"]
    with tempfile.TemporaryDirectory() as tmp:
        questions = make_questions(Path(tmp), QUICK["images"], QUICK["per_image"], 224)
        c_pub, ref = best_cpu(lambda: published(adapter, questions, cfg, new, eos), QUICK["repeats"])
        c_ours, got = best_cpu(lambda: ours(adapter, questions, cfg, new, QUICK["batch_size"]), QUICK["repeats"])
    same_answer, same_cells = agreement(ref, got)
    n = len(questions)
    return [Ratio("vgrefine: published CPU / VGRefiner CPU", c_pub / c_ours,
                  f"{1e3 * c_pub / n:.0f} vs {1e3 * c_ours / n:.0f} ms CPU/question, {n} questions, "
                  f"builtin:{QUICK['shape']}, batch {QUICK['batch_size']}; identical answers {100 * same_answer:.0f}%, "
                  f"cells {100 * same_cells:.0f}%", same=same_answer >= 0.99)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--questions-per-image", type=int, default=2, help="questions per image")
    parser.add_argument("--batch-size", type=int, default=8, help="questions per batch in (b)")
    parser.add_argument("--max-new-tokens", type=int, default=10, help="greedy answer length (random weights "
                        "rarely stop early, so every answer has this length)")
    parser.add_argument("--top-k", type=int, default=20, help="triage heads")
    parser.add_argument("--percentile", type=float, default=80.0, help="triage percentile")
    parser.add_argument("--mode", default="prefill", choices=["prefill", "consistent"], help="knockout mode")
    parser.add_argument("--quick", action="store_true", help="only the quick guard's check (tiny-llava, 8 questions; "
                        "floor of benchmarks/quick.py, exit 1 below it); other options are ignored")
    args = parser.parse_args()
    if args.quick:
        from quick import run_checks

        return run_checks(["bench_vqa"])
    torch.manual_seed(0)
    adapter = bench_adapter(args.shape, args.dtype, args.device, args.max_layers)
    cfg = vgrefine_config(adapter, args.top_k, args.percentile, args.mode)
    eos = VGRefiner(adapter, cfg).eos
    with tempfile.TemporaryDirectory() as tmp:
        questions = make_questions(Path(tmp), args.images, args.questions_per_image, args.image_side)
        published(adapter, questions[:1], cfg, 2, eos)  # warm-up of both paths
        ours(adapter, questions[:2], cfg, 2, args.batch_size)
        ref, t_pub, m_pub = timed(lambda: published(adapter, questions, cfg, args.max_new_tokens, eos), args.device)
        got, t_ours, m_ours = timed(lambda: ours(adapter, questions, cfg, args.max_new_tokens, args.batch_size),
                                    args.device)
    n = len(questions)
    same_answer, same_cells = agreement(ref, got)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    mem = "CUDA max allocated" if args.device.startswith("cuda") else "peak RSS growth"
    print(f"model: {adapter.name} ({adapter.n_layers} layers x {adapter.n_heads} heads), {args.dtype}, "
          f"{args.device} [{device_name}], torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"inputs: {n} questions on {args.images} images; {len(cfg.heads)} triage heads, knockout layer "
          f"{cfg.knockout_layers[0]}, percentile {cfg.percentile:g}, mode {cfg.mode}, "
          f"{args.max_new_tokens} new tokens max")
    print(f"(a) published recipe : {n / t_pub:8.2f} q/s  ({1000 * t_pub / n:7.1f} ms/q)  "
          f"peak {m_pub.peak / 2**20:9.1f} MiB ({mem} {m_pub.extra / 2**20:8.1f} MiB)")
    print(f"(b) vgmed-eval (b={args.batch_size}): {n / t_ours:8.2f} q/s  ({1000 * t_ours / n:7.1f} ms/q)  "
          f"peak {m_ours.peak / 2**20:9.1f} MiB ({mem} {m_ours.extra / 2**20:8.1f} MiB)")
    print(f"speed-up: {t_pub / t_ours:.2f}x;  identical greedy answers: {100 * same_answer:.1f}% of questions; "
          f"identical knocked-out cells: {100 * same_cells:.1f}%")
    return 0 if same_answer >= 0.99 else 1


if __name__ == "__main__":
    raise SystemExit(main())
