"""The evaluator's small constants, one per purpose, each named for what it guards against.

They differ on purpose: each keeps the value its computation was written, tested and (for VGRefine)
published with, so that every figure stays what it was.
"""

from __future__ import annotations

# Attention metrics (vgmed_eval.metrics): a cell's general-prompt attention is divided by at least this, and
# the model distribution is clipped to it before its log, so a cell never attended stays finite.
ATTENTION_FLOOR = 1e-10
# VGRefine's triage (vgmed_eval.vgrefine): the floor of the general-prompt attention it divides by and of
# the min-max span it normalises by.
TRIAGE_FLOOR = 1e-12
# Box geometry (vgmed_eval.geometry, vgmed_eval.ground_truth): float round-off, as a fraction of a cell; an
# edge this close to a cell boundary lies on it, and a cover this thin is no cover.
CELL_TOLERANCE = 1e-9
