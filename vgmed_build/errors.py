"""The base class of vgmed's own errors, so a caller can tell a failure vgmed reports from any other.

Every error class of the project derives from :class:`VgmedError` and keeps its own standard base
(``ValueError``, ``RuntimeError``), so code that catches those goes on catching them. Signals that are
not failures (an item skipped on purpose, a deferred batch, an exhausted budget, SIGTERM) do not derive from it.
"""

from __future__ import annotations


class VgmedError(Exception):
    """A failure vgmed itself detected and can explain (the message names the file, item or option)."""
