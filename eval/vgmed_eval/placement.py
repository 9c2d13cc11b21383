"""``--device-map``: a model bigger than one GPU, its layers spread over several devices.

Checkpoints go through transformers' own big-model loading (``from_pretrained(device_map=...)``,
accelerate underneath); tiny built-in models, which have no checkpoint, go through the same
accelerate calls. Each decoder layer stays whole on one device and accelerate's hooks move the
activations between devices, so capture and knockout need nothing more: the attention function
builds its masks and maps on the device of the query it is called with. ``max_memory`` caps each
device (``0=70GiB,1=70GiB,cpu=200GiB``); what does not fit goes to the CPU, then to
``offload_folder`` on disk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Placement:
    """How to spread one model: accelerate's strategy, per-device caps, where disk offload goes."""

    device_map: str
    max_memory: dict[int | str, int | str] | None = None
    offload_folder: str | None = None

    def hf_kwargs(self) -> dict:
        """Keyword arguments of ``from_pretrained``."""
        kwargs: dict = {"device_map": self.device_map}
        if self.max_memory:
            kwargs["max_memory"] = self.max_memory
        if self.offload_folder:
            kwargs["offload_folder"] = self.offload_folder
        return kwargs


def parse_max_memory(spec: str | None) -> dict[int | str, int | str] | None:
    """``0=70GiB,1=70GiB,cpu=200GiB`` -> ``{0: "70GiB", 1: "70GiB", "cpu": "200GiB"}`` (plain numbers are bytes)."""
    if not spec:
        return None
    out: dict[int | str, int | str] = {}
    for part in spec.split(","):
        device, sep, size = part.strip().partition("=")
        if not sep or not device or not size:
            raise ValueError(f"--max-memory: {part.strip()!r} is not DEVICE=SIZE (e.g. 0=70GiB or cpu=200GiB)")
        key: int | str = int(device) if device.isdigit() else device
        if isinstance(key, str) and key not in ("cpu", "disk") and not key.startswith(("cuda", "xpu", "mps")):
            raise ValueError(f"--max-memory: unknown device {device!r} (GPU index, cpu or disk)")
        out[key] = int(size) if size.isdigit() else size
    return out


def rank_gpus(local_rank: int, local_size: int, n_gpus: int) -> list[int]:
    """The GPUs one rank of a launcher spreads its model over: an equal, disjoint slice of the node's."""
    per_rank = n_gpus // local_size
    if per_rank < 1:
        raise ValueError(f"{local_size} processes per node but {n_gpus} GPUs: --device-map needs at least one each")
    return list(range(local_rank * per_rank, (local_rank + 1) * per_rank))


def dispatch(model: torch.nn.Module, placement: Placement) -> torch.nn.Module:
    """Spread an already-built model the way ``from_pretrained(device_map=...)`` spreads a checkpoint."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = list(getattr(model, "_no_split_modules", None) or [])
    max_memory = placement.max_memory
    if placement.device_map == "balanced":
        max_memory = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split)
    device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split)
    if "disk" in device_map.values() and not placement.offload_folder:
        raise ValueError("the model does not fit the --max-memory given; add --offload-folder DIR for disk offload")
    model = dispatch_model(model, device_map=device_map, offload_dir=placement.offload_folder)
    model.hf_device_map = device_map
    return model


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a batch goes: the first GPU of a spread model (accelerate's main device), else its device."""
    device_map = getattr(model, "hf_device_map", None)
    if not device_map:
        return model.device
    gpus = [d for d in device_map.values() if d not in ("cpu", "disk", "meta")]
    if not gpus:
        return torch.device("cpu")
    return torch.device(f"cuda:{gpus[0]}" if isinstance(gpus[0], int) else gpus[0])


def requested(device_map: str | None, max_memory: str | None = None, offload_folder: str | None = None,
              local_rank: int = 0, local_size: int = 1) -> Placement | None:
    """The Placement that ``--device-map``, ``--max-memory`` and ``--offload-folder`` ask for (None: one device,
    ``--device``); a rank of a launched run takes its share of its node's GPUs."""
    if device_map is None:
        if max_memory or offload_folder:
            raise ValueError("--max-memory and --offload-folder need --device-map")
        return None
    caps = parse_max_memory(max_memory)
    if caps is None and local_size > 1 and torch.cuda.is_available():
        from accelerate.utils import get_max_memory

        free = get_max_memory()  # free memory per GPU and of the CPU, as accelerate measures it
        gpus = rank_gpus(local_rank, local_size, torch.cuda.device_count())
        caps = {**{g: free[g] for g in gpus}, "cpu": free["cpu"] // local_size}
    return Placement(device_map, caps, offload_folder)
