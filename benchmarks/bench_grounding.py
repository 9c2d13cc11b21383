"""Grounding throughput: the published recipe versus vgmed-eval, same model, same inputs, one run.

(a) published: eager attention, ``output_attentions=True`` on every layer, batch 1, the general-prompt
    pass recomputed for every question, last-row maps sliced from the full attention matrices;
(b) ours: SDPA everywhere + last-row capture on the measured layers, batched prompts, the general map
    computed once per image (the real ``GroundingRun`` code path, metrics included).
Both score every question on every layer and head; the script checks that the per-(layer, head)
attention ratios and the raw maps agree (float32: 1e-4; float16/bfloat16: looser, see --rtol), then
prints questions/s and peak memory (CUDA: max allocated; CPU: peak RSS growth, /proc VmHWM) of each.

CPU, tiny model (the default):
    .venv/bin/python benchmarks/bench_grounding.py --shape tiny-llava --images 8 --questions-per-image 2
GPU, random-weight models of real size (weights cannot be downloaded; shapes only):
    python benchmarks/bench_grounding.py --device cuda --dtype float16 --shape llava-7b --batch-size 8
    python benchmarks/bench_grounding.py --device cuda --dtype float16 --shape qwen2vl-7b --batch-size 8
HuatuoGPT-Vision-7B's original checkpoint shape, converted first (to run on a GPU; --shape huatuo-mini on a CPU):
    python benchmarks/bench_grounding.py --device cuda --dtype bfloat16 --shape huatuo-7b --batch-size 8
Its check of the quick guard (benchmarks/quick.py):
    .venv/bin/python benchmarks/bench_grounding.py --quick
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from paper_shapes import SHAPES, converted_adapter
from PIL import Image

from vgmed_eval.adapters import MODEL_ADAPTERS, load_adapter
from vgmed_eval.attention import install
from vgmed_eval.grounding import GroundingRun, capture_maps
from vgmed_eval.metrics import grounding_metrics
from vgmed_eval.prompts import GENERAL_PROMPT
from vgmed_eval.prompts import short_answer as question_prompt
from vgmed_eval.release_io import Question

QUESTION_TEXTS = ["Is there a liver in the image?", "What is the shape of the lesion?",
                  "Where is the nodule located?", "Is there a mass in the left lung?"]


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The model and workload options this benchmark shares with bench_vqa.py (read by ``bench_adapter``)."""
    parser.add_argument("--shape", default="tiny-llava",
                        help="tiny-<family> (a builtin tiny model), llava-7b / qwen2vl-7b / medrega / vila-m3-8b "
                             "(random real-size; the last two as `convert` writes MedRegA and VILA-M3), or "
                             "huatuo-7b / huatuo-mini (HuatuoGPT-Vision-7B's original layout at real / reduced size, "
                             "converted by `vgmed-eval convert` first)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--max-layers", type=int, default=None,
                        help="cap the LLM and vision depth of the real-size shapes (smoke test on a small machine)")
    parser.add_argument("--images", type=int, default=8, help="number of images")
    parser.add_argument("--image-side", type=int, default=224, help="approximate image side in pixels")


def bench_adapter(shape: str, dtype: str, device: str, max_layers: int | None = None):
    """``tiny-<family>`` (the built-in tiny model), a random-weight real-size shape (llava-7b, qwen2vl-7b), or
    a paper shape (huatuo-7b, huatuo-mini) written as an original checkpoint and converted by `vgmed-eval convert`."""
    if shape.startswith("tiny-"):
        return load_adapter(f"builtin:{shape}", dtype=dtype, device=device)
    if shape in SHAPES:
        adapter, seconds = converted_adapter(shape, dtype, device, max_layers)
        print(f"{shape}: random original llava_qwen2 checkpoint converted in {seconds:.1f} s")
        return adapter
    torch.set_default_dtype(getattr(torch, dtype))
    with torch.device(device):
        adapter = real_size_adapter(shape, max_layers)
    torch.set_default_dtype(torch.float32)
    install(adapter.model)
    return adapter


def real_size_adapter(shape: str, max_layers: int | None = None):
    """A random-weight model with a real checkpoint's shapes, built directly in the default device/dtype.

    ``max_layers`` caps the LLM and vision depths (a smoke test of this path on a small machine)."""

    def depth(n: int) -> int:
        return min(n, max_layers) if max_layers else n

    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    if shape == "llava-7b":  # llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14-336 + Llama-2-7B
        tiny = MODEL_ADAPTERS.get("llava").tiny()
        vision = CLIPVisionConfig(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096,
                                  num_hidden_layers=depth(24), num_attention_heads=16, projection_dim=768)
        text = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=depth(32),
                           num_attention_heads=32,
                           num_key_value_heads=32, vocab_size=32064, pad_token_id=tiny.tokenizer.pad_token_id)
        config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tiny.image_token_id,
                             image_seq_length=576, vision_feature_layer=-2, vision_feature_select_strategy="default")
        config._attn_implementation = "sdpa"
        ip = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
        proc = LlavaProcessor(image_processor=ip, tokenizer=tiny.tokenizer, patch_size=14,
                              vision_feature_select_strategy="default", chat_template=tiny.chat_template,
                              num_additional_image_tokens=1)
        return type(tiny)(LlavaForConditionalGeneration(config).eval(), tiny.tokenizer, ip, tiny.chat_template,
                          proc, name="random llava-1.5-7b shape")
    if shape == "qwen2vl-7b":  # Qwen/Qwen2-VL-7B-Instruct, 1024 image tokens for an 896 x 896 image
        tiny = MODEL_ADAPTERS.get("qwen2_vl").tiny()
        cfg = tiny.model.config
        text = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=depth(28), num_attention_heads=28,
                    num_key_value_heads=4, vocab_size=152064, pad_token_id=tiny.tokenizer.pad_token_id,
                    rope_parameters=dict(rope_type="default", mrope_section=[16, 24, 24], rope_theta=1e6))
        vision = dict(depth=depth(32), embed_dim=1280, hidden_size=3584, num_heads=16, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2)
        config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=cfg.image_token_id,
                               video_token_id=cfg.video_token_id, vision_start_token_id=cfg.vision_start_token_id,
                               vision_end_token_id=cfg.vision_end_token_id)
        config._attn_implementation = "sdpa"
        ip = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 1024, max_pixels=28 * 28 * 1024)
        return type(tiny)(Qwen2VLForConditionalGeneration(config).eval(), tiny.tokenizer, ip, tiny.chat_template,
                          None, name="random qwen2-vl-7b shape")
    if shape in INTERNVL_SHAPES:
        return internvl_shape_adapter(shape, depth)
    raise ValueError(f"unknown shape {shape}")


# MedRegA (InternVL-Chat-V1-2: InternViT-6B-448px-V1-2, 45 layers, RMS norms, q/k norm; Nous-Hermes-2-Yi-34B;
# one 448 px tile, ps_version v1) and VILA-M3-8B (VILA 1.5: SigLIP so400m at 384 px, 27 x 27 -> 14 x 14;
# Llama-3-8B), as `vgmed-eval convert` writes them: (vision kind, vision config, text config, tile, select layer).
INTERNVL_SHAPES = {
    "medrega": ("internvit", dict(hidden_size=3200, intermediate_size=12800, num_hidden_layers=45,
                                  num_attention_heads=25, use_qk_norm=True, norm_type="rms_norm", attention_bias=False),
                dict(hidden_size=7168, intermediate_size=20480, num_hidden_layers=60, num_attention_heads=56,
                     num_key_value_heads=8, vocab_size=64000), 448, -1),
    "vila-m3-8b": ("siglip", dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                  num_attention_heads=16, vision_use_head=False),
                   dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                        num_key_value_heads=8, vocab_size=128256), 384, -2),
}


def internvl_shape_adapter(shape: str, depth):
    """A random-weight InternVL-class model of MedRegA's or VILA-M3's shape (one tile, v1 token order)."""
    from transformers import (
        GotOcr2ImageProcessorPil,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLVisionConfig,
        LlamaConfig,
        SiglipVisionConfig,
    )

    kind, vision, text, tile, select = INTERNVL_SHAPES[shape]
    tiny = MODEL_ADAPTERS.get("internvl").tiny()
    vision_cls = InternVLVisionConfig if kind == "internvit" else SiglipVisionConfig
    vision = vision_cls(**{**vision, "num_hidden_layers": depth(vision["num_hidden_layers"])}, image_size=tile,
                        patch_size=14)
    text = LlamaConfig(**{**text, "num_hidden_layers": depth(text["num_hidden_layers"])},
                       pad_token_id=tiny.tokenizer.pad_token_id, tie_word_embeddings=False)
    cells = -(-(tile // 14) // 2)
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=tiny.image_token_id,
                            image_seq_length=cells * cells, vision_feature_layer=select,
                            vision_feature_select_strategy="default" if kind == "internvit" else "full",
                            tie_word_embeddings=False)
    config.ps_version = "v1"
    config._attn_implementation = "sdpa"
    ip = GotOcr2ImageProcessorPil(size={"height": tile, "width": tile}, crop_to_patches=False, max_patches=1)
    return type(tiny)(InternVLForConditionalGeneration(config).eval(), tiny.tokenizer, ip, tiny.chat_template, None,
                      name=f"random {shape} shape")


def make_questions(root: Path, n_images: int, per_image: int, side: int) -> list[Question]:
    rng = np.random.default_rng(0)
    questions = []
    for i in range(n_images):
        w, h = side + 37 * (i % 3), side - 23 * (i % 2)  # some non-square sizes
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        for j in range(per_image):
            x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
            box = (x0, y0, x0 + w // 3, y0 + h // 3)
            questions.append(Question(id=f"q{i}-{j}", image=path, image_rel=path.name,
                                      question=QUESTION_TEXTS[(i + j) % len(QUESTION_TEXTS)], boxes=[box],
                                      q_type="localization", modality="CT", source="bench"))
    return questions


class Peak:
    """Peak memory of a block: CUDA max allocated, or growth of the process's peak RSS (VmHWM)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.base = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.peak = _status_kib("VmHWM") * 1024
        self.extra = self.peak - self.base


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def published_recipe(adapter, questions: list[Question], layers: list[int]) -> tuple[dict, dict]:
    """Per question: two eager passes returning every attention matrix, batch 1."""
    adapter.model.set_attn_implementation("eager")
    scores, maps = {}, {}
    try:
        for q in questions:
            image = Image.open(q.image).convert("RGB")
            pair = []
            for text in (question_prompt(q.question), GENERAL_PROMPT):
                batch = adapter.build_inputs([image], [text])
                with torch.inference_mode():
                    att = adapter.model(**batch.inputs, output_attentions=True, use_cache=False).attentions
                pos = batch.grid_positions[0].to(att[0].device)
                pair.append(torch.stack([att[layer][0, :, -1, pos].float() for layer in layers]).cpu().numpy())
            gt = adapter.geometry(image.width, image.height).boxes_to_cells(q.boxes).reshape(-1)
            scores[q.id] = grounding_metrics(pair[0], pair[1], gt)["attention_ratio"]
            maps[q.id] = pair[0]
    finally:
        install(adapter.model)
    return scores, maps


def ours(adapter, questions: list[Question], layers: list[int], batch_size: int) -> dict:
    run = GroundingRun(adapter, layers, batch_size)
    run.run(questions, progress=False)
    per_head = run.per_head()
    n_heads = adapter.n_heads
    return {qid: g.sort_values(["layer", "head"])["attention_ratio"].to_numpy().reshape(len(layers), n_heads)
            for qid, g in per_head.groupby("id")}


def agreement(adapter, check: list[Question], layers: list[int], ref_maps: dict, ref_scores: dict,
              our_scores: dict, tol: float) -> tuple[bool, float, float, float]:
    """(same, max map diff, max map value, max relative ratio diff): our maps of ``check`` (one batch) against
    the published recipe's, and every question's per-(layer, head) ratios."""
    our_maps = capture_maps(adapter, [Image.open(q.image).convert("RGB") for q in check],
                            [question_prompt(q.question) for q in check], layers, "last")
    map_err = max(float(np.abs(our_maps[i] - ref_maps[q.id]).max()) for i, q in enumerate(check))
    map_scale = max(float(np.abs(ref_maps[q.id]).max()) for q in check)
    ratio_err = max(float(np.nanmax(np.abs(our_scores[q] - ref_scores[q]) / np.abs(ref_scores[q])))
                    for q in ref_scores)
    same = map_err <= tol * map_scale and ratio_err <= tol and set(our_scores) == set(ref_scores)
    return same, map_err, map_scale, ratio_err


QUICK = {"shape": "tiny-llava", "images": 8, "per_image": 2, "batch_size": 8, "repeats": 3}


def quick(only: str | None = None) -> list:
    """Check of benchmarks/quick.py: CPU of the published recipe over ``GroundingRun``'s on 16 questions of
    the tiny LLaVA, best of 3 each, with the maps and ratios checked as in the full benchmark (1e-4)."""
    from quick import Ratio, best_cpu

    torch.manual_seed(0)
    torch.set_num_threads(1)  # as under OMP_NUM_THREADS=1: spinning idle threads would count as CPU time
    adapter = bench_adapter(QUICK["shape"], "float32", "cpu")
    layers = list(range(adapter.n_layers))
    with tempfile.TemporaryDirectory() as tmp:
        questions = make_questions(Path(tmp), QUICK["images"], QUICK["per_image"], 224)
        c_pub, (ref_scores, ref_maps) = best_cpu(lambda: published_recipe(adapter, questions, layers),
                                                 QUICK["repeats"])
        c_ours, our_scores = best_cpu(lambda: ours(adapter, questions, layers, QUICK["batch_size"]), QUICK["repeats"])
        same, map_err, _, ratio_err = agreement(adapter, questions[: QUICK["batch_size"]], layers, ref_maps,
                                                ref_scores, our_scores, 1e-4)
    n = len(questions)
    return [Ratio("grounding: published CPU / vgmed-eval CPU", c_pub / c_ours,
                  f"{1e3 * c_pub / n:.0f} vs {1e3 * c_ours / n:.0f} ms CPU/question, {n} questions, "
                  f"builtin:{QUICK['shape']}, batch {QUICK['batch_size']}; maps and ratios "
                  f"{'SAME' if same else 'DIFFERENT'} (max diff {map_err:.1e}, ratios {ratio_err:.1e})", same=same)]


def timed(fn, device: str):
    with Peak(device) as peak:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return result, elapsed, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--questions-per-image", type=int, default=2,
                        help="questions per image (VGMED has a localization and an attribute question per region)")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size of (b)")
    parser.add_argument("--rtol", type=float, default=None,
                        help="tolerance on maps and ratios (default 1e-4 in float32, 2e-2 in half precision)")
    parser.add_argument("--quick", action="store_true", help="only the quick guard's check (tiny-llava, 16 questions; "
                        "floor of benchmarks/quick.py, exit 1 below it); other options are ignored")
    args = parser.parse_args()
    if args.quick:
        from quick import run_checks

        return run_checks(["bench_grounding"])
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    adapter = bench_adapter(args.shape, args.dtype, args.device, args.max_layers)
    layers = list(range(adapter.n_layers))
    tol = args.rtol or (1e-4 if dtype == torch.float32 else 2e-2)
    with tempfile.TemporaryDirectory() as tmp:
        questions = make_questions(Path(tmp), args.images, args.questions_per_image, args.image_side)
        published_recipe(adapter, questions[:1], layers)  # warm-up of both paths
        ours(adapter, questions[:2], layers, args.batch_size)
        (ref_scores, ref_maps), t_pub, m_pub = timed(lambda: published_recipe(adapter, questions, layers), args.device)
        our_scores, t_ours, m_ours = timed(lambda: ours(adapter, questions, layers, args.batch_size), args.device)
        same, map_err, map_scale, ratio_err = agreement(adapter, questions[: args.batch_size], layers, ref_maps,
                                                         ref_scores, our_scores, tol)
    n = len(questions)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    mem = "CUDA max allocated" if args.device.startswith("cuda") else "peak RSS growth"
    print(f"model: {adapter.name} ({adapter.n_layers} layers x {adapter.n_heads} heads), {args.dtype}, "
          f"{args.device} [{device_name}], torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"inputs: {n} questions on {args.images} images, all layers and heads scored")
    print(f"(a) published recipe : {n / t_pub:8.2f} q/s  ({1000 * t_pub / n:7.1f} ms/q)  "
          f"peak {m_pub.peak / 2**20:9.1f} MiB ({mem} {m_pub.extra / 2**20:8.1f} MiB)")
    print(f"(b) vgmed-eval (b={args.batch_size}): {n / t_ours:8.2f} q/s  ({1000 * t_ours / n:7.1f} ms/q)  "
          f"peak {m_ours.peak / 2**20:9.1f} MiB ({mem} {m_ours.extra / 2**20:8.1f} MiB)")
    print(f"speed-up: {t_pub / t_ours:.2f}x;  max |map diff| {map_err:.2e} (max map value {map_scale:.2e}), "
          f"max rel ratio diff {ratio_err:.2e}, tolerance {tol:g}: {'SAME' if same else 'DIFFERENT'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
