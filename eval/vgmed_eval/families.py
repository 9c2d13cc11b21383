"""The model-family tables: family name (``builtin:tiny-<family>``) -> adapter class, and config
``model_type`` -> adapter class.

Both are lazy :class:`~vgmed_build.registry.Registry` tables read from the adapter modules' source (the
``family`` and ``model_types`` of their ``@register`` classes), so ``--help`` and an unknown name's error
list the families without importing torch, and adding a family is adding its module to ``adapters/``.
"""

from __future__ import annotations

from pathlib import Path

from vgmed_build.registry import Registry, class_attribute, declared_in

_PACKAGE = "vgmed_eval.adapters"
_FOLDER = Path(__file__).parent / "adapters"

# filled by :func:`vgmed_eval.adapters.base.register` when a family's module is imported; the entries are
# ``Adapter`` subclasses (typed as plain ``type``: naming ``Adapter`` here would make an import cycle)
MODEL_ADAPTERS: Registry[type] = Registry(
    "tiny family", ValueError, known="available", modules=declared_in(_PACKAGE, _FOLDER, class_attribute("family")))
MODEL_TYPES: Registry[type] = Registry(
    "model_type", ValueError, known="supported", modules=declared_in(_PACKAGE, _FOLDER, class_attribute("model_types")))
