"""Evaluation protocols: every choice where vgmed's default and the authors' published code differ.

One :class:`Protocol` holds them all; ``--protocol published`` on ``grounding``, ``heads`` and ``vqa``
selects :data:`PUBLISHED`, and each choice keeps its own flag, which wins over the protocol (see
:func:`vgmed_eval.cli.options.add_protocol_args` / :func:`resolve`). docs/eval.md lists every choice,
both values and why vgmed's default differs. ``vgmed-eval reproduce`` imports :data:`PROTOCOLS` to pass the choice on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Literal, get_args

from vgmed_build.release_format import PublishedBoxMapping

BoxMapping = Literal["model", PublishedBoxMapping]
BOX_MAPPINGS: tuple[BoxMapping, ...] = get_args(BoxMapping)
HEAD_NORMS = ("head", "mean")
Scorer = Literal["vgmed", "published"]  # vgmed_eval.vqa.scoring.SCORE_FUNCTIONS scores with each
SCORERS: tuple[Scorer, ...] = get_args(Scorer)
POPULATIONS = ("all", "closed-mc")
GT_KINDS = ("box", "mask", "soft")  # vgmed_eval.ground_truth builds each
QWEN_RESIZES = ("single", "double")
KL_NORMALISATIONS = ("layer", "all-layers")


@dataclass(frozen=True)
class Protocol:
    """The settings a protocol fixes (None: leave the model's / the command's own default)."""

    name: str
    box_mapping: BoxMapping = "model"  # model: the model's real preprocessing; resize: plain resize; pad: pad first
    xyxy_maxima: str = "inclusive"  # published xyxy maxima: +1 (mask min/max pixels) or used as edges
    head_norm: str = "head"  # per-head metric: divide by the same head's general map, or by the head mean
    min_pixels: int | None = None  # Qwen-VL image bounds (None: the checkpoint's processor settings)
    max_pixels: int | None = None
    percentile: float = 80.0  # VGRefine triage percentile
    vgrefine_mode: str = "consistent"  # knockout in prefill and every decoding step, or "prefill" only
    mc_max_new_tokens: int | None = None  # multiple choice: decode this many tokens (None: --max-new-tokens)
    scorer: Scorer = "vgmed"
    population: str = "all"  # VQA questions asked: all as posed, or closed-mc (closed as multiple choice)
    min_new_tokens: int = 0  # greedy decoding: end-of-sequence is not taken before this many tokens
    cell_edges: str = "exact"  # box edges -> cells exactly, or with the authors' float arithmetic
    gt: str = "box"  # grounding ground truth: cells the boxes touch (published), the mask touches, or soft
    qwen_resize: str = "single"  # Qwen-VL: the processor's resize only, or qwen-vl-utils' resize before it
    kl_normalise: str = "layer"  # KL's model distribution: each layer's map over its cells, or over all layers

    def __post_init__(self) -> None:
        for name, value, allowed in (("box_mapping", self.box_mapping, BOX_MAPPINGS),
                                     ("head_norm", self.head_norm, HEAD_NORMS), ("scorer", self.scorer, SCORERS),
                                     ("population", self.population, POPULATIONS),
                                     ("cell_edges", self.cell_edges, ("exact", "authors")),
                                     ("gt", self.gt, GT_KINDS), ("qwen_resize", self.qwen_resize, QWEN_RESIZES),
                                     ("kl_normalise", self.kl_normalise, KL_NORMALISATIONS),
                                     ("xyxy_maxima", self.xyxy_maxima, ("inclusive", "edges")),
                                     ("vgrefine_mode", self.vgrefine_mode, ("consistent", "prefill"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")

    def as_dict(self) -> dict:
        return asdict(self)


VGMED = Protocol("vgmed")
PUBLISHED = Protocol(
    "published", box_mapping="resize", xyxy_maxima="edges", head_norm="head", min_pixels=784, max_pixels=50176,
    percentile=80.0, vgrefine_mode="prefill", mc_max_new_tokens=1, scorer="published", population="closed-mc",
    min_new_tokens=1, cell_edges="authors", qwen_resize="double",
)
PROTOCOLS = {p.name: p for p in (VGMED, PUBLISHED)}

# The 20 triage heads (layer, head) and the knockout layer published for HuatuoGPT-Vision-7B.
PUBLISHED_HEADS = {
    "huatuogpt-vision-7b": {
        "model": "FreedomIntelligence/HuatuoGPT-Vision-7B",
        "knockout_layer": 16,
        "heads": [[15, 4], [16, 5], [15, 1], [10, 6], [4, 0], [15, 24], [19, 6], [8, 3], [19, 18], [18, 10],
                  [4, 17], [16, 2], [16, 17], [16, 1], [14, 23], [6, 18], [18, 19], [6, 11], [0, 2], [17, 26]],
        "source": "the authors' public VGRefine code (percentile 80 in the library, 50 in the submission notebook)",
    },
}

# flag dest -> Protocol field, for the options each command offers
FLAGS = {
    "box_mapping": ("--box-mapping", BOX_MAPPINGS,
                    "how boxes become grid cells: model = through the model's real preprocessing (pad, crop, "
                    "dynamic resolution); resize = plain resize of the image onto the grid (the authors' later "
                    "code); pad = pad to a centred square first (their earliest notebook)"),
    "xyxy_maxima": ("--box-edges", ("inclusive", "edges"),
                    "published [x0, y0, x1, y1] maxima: inclusive = last pixel (+1 to the edge, vgmed); edges = "
                    "used as edges as they are (the authors' code)"),
    "head_norm": ("--head-norm", HEAD_NORMS,
                  "per-head maps: divided by the same head's general map (the authors' later code) or by the "
                  "head-averaged general map (their submission notebook)"),
    "percentile": ("--percentile", None, "VGRefine: knock out image cells below this percentile of the triage "
                   "map (80 in the authors' library code, 50 in their submission notebook)"),
    "vgrefine_mode": ("--mode", ("consistent", "prefill"),
                      "VGRefine knockout: consistent = in the prompt pass and every decoding step; prefill = "
                      "prompt pass only (the public code)"),
    "mc_max_new_tokens": ("--mc-max-new-tokens", None, "multiple-choice questions: decode at most this many "
                          "tokens (the published protocol: 1, the option letter); default --max-new-tokens"),
    "scorer": ("--scorer", SCORERS, "vgmed: our scoring; published: HuatuoGPT-Vision's letter matching with its "
               "fallbacks for multiple choice, containment in either direction for open answers"),
    "population": ("--population", POPULATIONS, "which questions are asked and scored: all = every question as "
                   "the benchmark poses it; closed-mc = HuatuoGPT-Vision's protocol behind the published figures "
                   "(open questions skipped, closed ones asked as multiple choice; docs/vqa.md)"),
    "cell_edges": ("--cell-edges", ("exact", "authors"), "box edges to grid cells: exact (vgmed) or with the "
                   "authors' float arithmetic (origin and size scaled separately: 90 x 1.4 = 125.99999999999999 "
                   "lands in the cell before), which the published gt_tokens were made with"),
    "gt": ("--gt", GT_KINDS, "grounding ground truth on the model's grid: box = the cells the boxes touch (the "
           "published rule); mask = the cells the region's mask touches (releases with masks); soft = each cell "
           "weighted by the fraction of it the mask (else the boxes) covers; the other two are reported beside it"),
    "qwen_resize": ("--qwen-resize", QWEN_RESIZES, "Qwen-VL only: single = the processor resizes the picture "
                    "(within --min-pixels / --max-pixels); double = qwen-vl-utils' fetch_image resize first (its "
                    "own bounds, 4 to 16384 tokens), then the processor's, as the authors' runs do: the pixels and "
                    "on some sizes the grid differ (300 x 200: 10 x 6 tokens, not 9 x 6)"),
    "kl_normalise": ("--kl-normalise", KL_NORMALISATIONS, "KL's model distribution: layer = each layer's normalised "
                     "map divided by its own sum (the authors' later code); all-layers = by its sum over every "
                     "measured layer (their submission notebook): each layer's KL grows by ln(1 / that layer's "
                     "share of the sum), about ln L for L layers of similar sums"),
    "min_new_tokens": ("--min-new-tokens", None, "greedy decoding never ends before this many tokens (the "
                       "published runs: 1, transformers' min_new_tokens; 0 lets end-of-sequence be the answer)"),
}
PIXEL_HELP = ("Qwen-VL only: bounds on the pixels an image is resized to (the published runs: min 784, "
              "max 50176 = 224 x 224); default: the checkpoint's processor settings")


def resolve(name: str, options: Mapping[str, object]) -> Protocol:
    """The protocol ``name`` with every choice ``options`` sets (not None) applied: ``--protocol`` and the
    individual flags of a command line (``vars(args)``), where a flag wins over the protocol."""
    base = PROTOCOLS[name]
    given = {f.name: options[f.name] for f in fields(Protocol) if f.name != "name" and options.get(f.name) is not None}
    return replace(base, **given) if given else base
