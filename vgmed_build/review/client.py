"""The Label Studio client as the review stage uses it, so the functions that take one say what it is.

``server.connect`` returns label_studio_sdk's ``LabelStudio``; the SDK is imported only inside the
functions that need it (start-up stays fast), so the stage types its client with this Protocol instead:
the SDK's resource groups it calls, and the authenticated HTTP client behind them, which
:func:`vgmed_build.review.api.request` uses for the endpoints the SDK lacks or pages slowly.
"""

from __future__ import annotations

from typing import Any, Protocol


class LabelStudioClient(Protocol):
    """The parts of ``label_studio_sdk.LabelStudio`` the review stage calls."""

    projects: Any  # list, get, create, update, import_tasks
    tasks: Any  # get, update, delete
    predictions: Any  # list, create, delete
    import_storage: Any  # local.list, local.create
    users: Any  # whoami
    _client_wrapper: Any  # httpx_client.request: authenticated calls to any endpoint
