"""``run.json``: what a grounding / vqa / causal / reproduce output was made with, so it can be made again.

One record per output folder: the model (its id, a sha256 of each weight file, its revision, dtype,
attention implementation, the chat template and the prompt it renders), the protocol and every flag
of the command, the scorer, the seeds, the device, the versions of torch / transformers / vgmed and
the git commit of vgmed when it runs from a checkout. ``vgmed-eval report`` reads the protocol back
(:func:`protocol_of`) and refuses to draw runs of different protocols in one figure.

Weights of a built-in tiny model are not hashed (they are made from a seed): its config is recorded
instead. Hashes are kept per (file, size, modification time) for the life of the process, so a
``reproduce`` that loads the same checkpoint in every step reads its files once.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

MANIFEST = "run.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
PACKAGES = ("vgmed", "torch", "transformers", "accelerate", "tokenizers", "numpy", "pillow")
_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    """sha256 of one file (cached by path, size and mtime for this process)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder (any depth: a converted tower may sit in a subfolder)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def checkpoint_folder(model: str) -> Path | None:
    """The local folder of ``--model``: the folder itself, or a hub id's snapshot in the local cache."""
    if Path(model).is_dir():
        return Path(model)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=model, local_files_only=True))
    except Exception:  # not a hub id, or not cached: nothing to hash
        return None


def model_record(model: str, adapter=None) -> dict:
    """Id, weights and loading facts of the model a command ran (``adapter``: the loaded one, if any)."""
    record: dict = {"id": model}
    if model.startswith("builtin:"):
        record["weights"] = "built-in tiny model, random weights from a fixed seed: not hashed"
        if adapter is not None:
            record["config"] = adapter.model.config.to_dict()
    else:
        folder = checkpoint_folder(model)
        files = weight_files(folder) if folder else []
        record["weights"] = {p.relative_to(folder).as_posix(): file_sha256(p) for p in files} if files else \
            "no local weight files found to hash"
    if adapter is not None:
        config = adapter.model.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        record.update(
            family=adapter.family, revision=getattr(config, "_commit_hash", None),
            dtype=str(adapter.model.dtype).removeprefix("torch."),
            attention_implementation=getattr(text, "_attn_implementation", None),
            chat_template=adapter.chat_template,
            chat_template_sha256=hashlib.sha256(str(adapter.chat_template).encode("utf-8")).hexdigest(),
            prompt_template=adapter.prompt("{question}"),
            device=str(adapter.device), n_layers=adapter.n_layers, n_heads=adapter.n_heads,
        )
        record["device_name"] = _device_name(adapter.device)
    return record


def _device_name(device) -> str:
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(where: Path | None = None) -> dict | None:
    """The commit of the vgmed checkout this code runs from (and whether it has uncommitted changes),
    or None when it is an installed copy without git."""
    where = where or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def flags(options: Mapping[str, object]) -> dict:
    """Every option of the command as given or defaulted (``vars(args)``; JSON-safe, the handler left out)."""
    return {k: _jsonable(v) for k, v in sorted(options.items()) if k != "func" and not callable(v)}


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def build(command: str, options: Mapping[str, object], *, model: str | None = None, adapter=None,
          protocol: dict | None = None, scorer: str | None = None, seeds: dict | None = None,
          extra: dict | None = None) -> dict:
    """The manifest of one command's output."""
    return {
        "command": command, "argv": sys.argv[1:], "flags": flags(options),
        "protocol": protocol, "scorer": scorer, "seeds": seeds or {},
        "model": model_record(model, adapter) if model else None,
        "packages": package_versions(), "vgmed_git": git_commit(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }


def write(out: Path, manifest: dict) -> Path:
    """``OUT/run.json`` (written whole, then renamed)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / MANIFEST
    scratch = path.with_name(f"{MANIFEST}.partial")
    scratch.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    scratch.replace(path)
    return path


def read(folder: Path) -> dict | None:
    try:
        return json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def protocol_of(folder: Path, results_file: str) -> dict | None:
    """The protocol an output was measured under: its run.json, else the ``protocol`` of its results file
    (``summary.json`` / ``results.json``; outputs made before run.json); None when neither says."""
    manifest = read(folder)
    if manifest and manifest.get("protocol"):
        return manifest["protocol"]
    try:
        return json.loads((Path(folder) / results_file).read_text(encoding="utf-8")).get("protocol")
    except (OSError, ValueError):
        return None


def protocol_differences(runs: list[tuple[str, dict | None]]) -> list[str]:
    """For runs meant for one figure, ``label: field=value`` lines where their protocols differ (empty: they
    agree). A run that records no protocol counts as vgmed's default, as it was made before the choice."""
    from vgmed_eval.protocol import VGMED

    known = [(label, protocol or VGMED.as_dict()) for label, protocol in runs]
    if len(known) < 2:
        return []
    keys = sorted({k for _, p in known for k in p})
    differing = [k for k in keys if len({json.dumps(p.get(k)) for _, p in known}) > 1]
    return [f"{label}: " + ", ".join(f"{k}={p.get(k)!r}" for k in differing) for label, p in known] if differing else []
