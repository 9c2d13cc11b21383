"""Read and steer LLM attention over image tokens without ``output_attentions=True``.

One attention function is registered with transformers' ``AttentionInterface`` under
:data:`ATTN_NAME` (plus ``sdpa_mask`` as its mask builder, so padding and Gemma 3's bidirectional
image block reach it). It runs SDPA on every layer. While a :func:`capture` context is active it
also computes, on the requested layers only, the softmax of the last prompt row (or of every row
after the image) over all keys and keeps the image-token columns: one ``q.K^T`` row per layer
instead of the full ``q x kv`` matrix of every layer. While a :func:`knockout` context is active it
adds a boolean block so that query positions from ``from_position`` on cannot attend to chosen key
positions, during prefill and (optionally) decoding with a KV cache.

Positions are columns of the (left-padded) batch: the same for every layer during prefill. In decode
the key columns of a layer are the last ``kv_len`` positions seen by that layer, which keeps the
mapping right for Gemma 3's sliding-window caches whose columns do not start at position 0.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from vgmed_eval.geometry import TokenCover

ATTN_NAME = "vgmed_sdpa"
_STATE = threading.local()


def _active() -> list:
    if not hasattr(_STATE, "contexts"):
        _STATE.contexts = []
    return _STATE.contexts


@contextlib.contextmanager
def _installed(ctx) -> Iterator[None]:
    """``ctx`` seen by this thread's attention hooks while the block runs, and no longer after it, even
    when it raises."""
    _active().append(ctx)
    try:
        yield
    finally:
        _active().remove(ctx)


def llm_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Decoder layers of the language model (``model.model.language_model.layers`` in all families)."""
    inner = getattr(model, "model", model)
    lm = getattr(inner, "language_model", None)
    if lm is None or not hasattr(lm, "layers"):
        raise TypeError(f"{type(model).__name__} has no model.language_model.layers; not a supported VLM")
    return list(lm.layers)


def install(model: torch.nn.Module) -> None:
    """Register the function (idempotent) and select it for the LLM; the vision tower keeps SDPA."""
    AttentionInterface.register(ATTN_NAME, _attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
    model.set_attn_implementation({"text_config": ATTN_NAME, "vision_config": "sdpa"})


def _pad_positions(positions: Sequence[torch.Tensor] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row position lists -> (B, N) padded index tensor and (B, N) validity mask."""
    if isinstance(positions, torch.Tensor):
        return positions.long(), torch.ones_like(positions, dtype=torch.bool)
    rows = [torch.as_tensor(p, dtype=torch.long).reshape(-1) for p in positions]
    n = max((len(r) for r in rows), default=0)
    index = torch.zeros(len(rows), n, dtype=torch.long)
    valid = torch.zeros(len(rows), n, dtype=torch.bool)
    for b, r in enumerate(rows):
        index[b, : len(r)] = r
        valid[b, : len(r)] = True
    return index, valid


@dataclass
class _Context:
    """Common bookkeeping: which attention modules belong to the model, and positions seen per layer."""

    modules: dict[int, int]  # id(self_attn) -> layer index
    layers: frozenset[int]
    seen: dict[int, int] = field(default_factory=dict)

    def layer_of(self, module: torch.nn.Module) -> int | None:
        layer = self.modules.get(id(module))
        return layer if layer is not None and layer in self.layers else None

    def advance(self, layer: int, q_len: int, kv_len: int) -> tuple[int, int]:
        """Absolute position of the first query row and of the first key column for this call."""
        end = self.seen.get(layer, kv_len - q_len) + q_len
        self.seen[layer] = end
        return end - q_len, end - kv_len


def _module_map(model: torch.nn.Module) -> dict[int, int]:
    return {id(layer.self_attn): i for i, layer in enumerate(llm_layers(model))}


def _check_layers(model: torch.nn.Module, layers: Sequence[int] | None) -> frozenset[int]:
    n = len(llm_layers(model))
    chosen = range(n) if layers is None else [layer % n if layer < 0 else layer for layer in layers]
    bad = [layer for layer in chosen if not 0 <= layer < n]
    if bad:
        raise ValueError(f"layers {bad} out of range: the LLM has {n} layers")
    return frozenset(chosen)


@dataclass
class Capture(_Context):
    """Captured maps: ``maps[layer]`` is a float32 (B, H, N) tensor over the image positions
    (NaN where a row has fewer than N image positions)."""

    index: torch.Tensor = None  # (B, N) absolute key positions of the image tokens
    valid: torch.Tensor = None  # (B, N)
    rows: str = "last"
    question_from: torch.Tensor | None = None  # (B,) first position of the question rows
    maps: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass
class Knockout(_Context):
    """Boolean block: query positions >= ``from_position`` (per row) cannot see ``blocked`` keys."""

    blocked: torch.Tensor = None  # (B, n_positions) bool over absolute positions
    from_position: torch.Tensor = None  # (B,)
    decode: bool = True
    calls: dict[int, int] = field(default_factory=dict)


@contextlib.contextmanager
def capture(
    model: torch.nn.Module,
    layers: Sequence[int] | None,
    image_positions: Sequence[torch.Tensor] | torch.Tensor,
    rows: str = "last",
    question_from: int | torch.Tensor | None = None,
) -> Iterator[Capture]:
    """Capture image-token attention on ``layers`` (None = all) during the forward passes inside.

    ``image_positions``: per batch row, the absolute positions of the image tokens to keep (in the
    order of the visual grid). ``rows="last"`` keeps the last prompt row (the published metric);
    ``rows="question"`` averages the rows from ``question_from`` (per row; default: after the last
    of ``image_positions``) to the end, i.e. the question and assistant-prefix tokens.
    """
    if rows not in ("last", "question"):
        raise ValueError(f"rows must be 'last' or 'question', got {rows!r}")
    index, valid = _pad_positions(image_positions)
    if question_from is None:
        question_from = torch.where(valid, index, torch.full_like(index, -1)).max(dim=1).values + 1
    question_from = torch.as_tensor(question_from, dtype=torch.long).reshape(-1).expand(index.shape[0])
    ctx = Capture(modules=_module_map(model), layers=_check_layers(model, layers), index=index,
                  valid=valid, rows=rows, question_from=question_from.clone())
    with _installed(ctx):
        yield ctx


def blocked_positions(
    image_positions: Sequence[torch.Tensor] | torch.Tensor,
    indices: Sequence[Sequence[int] | torch.Tensor],
    n_positions: int,
) -> torch.Tensor:
    """Per-row image-token indices (into ``image_positions``) -> (B, n_positions) boolean block."""
    index, valid = _pad_positions(image_positions)
    out = torch.zeros(index.shape[0], n_positions, dtype=torch.bool)
    for b, idx in enumerate(indices):
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        if len(idx) and (idx.max() >= int(valid[b].sum()) or idx.min() < 0):
            raise IndexError(f"row {b}: image-token index out of range 0..{int(valid[b].sum()) - 1}")
        out[b, index[b, idx]] = True
    return out


def blocked_tokens(covers: Sequence[TokenCover], cells: Sequence, n_positions: int) -> torch.Tensor:
    """Per row, the chosen grid ``cells`` ((N,) bool) -> (B, n_positions) boolean block of every image
    token whose region lies within them (:meth:`TokenCover.inside`: on one grid, the cells' own tokens)."""
    out = torch.zeros(len(covers), n_positions, dtype=torch.bool)
    for b, (cover, chosen) in enumerate(zip(covers, cells, strict=True)):
        out[b, torch.from_numpy(cover.chosen_tokens(torch.as_tensor(chosen).cpu().numpy()))] = True
    return out


@contextlib.contextmanager
def knockout(
    model: torch.nn.Module,
    layers: Sequence[int],
    blocked: torch.Tensor,
    from_position: int | torch.Tensor,
    decode: bool = True,
) -> Iterator[Knockout]:
    """Block attention from positions ``>= from_position`` to ``blocked`` keys on ``layers``.

    ``blocked`` is a (B, n_positions) boolean tensor over absolute positions (see
    :func:`blocked_positions`). With ``decode=False`` only the first (prefill) call of each layer is
    blocked, the published VGRefine behaviour; with ``decode=True`` decoding steps are blocked too,
    which equals a full recomputation with the block.
    """
    blocked = torch.as_tensor(blocked, dtype=torch.bool)
    start = torch.as_tensor(from_position, dtype=torch.long).reshape(-1).expand(blocked.shape[0]).clone()
    ctx = Knockout(modules=_module_map(model), layers=_check_layers(model, layers), blocked=blocked,
                   from_position=start, decode=decode)
    with _installed(ctx):
        yield ctx


def _allowed(mask: torch.Tensor | None, batch: int, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """The mask as a boolean (B, 1, q, kv) tensor, True = may attend (causal when ``mask`` is None)."""
    if mask is None:
        allowed = (k_pos[None, :] <= q_pos[:, None])[None, None]
    elif mask.dtype == torch.bool:
        allowed = mask
    else:
        allowed = mask > torch.finfo(mask.dtype).min / 2
    return allowed.expand(batch, 1, len(q_pos), len(k_pos))


def _block(ctx: Knockout, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """(B, 1, q, kv) True where the knockout forbids attention (built on the model's device)."""
    ctx.blocked, ctx.from_position = ctx.blocked.to(q_pos.device), ctx.from_position.to(q_pos.device)
    k_in = (k_pos >= 0) & (k_pos < ctx.blocked.shape[1])
    cols = torch.zeros(ctx.blocked.shape[0], len(k_pos), dtype=torch.bool, device=q_pos.device)
    cols[:, k_in] = ctx.blocked[:, k_pos[k_in]]
    rows = q_pos[None, :] >= ctx.from_position[:, None]
    return (rows[:, :, None] & cols[:, None, :])[:, None]


def _row_weights(
    module, query: torch.Tensor, key: torch.Tensor, allowed: torch.Tensor | None, scaling: float, softcap
) -> torch.Tensor:
    """Softmax over keys of the given query rows, float32, (B, H, r, kv); ``allowed``: (B, 1, r, kv)."""
    groups = query.shape[1] // key.shape[1]
    scores = torch.matmul(query.float(), repeat_kv(key, groups).float().transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1)


def _capture(ctx: Capture, module, query, key, allowed, q_pos, k_pos, scaling, softcap, layer) -> None:
    device = query.device
    index, valid = ctx.index.to(device), ctx.valid.to(device)
    cols = (index - k_pos[0]).clamp(min=0, max=key.shape[2] - 1)
    dropped = (index < k_pos[0]) | (index > k_pos[-1])  # not in this layer's (sliding-window) keys: weight 0
    if ctx.rows == "last":
        weights = _row_weights(module, query[:, :, -1:], key, allowed[:, :, -1:], scaling, softcap)[:, :, 0]
    else:
        starts = ctx.question_from.to(device)
        first = max(0, min(int(starts.min().item() - q_pos[0].item()), query.shape[2] - 1))
        w = _row_weights(module, query[:, :, first:], key, allowed[:, :, first:], scaling, softcap)
        use = (q_pos[first:][None, :] >= starts[:, None]).float()  # (B, r)
        weights = (w * use[:, None, :, None]).sum(2) / use.sum(1).clamp(min=1)[:, None, None]
    out = torch.gather(weights, 2, cols[:, None, :].expand(-1, weights.shape[1], -1))
    out = out.masked_fill(dropped[:, None, :], 0.0)
    ctx.maps[layer] = out.masked_fill(~valid[:, None, :], float("nan"))


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA everywhere; capture rows and apply knockout blocks where a context asks for it."""
    contexts = [(c, c.layer_of(module)) for c in _active()]
    contexts = [(c, layer) for c, layer in contexts if layer is not None]
    if not contexts:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    batch, q_len, kv_len = query.shape[0], query.shape[2], key.shape[2]
    q0, k0 = contexts[0][0].advance(contexts[0][1], q_len, kv_len)
    for c, layer in contexts[1:]:
        c.advance(layer, q_len, kv_len)
    q_pos = torch.arange(q0, q0 + q_len, device=query.device)
    k_pos = torch.arange(k0, k0 + kv_len, device=query.device)
    mask = attention_mask
    for c, layer in contexts:
        if isinstance(c, Knockout):
            first_call = c.calls.get(layer, 0) == 0
            c.calls[layer] = c.calls.get(layer, 0) + 1
            if first_call or c.decode:
                mask = _allowed(mask, batch, q_pos, k_pos) & ~_block(c, q_pos, k_pos)
    softcap = kwargs.get("softcap")
    for c, layer in contexts:
        if isinstance(c, Capture) and q_len > 1:
            _capture(c, module, query, key, _allowed(mask, batch, q_pos, k_pos), q_pos, k_pos, scaling,
                     softcap, layer)
    return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling, **kwargs)
