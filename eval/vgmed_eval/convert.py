"""`vgmed-eval convert`: an original LLaVA-format checkpoint -> transformers' LlavaForConditionalGeneration.

HuatuoGPT-Vision (``llava_qwen2``), LLaVA-Med v1.5 (``llava_mistral``) and the LLaVA-1.5 originals
(``llava`` / ``llava_llama``) ship as LLaVA's own code's checkpoints: the text model's weights under
``model.*``, the projector under ``model.mm_projector``, sometimes the CLIP tower under
``model.vision_tower.vision_tower``, and the tower's own folder (config, preprocessor, weights) at
``mm_vision_tower``. The evaluator runs transformers-native models only, so they are converted once:

- weights renamed to transformers' layout, one source shard -> one output shard (a 7B conversion
  holds about one shard in memory); the tower from the checkpoint when it carries one (it may be
  fine-tuned), else from the tower folder;
- the tokenizer gains an ``<image>`` token; when its id falls outside the embedding matrix, the
  embedding and output rows grow (to a multiple of 64) with rows drawn from the existing rows' mean
  and 1e-5 times their covariance, as transformers' own LLaVA conversion does;
- the processor pads to a square with the CLIP mean colour when the checkpoint says
  ``image_aspect_ratio: pad`` (LLaVA's ``expand2square``), then CLIP's resize and centre crop;
- the family's prompt becomes the chat template; ``image_seq_length``, ``vision_feature_layer`` and
  ``vision_feature_select_strategy`` come from the tower and ``mm_vision_select_layer`` / ``_feature``.

Everything is checked against the target model's parameter names and shapes before anything is
written, and the result is assembled in a sibling folder and renamed into place at the end, so an
interrupted or refused conversion leaves no half checkpoint at DST.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vgmed_eval.chat_templates import HUATUO, LLAVA_MED, PROMPTS, VICUNA, FamilyPrompt, read_template, recognise
from vgmed_eval.checkpoint_io import (
    EMBED,
    IMAGE_TOKEN,
    LM_HEAD,
    ConvertError,
    assemble,
    check_destination,
    converted_tensors,
    fitted_shapes,
    grow_shapes,
    load_tokenizer,
    read_json,
    read_weights,
    source_shapes,
    weight_files,
    write_extras,
)

log = logging.getLogger(__name__)

PROJ_1, PROJ_2 = "model.multi_modal_projector.linear_1", "model.multi_modal_projector.linear_2"
# Config keys of LLaVA's own code that are not text-model settings.
_LLAVA_KEYS = {"architectures", "model_type", "_name_or_path", "transformers_version", "image_aspect_ratio",
               "image_grid_pinpoints", "tokenizer_model_max_length", "tokenizer_padding_side", "use_mm_proj",
               "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "unfreeze_mm_vision_tower"}
_PIXEL_KEYS = ("do_resize", "resample", "do_center_crop", "do_rescale", "rescale_factor", "do_normalize",
               "image_mean", "image_std", "do_convert_rgb")


@dataclass(frozen=True)
class Family:
    model_type: str
    text_type: str  # transformers model_type of the text model
    prompt: FamilyPrompt
    example: str


FAMILIES = {f.model_type: f for f in (
    Family("llava_qwen2", "qwen2", HUATUO, "HuatuoGPT-Vision-7B"),
    Family("llava_mistral", "mistral", LLAVA_MED, "LLaVA-Med v1.5"),
    Family("llava", "llama", VICUNA, "LLaVA-1.5"),
    Family("llava_llama", "llama", VICUNA, "LLaVA-1.5, HuatuoGPT-Vision-34B"),
)}


# ----------------------------------------------------------------------------------- name mapping
_TOWER_IN_CHECKPOINT = "model.vision_tower.vision_tower."
_PROJECTOR = re.compile(r"model\.mm_projector\.(?:(\d+)\.)?(weight|bias)")


def checkpoint_key(key: str, projector: str) -> str | None:
    """Original LLaVA name -> transformers name; None for buffers that are not weights."""
    if key.endswith(".rotary_emb.inv_freq"):
        return None
    if key.startswith(_TOWER_IN_CHECKPOINT):
        return tower_key(key[len(_TOWER_IN_CHECKPOINT):])
    match = _PROJECTOR.fullmatch(key)
    if match:
        index, kind = match[1], match[2]
        layer = {"linear": {None: PROJ_1}, "mlp2x_gelu": {"0": PROJ_1, "2": PROJ_2}}[projector].get(index)
        if layer is None:
            raise ConvertError(f"projector weight {key} does not fit mm_projector_type {projector!r}")
        return f"{layer}.{kind}"
    if key.startswith("model."):
        return "model.language_model." + key[len("model."):]
    if key == "lm_head.weight":
        return LM_HEAD
    raise ConvertError(f"unexpected weight {key!r}")


def tower_key(key: str) -> str | None:
    """A CLIP checkpoint's name -> the converted tower's; None for CLIP's text half and projections."""
    if key.startswith("vision_model."):
        key = key[len("vision_model."):]
    elif key.startswith(("text_model.", "text_projection", "visual_projection", "logit_scale")):
        return None
    if key.endswith("position_ids"):
        return None
    return "model.vision_tower." + key


# ------------------------------------------------------------------------------------------ planning
@dataclass
class Plan:
    """Everything read and checked before writing: configs, sources, processor, target shapes."""

    src: Path
    family: Family
    files: list[Path]
    tower: Path
    tower_files: list[Path]  # empty when the checkpoint carries the tower itself
    projector: str
    config: object  # LlavaConfig
    processor: object  # LlavaProcessor
    rows: int  # embedding rows after growth
    template_name: str
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # target name -> shape

    def describe(self) -> str:
        return (f"{self.family.model_type}, {self.projector} projector, prompt {self.template_name}, tower from "
                f"{'the checkpoint' if not self.tower_files else self.tower}")


def _projector(cfg: dict, path: Path) -> str:
    kind = cfg.get("mm_projector_type", "linear")
    if kind == "linear" or kind == "mlp2x_gelu":
        return kind
    if re.fullmatch(r"mlp(\d+)x_gelu", str(kind)):
        raise ConvertError(f"{path}: mm_projector_type {kind!r} has more layers than transformers' LLaVA "
                           "projector (two linear layers); only linear and mlp2x_gelu convert")
    raise ConvertError(f"{path}: unsupported mm_projector_type {kind!r} (supported: linear, mlp2x_gelu)")


def _resolve_tower(src: Path, cfg: dict, vision_tower: Path | None) -> Path:
    if vision_tower is not None:
        if not (vision_tower / "config.json").is_file():
            raise ConvertError(f"--vision-tower {vision_tower}: no config.json there (expected a CLIP checkpoint)")
        return vision_tower
    name = cfg.get("mm_vision_tower") or cfg.get("vision_tower")
    if not name:
        raise ConvertError(f"{src / 'config.json'}: no mm_vision_tower; give the CLIP tower with --vision-tower DIR")
    for candidate in (src / name, Path(name)):
        if (candidate / "config.json").is_file():
            return candidate
    raise ConvertError(f"{src / 'config.json'}: vision tower {name!r} is neither a folder in the checkpoint nor a "
                       "local path; give a local copy of it with --vision-tower DIR")


def _vision_config(tower: Path):
    from transformers import CLIPVisionConfig

    data = read_json(tower / "config.json")
    if "vision_config" in data:  # a whole CLIPModel checkpoint
        data = data["vision_config"]
    data = {k: v for k, v in data.items() if k not in ("model_type", "architectures", "transformers_version")}
    try:
        return CLIPVisionConfig(**data)
    except (TypeError, ValueError) as exc:
        raise ConvertError(f"{tower / 'config.json'}: not a CLIP vision config: {exc}") from exc


def _image_processor(tower: Path, image_size: int, pad: bool):
    """CLIP's preprocessing from the tower's preprocessor_config.json, padded to square when asked."""
    from transformers import LlavaImageProcessorPil

    path = tower / "preprocessor_config.json"
    data = read_json(path) if path.is_file() else {}
    if not data:
        log.warning("%s: not found; using CLIP's defaults at %d px", path, image_size)
    size, crop = data.get("size", image_size), data.get("crop_size", image_size)
    size = {"shortest_edge": size} if isinstance(size, int) else size
    crop = {"height": crop, "width": crop} if isinstance(crop, int) else crop
    kwargs = {k: data[k] for k in _PIXEL_KEYS if k in data}
    return LlavaImageProcessorPil(size=size, crop_size=crop, do_pad=pad, **kwargs)


def _text_config(cfg: dict, family: Family, rows: int):
    from transformers import AutoConfig

    kwargs = {k: v for k, v in cfg.items() if k not in _LLAVA_KEYS and not k.startswith("mm_")}
    kwargs.pop("vision_tower", None)
    kwargs["vocab_size"] = rows
    if "torch_dtype" in kwargs:
        kwargs.setdefault("dtype", kwargs.pop("torch_dtype"))
    try:
        return AutoConfig.for_model(family.text_type, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConvertError(f"{family.model_type} text config: {exc}") from exc


def plan(src: Path, *, vision_tower: Path | None = None, chat_template: Path | None = None,
         prompt: str | None = None) -> Plan:
    """Read and check everything; raise :class:`ConvertError` before anything is written."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    src = Path(src)
    cfg_path = src / "config.json"
    cfg = read_json(cfg_path)
    model_type = cfg.get("model_type")
    if model_type not in FAMILIES:
        raise ConvertError(f"{cfg_path}: model_type {model_type!r} is not an original LLaVA-format checkpoint this "
                           f"converts; supported: {', '.join(f'{k} ({f.example})' for k, f in FAMILIES.items())}")
    family = FAMILIES[model_type]
    if cfg.get("mm_use_im_start_end"):
        raise ConvertError(f"{cfg_path}: mm_use_im_start_end is set (image start/end tokens); transformers' LLaVA "
                           "has no such tokens")
    aspect = cfg.get("image_aspect_ratio") or "square"
    if aspect not in ("pad", "square"):
        raise ConvertError(f"{cfg_path}: image_aspect_ratio {aspect!r} (LLaVA-NeXT tiling) does not convert to "
                           "LLaVA-1.5's single image; supported: pad, square")
    select = cfg.get("mm_vision_select_feature", "patch")
    strategies = {"patch": "default", "cls_patch": "full"}
    if select not in strategies:
        raise ConvertError(f"{cfg_path}: mm_vision_select_feature {select!r}; supported: patch, cls_patch")
    projector = _projector(cfg, cfg_path)
    files = weight_files(src)
    if not files:
        raise ConvertError(f"{src}: no weight files (model*.safetensors or pytorch_model*.bin)")
    tower = _resolve_tower(src, cfg, vision_tower)
    vision = _vision_config(tower)

    if chat_template is not None:
        template, template_name = read_template(chat_template), str(chat_template)
    else:
        chosen = PROMPTS[prompt] if prompt else recognise(src.resolve().name) or family.prompt
        template, template_name = chosen.template, chosen.name
    tok = load_tokenizer(src, template)

    source = source_shapes(files, lambda key: checkpoint_key(key, projector))
    tower_files: list[Path] = []
    if not any(k.startswith("model.vision_tower.") for k in source):
        tower_files = weight_files(tower)
        if not tower_files:
            raise ConvertError(f"{src} carries no vision tower weights and {tower} has no weight files")
        source.update(source_shapes(tower_files, tower_key))
    if EMBED not in source:
        raise ConvertError(f"{src}: no model.embed_tokens.weight in the checkpoint")
    rows = grow_shapes(source, len(tok))
    if projector == "linear":
        hidden = source[f"{PROJ_1}.weight"][0]
        source[f"{PROJ_2}.weight"], source[f"{PROJ_2}.bias"] = (hidden, hidden), (hidden,)

    text = _text_config(cfg, family, rows)
    patch, side = int(vision.patch_size), int(vision.image_size)
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(side // patch) ** 2, vision_feature_layer=int(cfg.get("mm_vision_select_layer", -2)),
        vision_feature_select_strategy=strategies[select],
        projector_hidden_act="gelu" if projector == "mlp2x_gelu" else "linear", multimodal_projector_bias=True,
        tie_word_embeddings=bool(getattr(text, "tie_word_embeddings", False)),
    )
    if getattr(text, "dtype", None) is not None:
        config.dtype = text.dtype
    target = fitted_shapes(src, f"a {family.text_type} LLaVA model", LlavaForConditionalGeneration, config, source)
    processor = LlavaProcessor(
        image_processor=_image_processor(tower, side, aspect == "pad"), tokenizer=tok, patch_size=patch,
        vision_feature_select_strategy=strategies[select], chat_template=template, num_additional_image_tokens=1,
    )
    return Plan(src=src, family=family, files=files, tower=tower, tower_files=tower_files, projector=projector,
                config=config, processor=processor, rows=rows, template_name=template_name, shapes=target)


# ------------------------------------------------------------------------------------------- writing
def convert(src: Path, dst: Path, *, vision_tower: Path | None = None, chat_template: Path | None = None,
            prompt: str | None = None, progress: bool = True):
    """Convert ``src`` into a new transformers checkpoint at ``dst`` (which must not hold files yet).
    VILA 1.5 (``llm/``, ``vision_tower/``, ``mm_projector/`` folders) goes to :mod:`vgmed_eval.convert_vila`,
    InternVL-Chat (``model_type internvl_chat``) to :mod:`vgmed_eval.convert_internvl`."""
    src, dst = Path(src), Path(dst)
    check_destination(dst)
    from vgmed_eval import convert_internvl, convert_vila

    if convert_vila.is_vila(src):
        return convert_vila.convert(src, dst, chat_template=chat_template, prompt=prompt, progress=progress)
    if read_json(src / "config.json").get("model_type") == "internvl_chat":
        return convert_internvl.convert(src, dst, chat_template=chat_template, prompt=prompt, progress=progress)
    p = plan(src, vision_tower=vision_tower, chat_template=chat_template, prompt=prompt)
    seen_dtype = [torch.float32]

    def part(path: Path, rename):
        def read() -> dict[str, torch.Tensor]:
            tensors = converted_tensors(read_weights(path), rename, p.shapes, p.rows)
            if f"{PROJ_1}.weight" in tensors:
                seen_dtype[0] = tensors[f"{PROJ_1}.weight"].dtype
            return tensors
        return read

    def identity() -> dict[str, torch.Tensor]:  # one linear layer = linear_1, then identity (activation "linear")
        w, dtype = p.shapes[f"{PROJ_2}.weight"][0], seen_dtype[0]
        return {f"{PROJ_2}.weight": torch.eye(w, dtype=dtype), f"{PROJ_2}.bias": torch.zeros(w, dtype=dtype)}

    parts = [part(f, lambda k: checkpoint_key(k, p.projector)) for f in p.files]
    parts += [part(f, tower_key) for f in p.tower_files] + ([identity] if p.projector == "linear" else [])

    notes = {"source_model_type": p.family.model_type, "source": str(src), "vision_tower": str(p.tower),
             "vision_tower_weights": "checkpoint" if not p.tower_files else "tower folder", "projector": p.projector,
             "chat_template": p.template_name, "embedding_rows": p.rows,
             "image_token_index": p.config.image_token_index}
    assemble(dst, parts, lambda work: write_extras(work, [p.config, p.processor], notes,
                                                   src / "generation_config.json"), progress)
    return p
