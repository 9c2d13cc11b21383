"""What every figure of the evaluator shares: matplotlib off-screen, one colour per meaning, one scale for a / g.

A colour means the same thing in every figure (natural images are orange in the medical-vs-natural
curve, the modality curve and anywhere else; MRI is never orange), and every map of the attention
ratio a / g uses the same diverging scale, white at 1.0 (no preference for the target).
"""

from __future__ import annotations

import textwrap
import zlib

from vgmed_build import modality

MEDICAL = "medical"  # all medical questions together (the counterpart of the natural control)
BASELINE = "baseline"
VGREFINE = "vgrefine"

COLOURS = {
    MEDICAL: "#1f77b4",
    modality.NATURAL: "#ff7f0e",
    modality.CT: "#2ca02c",
    modality.MRI: "#9467bd",
    modality.PET: "#d62728",
    modality.ULTRASOUND: "#8c564b",
    modality.XRAY: "#e377c2",
    modality.ENDOSCOPY: "#bcbd22",
    modality.DERMOSCOPY: "#17becf",
    modality.FUNDUS: "#7b4173",
    BASELINE: "#9e9e9e",
    VGREFINE: "#252525",
}
# Names outside the table (another modality spelled as a source gave it) draw from these, by a stable
# hash of the name, so a name keeps its colour from figure to figure and run to run.
_SPARE = ("#393b79", "#637939", "#8c6d31", "#843c39", "#5254a3", "#8ca252", "#bd9e39", "#ad494a")

RATIO_CMAP = "RdBu_r"  # a / g: blue below 1, white at 1, red above


def colour(name: str) -> str:
    """The colour of ``name`` (a modality, ``medical``, ``baseline``, ``vgrefine``) in every figure."""
    return COLOURS.get(name) or _SPARE[zlib.crc32(name.encode("utf-8")) % len(_SPARE)]


def ratio_norm(vmin: float, vmax: float):
    """A colour scale of a / g centred on 1.0 (TwoSlopeNorm), whatever side of 1 the values fall."""
    from matplotlib.colors import TwoSlopeNorm

    return TwoSlopeNorm(vcenter=1.0, vmin=min(vmin, 1.0 - 1e-3), vmax=max(vmax, 1.0 + 1e-3))


def wrap(text: str, width_in: float, fontsize: float) -> str:
    """``text`` wrapped to a width in inches (about 0.55 em per character), each line kept."""
    chars = max(20, int(width_in * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) for line in text.splitlines())


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), imported only when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
