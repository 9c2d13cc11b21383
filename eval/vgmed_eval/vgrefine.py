"""VGRefine: attention triage on visually sensitive heads, then knockout of low-attention image tokens.

Step I (triage): with the question prompt, each top-k head's attention from the last prompt token
over the image grid is divided by its layer's head-averaged map for the general-description prompt
and the ratios are averaged over the heads; cells below the 80th percentile of that map (or below a
min-max-normalised cutoff) are "low attention". Step II (knockout): on the knockout layer(s), every
position after the image may not attend to the image tokens showing only those cells (the cells' own
tokens; with InternVL's tiles, also those of the tiles or thumbnail that show the same regions, see
:meth:`vgmed_eval.geometry.TileLayout.cover`); the answer is decoded greedily.

Why it is fast: the chat templates put the image before the text, so every position up to the last
image token is identical in the question pass, the general-prompt pass and the knockout pass.
Those keys and values are computed once per image (a "prefix" KV cache) and copied for each use;
the general-prompt map is computed once per image; questions (of any images) run as one batch with
their text suffixes left-padded *after* the prefix, so every row keeps its prefix in the same cache
columns. Decoding is greedy with the cache.

Modes: ``consistent`` (default) blocks the image tokens in the prompt pass and in every decoding
step, which equals recomputing the whole sequence with the block (a well-defined model: every
answer token sees the same refined image). ``prefill`` blocks the prompt pass only, as the public
code does; the two agree on the first answer token (the public protocol answers with one letter).
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from vgmed_build.errors import VgmedError
from vgmed_eval.attention import blocked_tokens, capture, knockout
from vgmed_eval.geometry import TokenCover
from vgmed_eval.numerics import TRIAGE_FLOOR
from vgmed_eval.prompts import GENERAL_PROMPT

if TYPE_CHECKING:  # the adapters package imports every family
    from vgmed_eval.adapters import Adapter

MODES = ("consistent", "prefill")
THRESHOLDS = ("percentile", "minmax")


# ------------------------------------------------------------------------------------- configuration
class HeadsFileError(VgmedError, ValueError):
    """heads.json is missing or malformed."""


@dataclass(frozen=True)
class VGRefineConfig:
    heads: tuple[tuple[int, int], ...]  # (layer, head) triage heads
    knockout_layers: tuple[int, ...]
    percentile: float = 80.0  # cells below this percentile of the triage map are knocked out
    threshold: str = "percentile"  # or "minmax": knock out cells whose min-max-normalised score < cutoff
    minmax_cutoff: float = 0.5
    rows: str = "last"  # "last" prompt token (published) or the average over all "question" tokens
    mode: str = "consistent"

    def __post_init__(self) -> None:
        if not self.heads:
            raise ValueError("VGRefine needs at least one triage head")
        if not self.knockout_layers:
            raise ValueError("VGRefine needs at least one knockout layer")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.threshold not in THRESHOLDS:
            raise ValueError(f"threshold must be one of {THRESHOLDS}, got {self.threshold!r}")
        if not 0 <= self.percentile <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {self.percentile}")
        if self.rows not in ("last", "question"):
            raise ValueError(f"rows must be 'last' or 'question', got {self.rows!r}")

    @property
    def triage_layers(self) -> list[int]:
        return sorted({layer for layer, _ in self.heads})

    def check_fits(self, n_layers: int, n_heads: int, model: str, source: str) -> None:
        """Refuse heads or knockout layers the model does not have (heads picked on another model)."""
        heads = [f"({layer},{head})" for layer, head in self.heads
                 if not (0 <= layer < n_layers and 0 <= head < n_heads)]
        layers = [str(layer) for layer in self.knockout_layers if not 0 <= layer < n_layers]
        if heads or layers:
            what = "; ".join(filter(None, [f"heads {' '.join(heads[:5])}" + (" ..." if len(heads) > 5 else "")
                                           if heads else "", f"knockout layer(s) {', '.join(layers)}" if layers
                                           else ""]))
            raise ValueError(f"{source}: {what} outside {model}, which has {n_layers} layers of {n_heads} "
                             "attention heads (layers and heads count from 0); these heads were picked on "
                             "another model: pick this model's with `vgmed-eval heads`")


def load_heads(path: str | Path) -> tuple[tuple[tuple[int, int], ...], int, str | None]:
    """(heads, knockout_layer, model) from a ``vgmed-eval heads`` JSON file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HeadsFileError(f"{path}: heads file not found") from None
    except json.JSONDecodeError as exc:
        raise HeadsFileError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    return heads_from(data, str(path))


def heads_from(data: dict, where: str) -> tuple[tuple[tuple[int, int], ...], int, str | None]:
    """(heads, knockout_layer, model) from a heads mapping (a heads file's content or published heads)."""
    try:
        heads = tuple((int(layer), int(head)) for layer, head in data["heads"])
        layer = int(data["knockout_layer"])
    except (KeyError, TypeError, ValueError) as exc:
        raise HeadsFileError(
            f"{where}: expected {{'knockout_layer': int, 'heads': [[layer, head], ...]}} ({exc!r})"
        ) from None
    if not heads:
        raise HeadsFileError(f"{where}: 'heads' is empty")
    return heads, layer, data.get("model")


# --------------------------------------------------------------------------------------- triage (pure)
def triage_scores(
    question_maps: dict[int, torch.Tensor], general_maps: dict[int, torch.Tensor], heads: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """Mean over ``heads`` of question map / head-averaged general map of the head's layer.

    ``question_maps[layer]``: (B, H, N); ``general_maps[layer]``: (B, H, N) or (H, N). Returns (B, N).
    """
    ratios = []
    for layer, head in heads:
        general = general_maps[layer].float().mean(dim=-2)  # head average, (B, N) or (N,)
        ratios.append(question_maps[layer][:, head].float() / general.clamp_min(TRIAGE_FLOOR))
    return torch.stack(ratios).mean(dim=0)


def low_attention(scores: torch.Tensor, config: VGRefineConfig) -> torch.Tensor:
    """Boolean (N,) mask of the cells to knock out, for one row of valid (non-NaN) scores."""
    if config.threshold == "percentile":
        cut = torch.quantile(scores.double(), config.percentile / 100.0)
        return scores.double() < cut
    lo, hi = scores.min(), scores.max()
    span = (hi - lo).clamp_min(TRIAGE_FLOOR)
    return (scores - lo) / span < config.minmax_cutoff


# -------------------------------------------------------------------------------------------- engine
@dataclass
class Prefix:
    """Keys and values of one image's shared prompt prefix (everything up to the last image token)."""

    ids: torch.Tensor  # (P,) token ids
    cache: object  # transformers DynamicCache, batch 1
    next_position: int  # position id of the first token after the prefix (mrope-aware)
    grid: torch.Tensor  # (N,) positions of the grid's image tokens (< P)
    cover: TokenCover  # the image tokens a knockout of grid cells blocks (InternVL: every tile's and the thumbnail's)
    general_suffix: torch.Tensor | None = None  # (S,) the general prompt's tokens after the prefix
    general: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (H, N) general-prompt map

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])


@dataclass
class Answer:
    text: str
    tokens: list[int]
    knocked_out: int | None = None  # number of grid cells knocked out (VGRefine answers)
    cells: list[int] | None = None  # their row-major grid indices
    grid_cells: int | None = None
    step_logits: list[torch.Tensor] | None = None  # per generated token, kept when keep_logits (tests)


@dataclass
class Query:
    """One question on one image, already split into the shared prefix and its own suffix."""

    prefix: Prefix
    suffix: torch.Tensor  # (S,) token ids after the prefix


# (baseline answers or None, VGRefine or knocked-out answers or None), each in the order of the queries
Answers = tuple[list[Answer] | None, list[Answer] | None]


@dataclass
class _Pass:
    """A prompt pass over a batch of queries, ready to decode from: the cache, each row's last logits,
    mask and position ids, the (prefix, suffix) column layout, and the triage layers' maps when captured."""

    cache: object
    logits: torch.Tensor  # (B, vocab)
    mask: torch.Tensor
    positions: torch.Tensor
    layout: tuple[int, int]
    maps: dict[int, torch.Tensor]  # layer -> (B, H, N) question maps; empty when not captured


class PrefixMismatch(VgmedError, RuntimeError):
    """The chat template does not put the image before the text, so no prefix can be shared."""


class VGRefiner:
    """Baseline and VGRefine answers for a model adapter (any family), with shared prefix caches."""

    def __init__(self, adapter: Adapter, config: VGRefineConfig | None, max_new_tokens: int = 16,
                 keep_logits: bool = False, min_new_tokens: int = 0):
        self.adapter = adapter
        self.keep_logits = keep_logits
        self.model = adapter.model
        self.config = config
        self.max_new_tokens = max_new_tokens
        self.min_new_tokens = min_new_tokens  # end-of-sequence is not taken before this many tokens
        tok = adapter.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos = set(eos) | ({tok.eos_token_id} if tok.eos_token_id is not None else set())
        self.device = adapter.device

    # ----- prefixes --------------------------------------------------------------------------------
    def _encode(self, image: Image.Image, text: str):
        batch = self.adapter.build_inputs([image], [text])
        ids = batch.inputs["input_ids"][0]
        last_image = int(self.adapter.image_token_spans(batch.inputs["input_ids"])[0].max())
        return batch, ids, last_image + 1

    def prefix(self, image: Image.Image) -> Prefix:
        return self.prefixes([image])[0]

    @torch.no_grad()
    def prefixes(self, images: list[Image.Image]) -> list[Prefix]:
        """Run the shared prefixes once and keep their caches; the general maps come later.

        Images whose prefix inputs have the same shapes (every image, for fixed-grid families) run as
        one batch; each keeps a batch-1 view of the batch's cache.
        """
        encoded = [self._encode(image, GENERAL_PROMPT) for image in images]
        sequence = self.adapter.sequence_keys
        groups: dict[tuple, list[int]] = {}
        for i, (batch, _, p) in enumerate(encoded):
            if all(isinstance(v, torch.Tensor) for v in batch.inputs.values()):
                key = tuple((k, tuple(v.shape[1:])) for k, v in sorted(batch.inputs.items()) if k not in sequence)
            else:  # inputs that cannot be concatenated: a batch of its own
                key = ("single", i)
            groups.setdefault((p, key), []).append(i)
        out: list = [None] * len(images)
        for (p, _), idx in groups.items():
            inputs = {k: torch.cat([encoded[i][0].inputs[k] for i in idx]) for k in encoded[idx[0]][0].inputs}
            inputs = {k: (v[:, :p] if k in sequence else v) for k, v in inputs.items()}
            result = self.model(**inputs, use_cache=True, logits_to_keep=1)
            deltas = getattr(getattr(self.model, "model", None), "rope_deltas", None)
            for j, i in enumerate(idx):
                batch, ids, _ = encoded[i]
                shift = int(deltas.reshape(-1)[j]) if isinstance(deltas, torch.Tensor) else 0
                out[i] = Prefix(ids=ids[:p].cpu(), cache=_select(result.cache, j), next_position=p + shift,
                                grid=batch.grid_positions[0].cpu(), cover=batch.covers[0],
                                general_suffix=ids[p:].cpu())
        return out

    def query(self, prefix: Prefix, image: Image.Image, text: str) -> Query:
        _, ids, p = self._encode(image, text)
        if p != prefix.length or not torch.equal(ids[:p].cpu(), prefix.ids):
            raise PrefixMismatch(
                f"{self.adapter.name}: the prompt's tokens up to the image differ between questions; "
                "the chat template must put the image before the text"
            )
        return Query(prefix=prefix, suffix=ids[p:].cpu())

    # ----- batched passes --------------------------------------------------------------------------
    def _assemble(self, rows: list[tuple[Prefix, torch.Tensor]], layout: tuple[int, int] | None = None):
        """Cache, input ids, 2-D mask, position ids and prefix columns for rows laid out as
        [prefix | pad | suffix]; every suffix ends in the last column. ``layout`` = (prefix columns,
        suffix columns) forces another pass's layout (at least as wide as these rows need)."""
        pmax = max(pre.length for pre, _ in rows)
        smax = max(len(suf) for _, suf in rows)
        if layout is not None:
            pmax, smax = max(pmax, layout[0]), max(smax, layout[1])
        b = len(rows)
        ids = torch.full((b, smax), self.pad_id, dtype=torch.long)
        mask = torch.zeros(b, pmax + smax, dtype=torch.long)
        pos = torch.zeros(b, smax, dtype=torch.long)
        for i, (pre, suf) in enumerate(rows):
            n = len(suf)
            ids[i, smax - n:] = suf
            mask[i, : pre.length] = 1
            mask[i, pmax + smax - n:] = 1
            pos[i] = pre.next_position + torch.arange(smax) - (smax - n)
            pos[i, : smax - n] = pre.next_position  # padding: any valid position, it is masked
        cache = _stack_caches([pre.cache for pre, _ in rows], [pre.length for pre, _ in rows], pmax)
        dev = self.device
        return cache, ids.to(dev), mask.to(dev), pos.to(dev), pmax

    def _capture(self, rows: list[tuple[Prefix, torch.Tensor]], pmax: int):
        """Capture context on the triage layers; "question" rows start at each row's own suffix."""
        smax = max(len(suf) for _, suf in rows)
        starts = torch.tensor([pmax + smax - len(suf) for _, suf in rows])
        return capture(self.model, self.config.triage_layers, [pre.grid for pre, _ in rows], rows=self.config.rows,
                       question_from=starts)

    def _forward(self, cache, ids, mask, pos):
        return self.model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                          logits_to_keep=1)

    @torch.no_grad()
    def _greedy(self, cache, logits, mask, next_pos) -> list[Answer]:
        """Greedy decoding from the last prompt logits; rows stop at their first end-of-sequence token."""
        b = logits.shape[0]
        outs: list[list[int]] = [[] for _ in range(b)]
        kept: list[list[torch.Tensor]] = [[] for _ in range(b)]
        done = torch.zeros(b, dtype=torch.bool)
        token = self._pick(logits, 0)
        for step in range(self.max_new_tokens):
            for i, t in enumerate(token.tolist()):
                if not done[i]:
                    if self.keep_logits:
                        kept[i].append(logits[i].float().cpu())
                    if t in self.eos:
                        done[i] = True
                    else:
                        outs[i].append(t)
            if bool(done.all()) or step == self.max_new_tokens - 1:
                break
            mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
            out = self._forward(cache, token[:, None], mask, next_pos[:, None])
            next_pos = next_pos + 1
            logits = out.logits[:, -1]
            token = self._pick(logits, step + 1)
        return [Answer(self._text(t), t, step_logits=k if self.keep_logits else None)
                for t, k in zip(outs, kept, strict=True)]

    def _pick(self, logits: torch.Tensor, step: int) -> torch.Tensor:
        """Greedy token; before ``min_new_tokens`` the end-of-sequence ids are out (transformers'
        ``MinNewTokensLengthLogitsProcessor``, which the published runs use with 1)."""
        if step < self.min_new_tokens and self.eos:
            logits = logits.clone()
            logits[:, [t for t in self.eos if t < logits.shape[-1]]] = float("-inf")
        return logits.argmax(-1)

    def _text(self, tokens: list[int]) -> str:
        return self.adapter.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    def answer(self, queries: list[Query], baseline: bool = True, refined: bool = True) -> Answers:
        """(baseline answers or None, VGRefine answers or None) for one batch of queries, in order.

        Padding sits between prefix and suffix, so a sliding-window layer (Gemma 3) whose window is
        shorter than the batch's columns would see fewer keys in padded rows: then rows are grouped
        by suffix length (no padding) and the general prompts run in their own pass.
        """
        if not self._window_limited(queries):
            return self._answer(queries, baseline, refined)
        if refined:
            self._general_pass([q.prefix for q in queries])
        groups: dict[int, list[int]] = {}
        for i, q in enumerate(queries):
            groups.setdefault(len(q.suffix), []).append(i)
        base: list = [None] * len(queries)
        ref: list = [None] * len(queries)
        for idx in groups.values():
            b, r = self._answer([queries[i] for i in idx], baseline, refined)
            for j, i in enumerate(idx):
                base[i] = b[j] if b else None
                ref[i] = r[j] if r else None
        return (base if baseline else None), (ref if refined else None)

    def _window_limited(self, queries: list[Query]) -> bool:
        windows = [w for layer in queries[0].prefix.cache.layers if (w := getattr(layer, "sliding_window", None))]
        if not windows:
            return False
        suffixes = [len(q.suffix) for q in queries] + [len(q.prefix.general_suffix) for q in queries]
        columns = max(q.prefix.length for q in queries) + max(suffixes) + self.max_new_tokens
        return columns > min(windows)

    @torch.no_grad()
    def _general_pass(self, prefixes: list[Prefix]) -> None:
        """General-prompt maps for the prefixes that lack them, in a pass of their own."""
        todo = list({id(p): p for p in prefixes if not p.general}.values())
        if not todo:
            return
        rows = [(p, p.general_suffix) for p in todo]
        cache, ids, mask, pos, pmax = self._assemble(rows)
        with self._capture(rows, pmax) as cap:
            _start_at(cap, pmax)
            self._forward(cache, ids, mask, pos)
        for j, pre in enumerate(todo):
            pre.general = {layer: m[j, :, : len(pre.grid)].clone() for layer, m in cap.maps.items()}

    @torch.no_grad()
    def _answer(self, queries: list[Query], baseline: bool, refined: bool) -> Answers:
        """One batched question pass (plus the general prompts still missing), then greedy decoding: the
        plain answers, or VGRefine's (its low-attention cells triaged from the pass's maps, knocked out)
        decoded in one batch with the plain ones."""
        if refined and self.config is None:
            raise ValueError("VGRefine answers need a VGRefineConfig (heads and knockout layers)")
        if not (baseline or refined):
            return None, None
        done = self._question_pass(queries, capture=refined)
        if not refined:
            return self._greedy(done.cache, done.logits, done.mask, done.positions[:, -1] + 1), None
        low = self._triage(queries, done.maps)
        state = (done.cache, done.logits, done.mask, done.positions) if baseline else None
        return self._knocked(queries, low, done.layout, state)

    def _lacking_general(self, queries: list[Query]) -> list[Prefix]:
        """The queries' prefixes whose general-prompt maps are not measured yet, each once, in order."""
        return list({id(q.prefix): q.prefix for q in queries if not q.prefix.general}.values())

    def _question_pass(self, queries: list[Query], capture: bool) -> _Pass:
        """The queries' prompt pass; with ``capture``, also the general prompts their prefixes lack, in the
        same batch, whose maps are stored on the prefixes (those rows are then dropped from the cache)."""
        general_rows = self._lacking_general(queries) if capture else []
        rows = [(q.prefix, q.suffix) for q in queries] + [(p, p.general_suffix) for p in general_rows]
        nq = len(queries)
        cache, ids, mask, pos, pmax = self._assemble(rows)
        maps: dict[int, torch.Tensor] = {}
        if capture:
            with self._capture(rows, pmax) as cap:
                _start_at(cap, pmax)
                out = self._forward(cache, ids, mask, pos)
            for j, pre in enumerate(general_rows):
                pre.general = {layer: m[nq + j, :, : len(pre.grid)].clone() for layer, m in cap.maps.items()}
            maps = {layer: m[:nq] for layer, m in cap.maps.items()}
        else:
            out = self._forward(cache, ids, mask, pos)
        if general_rows:
            cache.batch_select_indices(torch.arange(nq, device=ids.device))
            mask, pos = mask[:nq], pos[:nq]
        return _Pass(cache, out.logits[:nq, -1], mask, pos, (pmax, ids.shape[1]), maps)

    @torch.no_grad()
    def answer_without(self, queries: list[Query], cells: list[torch.Tensor], baseline: bool = True) -> Answers:
        """(baseline answers or None, answers with ``cells`` knocked out) for one batch of queries: no
        triage, the given (N,) boolean cell masks are knocked out on the knockout layers as VGRefine knocks
        out its low-attention cells (the causal check, ``vgmed-eval causal``)."""
        if self.config is None:
            raise ValueError("a knockout needs a VGRefineConfig (its knockout layers)")
        if self._window_limited(queries) and len({len(q.suffix) for q in queries}) > 1:
            base: list = [None] * len(queries)
            knocked: list = [None] * len(queries)
            for length in {len(q.suffix) for q in queries}:
                idx = [i for i, q in enumerate(queries) if len(q.suffix) == length]
                b, k = self.answer_without([queries[i] for i in idx], [cells[i] for i in idx], baseline)
                for j, i in enumerate(idx):
                    base[i], knocked[i] = (b[j] if b else None), k[j]
            return (base if baseline else None), knocked
        rows = [(q.prefix, q.suffix) for q in queries]
        cache, ids, mask, pos, pmax = self._assemble(rows)
        state = None
        if baseline:
            state = (cache, self._forward(cache, ids, mask, pos).logits[:, -1], mask, pos)
        return self._knocked(queries, [torch.as_tensor(c, dtype=torch.bool).cpu() for c in cells],
                             (pmax, ids.shape[1]), state)

    def _knocked(self, queries: list[Query], low: list[torch.Tensor], layout: tuple[int, int], state) -> Answers:
        """Knock out ``low`` cells per query on the knockout layers and decode; ``state`` = (cache, last
        logits, mask, positions) of the same queries' plain pass, whose baseline rows then decode in the same
        batch (one decoding loop for both)."""
        cfg = self.config
        pmax, nq = layout[0], len(queries)
        k_cache, k_ids, k_mask, k_pos, _ = self._assemble([(q.prefix, q.suffix) for q in queries], layout)
        total = pmax + layout[1] + self.max_new_tokens
        blocked = blocked_tokens([q.prefix.cover for q in queries], low, total)
        starts = torch.tensor([q.prefix.length for q in queries])
        with knockout(self.model, cfg.knockout_layers, blocked, starts, decode=False) as ko:
            _start_at(ko, pmax)
            k_out = self._forward(k_cache, k_ids, k_mask, k_pos)
        # Decode baseline and VGRefine rows as one batch (same column layout): half the decoding steps.
        logits, blocked_rows = k_out.logits[:, -1], blocked
        baseline = state is not None
        if baseline:
            cache, base_logits, mask, pos = state
            k_cache = _concat_caches(cache, k_cache)
            k_mask, k_pos = torch.cat([mask, k_mask]), torch.cat([pos, k_pos])
            logits = torch.cat([base_logits, logits])
            blocked_rows, starts = torch.cat([torch.zeros_like(blocked), blocked]), torch.cat([starts, starts])
        decoding = contextlib.nullcontext()
        if cfg.mode == "consistent":
            decoding = knockout(self.model, cfg.knockout_layers, blocked_rows, starts, decode=True)
        with decoding as ko:
            if ko is not None:
                _start_at(ko, k_mask.shape[1])
            answers = self._greedy(k_cache, logits, k_mask, k_pos[:, -1] + 1)
        base, answers = (answers[:nq], answers[nq:]) if baseline else (None, answers)
        for a, m in zip(answers, low, strict=True):
            a.knocked_out, a.grid_cells, a.cells = int(m.sum()), len(m), m.nonzero().flatten().tolist()
        return base, answers

    def _triage(self, queries: list[Query], maps: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, q in enumerate(queries):
            n = len(q.prefix.grid)
            qmaps = {layer: m[i : i + 1, :, :n] for layer, m in maps.items()}
            scores = triage_scores(qmaps, q.prefix.general, self.config.heads)[0]
            out.append(low_attention(scores.cpu(), self.config))
        return out


def _start_at(ctx, position: int) -> None:
    """Tell an attention context that its first call's queries start at cache column ``position``.

    The context infers this from the key length otherwise, which is wrong for sliding-window layers
    (Gemma 3) whose prefix cache keeps only the last window of keys.
    """
    ctx.seen.update({layer: position for layer in ctx.layers})


def _stack_caches(caches: list, lengths: list[int], length: int):
    """One batch cache from batch-1 prefix caches, each right-padded with zeros to ``length`` columns.

    Zero columns sit under a 0 in the attention mask, so they are never attended to. A sliding-window
    layer (Gemma 3) keeps only its last window of keys, which cannot be padded consistently: there
    all prefixes of a batch must have the same length (Gemma 3's fixed 256 image tokens ensure it).
    """
    out = _select(caches[0], 0)
    sliding = any(getattr(layer, "sliding_window", None) for layer in out.layers)
    if sliding and len(set(lengths)) > 1:
        raise PrefixMismatch(f"prefixes of lengths {sorted(set(lengths))} in one batch of a sliding-window "
                             "model; batch questions whose prompts have equal prefix lengths")
    for i, layer in enumerate(out.layers):
        pairs = list(zip(caches, lengths, strict=True))
        keys = [torch.nn.functional.pad(c.layers[i].keys, (0, 0, 0, length - n)) for c, n in pairs]
        values = [torch.nn.functional.pad(c.layers[i].values, (0, 0, 0, length - n)) for c, n in pairs]
        layer.keys, layer.values = torch.cat(keys), torch.cat(values)
    return out


def _select(cache, row: int):
    """A batch-1 cache holding one row of ``cache`` (views of its tensors; updates never write in place)."""
    out = copy.copy(cache)
    out.layers = []
    for layer in cache.layers:
        new = copy.copy(layer)
        new.keys, new.values = layer.keys[row : row + 1], layer.values[row : row + 1]
        out.layers.append(new)
    return out


def _concat_caches(first, second):
    """Rows of ``first`` then rows of ``second`` (same column layout) in one cache."""
    out = _select(first, 0)
    for layer, a, b in zip(out.layers, first.layers, second.layers, strict=True):
        layer.keys, layer.values = torch.cat([a.keys, b.keys]), torch.cat([a.values, b.values])
    return out
