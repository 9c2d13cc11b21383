"""Checkpoint files, shared by every converter (LLaVA, InternVL-Chat, VILA): reading weight files and
their shapes, checking them against the target model, JSON configs, the tokenizer with its image token,
vocabulary growth, and writing a converted checkpoint (weights, then config, processor and notes) so that
an interrupted conversion never leaves a half one at its destination."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from tqdm import tqdm

from vgmed_build.errors import VgmedError

IMAGE_TOKEN = "<image>"
GROW_MULTIPLE = 64  # grown vocabularies are padded to a multiple of this (as transformers' script does)
GROW_SCALE = 1e-5  # covariance scale of the new rows
EMBED, LM_HEAD = "model.language_model.embed_tokens.weight", "lm_head.weight"


class ConvertError(VgmedError, ValueError):
    """A checkpoint that cannot be converted; the message names the file and what is wrong."""


# ------------------------------------------------------------------------------------ weight files
def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files in shard order: safetensors when present, else PyTorch .bin."""
    for index_name, single, pattern in (("model.safetensors.index.json", "model.safetensors", "*.safetensors"),
                                        ("pytorch_model.bin.index.json", "pytorch_model.bin", "pytorch_model*.bin")):
        index = folder / index_name
        if index.is_file():
            try:
                names = json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()
            except (ValueError, KeyError, AttributeError) as exc:
                raise ConvertError(f"{index}: not a weight index ({exc})") from exc
            files = [folder / n for n in dict.fromkeys(names)]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise ConvertError(f"{index}: lists missing shard(s) {', '.join(missing)}")
            return files
        if (folder / single).is_file():
            return [folder / single]
        found = sorted(folder.glob(pattern))
        if found:
            return found
    return []


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of one weight file (``.bin`` memory-mapped, never unpickling code)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # corrupt, truncated, or a pickle with code in it
        raise ConvertError(f"{path}: cannot read weights: {type(exc).__name__}: {exc}") from exc


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of one weight file, without loading safetensors data."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as fh:
                return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
        except Exception as exc:
            raise ConvertError(f"{path}: cannot read weights: {type(exc).__name__}: {exc}") from exc
    return {k: tuple(v.shape) for k, v in read_weights(path).items()}


def source_shapes(paths: list[Path], rename) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of the weight files under their new names (``rename`` gives None to drop one); a key
    ``rename`` refuses is reported with the file it came from."""
    return mapped_shapes(paths, lambda key, shape: {} if (new := rename(key)) is None else {new: shape})


def mapped_shapes(paths: list[Path], mapping) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of the weight files as ``mapping(key, shape)`` gives them: ``{new name: shape}``, with
    several entries for a fused tensor split in parts, none for one dropped; a key ``mapping`` refuses
    is reported with the file it came from."""
    source: dict[str, tuple[int, ...]] = {}
    for path in paths:
        for key, shape in weight_shapes(path).items():
            try:
                source.update(mapping(key, shape))
            except ConvertError as exc:
                raise ConvertError(f"{path}: {exc}") from exc
    return source


def fitted_shapes(src: Path, what: str, model_class, config, source: dict[str, tuple[int, ...]]) -> dict:
    """The tensor shapes of ``model_class(config)`` (built on the meta device, so nothing is allocated),
    after checking ``source`` against them: a ConvertError names up to five missing, unexpected and
    mis-shaped tensors, so a wrong checkpoint fails before any weight is read. A tied LM head is dropped
    from both (``source`` in place): the model has no tensor of its own for it."""
    with torch.device("meta"):
        target = {k: tuple(v.shape) for k, v in model_class(config).state_dict().items()}
    if config.tie_word_embeddings:
        target.pop(LM_HEAD, None)
        source.pop(LM_HEAD, None)
    missing, extra = sorted(set(target) - set(source)), sorted(set(source) - set(target))
    wrong = sorted(k for k in set(target) & set(source) if target[k] != source[k])
    problems = ([f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"] if missing else []) + \
               ([f"unexpected {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}"] if extra else []) + \
               [f"{k} has shape {source[k]}, the model needs {target[k]}" for k in wrong[:5]]
    if problems:
        raise ConvertError(f"{src}: the weights do not fit {what}: " + "; ".join(problems))
    return target


# ---------------------------------------------------------------------------------- vocabulary growth
def grown_rows(n_tokens: int, rows: int) -> int:
    """Embedding rows needed for ``n_tokens`` tokens: unchanged when they fit, else the next multiple of 64."""
    return rows if n_tokens <= rows else math.ceil(n_tokens / GROW_MULTIPLE) * GROW_MULTIPLE


def grow_shapes(source: dict[str, tuple[int, ...]], n_tokens: int) -> int:
    """The embedding rows for ``n_tokens`` tokens (:func:`grown_rows`), with the embedding's and LM head's
    shapes in ``source`` set to them (in place), as the converted tensors will be."""
    rows = grown_rows(n_tokens, source[EMBED][0])
    for key in (EMBED, LM_HEAD):
        if key in source:
            source[key] = (rows, *source[key][1:])
    return rows


def grow(weight: torch.Tensor, rows: int, seed: int = 0) -> torch.Tensor:
    """``weight`` with rows appended, drawn from N(mean, 1e-5 * covariance) of its existing rows.

    Sampled as mean + sqrt(1e-5 / n) * (W - mean)^T z with z ~ N(0, I_n): exactly that distribution,
    with no Cholesky factor (the covariance of a large vocabulary is often singular)."""
    n, _ = weight.shape
    if rows <= n:
        return weight
    w = weight.float()
    mean = w.mean(0)
    z = torch.randn(rows - n, n, generator=torch.Generator().manual_seed(seed))
    new = mean + math.sqrt(GROW_SCALE / n) * (z @ (w - mean))
    return torch.cat([weight, new.to(weight.dtype)])


def own_storage(tensor: torch.Tensor, seen: set[int]) -> torch.Tensor:
    """``tensor`` contiguous, with storage of its own: tied tensors of a ``.bin`` share storage, which
    safetensors refuses to save (``seen``: the storages already taken in this shard)."""
    tensor = tensor.contiguous()
    if tensor.data_ptr() in seen:
        tensor = tensor.clone()
    seen.add(tensor.data_ptr())
    return tensor


def converted_tensors(tensors: dict[str, torch.Tensor], rename, shapes: dict, rows: int) -> dict[str, torch.Tensor]:
    """One shard's tensors under their new names (``rename`` gives None to drop one; names outside
    ``shapes``, the target's, are dropped too), the embedding and LM head grown to ``rows``."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in tensors.items():
        new = rename(key)
        if new is None or new not in shapes:
            continue
        if new in (EMBED, LM_HEAD):
            value = grow(value, rows, seed=0 if new == EMBED else 1)
        out[new] = own_storage(value, seen)
    return out


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConvertError(f"{path}: not found") from exc
    except (OSError, ValueError) as exc:
        raise ConvertError(f"{path}: cannot read JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConvertError(f"{path}: expected a JSON object")
    return data


def load_tokenizer(src: Path, template: str):
    from tokenizers import AddedToken
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # it reads config.json and warns that llava_* is not a tokenizer's model
    try:
        tok = AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError) as exc:
        raise ConvertError(f"{src}: cannot load the tokenizer: {exc}") from exc
    finally:
        hf_logging.set_verbosity(level)
    if IMAGE_TOKEN not in tok.get_vocab():
        tok.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    if tok.pad_token is None:  # LLaVA pads with unk (LLaMA) or eos (Qwen2)
        tok.pad_token = tok.unk_token or tok.eos_token
    tok.chat_template = template
    return tok


def write_extras(work: Path, saved: list, notes: dict, generation_config: Path, template: str | None = None) -> None:
    """What a converted checkpoint holds beside its weights: each of ``saved`` (config, tokenizer, processor)
    by its ``save_pretrained``, the chat template as ``chat_template.jinja`` when given, the source's
    generation config when it has one, and ``notes`` (what the conversion chose) as ``vgmed_convert.json``."""
    for item in saved:
        item.save_pretrained(work)
    if template is not None:
        (work / "chat_template.jinja").write_text(template, encoding="utf-8")
    if generation_config.is_file():
        shutil.copy2(generation_config, work / "generation_config.json")
    (work / "vgmed_convert.json").write_text(json.dumps(notes, indent=2) + "\n", encoding="utf-8")


def assemble(dst: Path, parts: list, finish, progress: bool = True) -> None:
    """Write each part (a callable returning tensors) as one safetensors shard into ``DST.converting``,
    then the index and what ``finish(folder)`` writes (config, processor, notes), and rename the folder
    to DST: an interrupted conversion never leaves a half checkpoint at DST."""
    from safetensors.torch import save_file

    work = dst.with_name(dst.name + ".converting")
    if work.exists():  # our own leftover from an interrupted conversion
        shutil.rmtree(work)
    work.mkdir(parents=True)
    weight_map: dict[str, str] = {}
    total = 0
    for i, part in enumerate(tqdm(parts, desc="convert", unit="shard", disable=not progress)):
        tensors = part()
        name = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        save_file(tensors, work / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
    (work / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2)
        + "\n", encoding="utf-8")
    finish(work)
    if dst.exists():
        dst.rmdir()
    work.rename(dst)


def check_destination(dst: Path) -> None:
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ConvertError(f"{dst}: already exists and is not an empty folder; choose a new destination")
