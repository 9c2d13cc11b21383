"""The one name -> entry table shape (vgmed_build.registry): lazy modules, did-you-mean, one way to add."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vgmed_build.registry import Registry


def test_lazy_names_are_known_before_import_and_a_module_that_does_not_register_is_named():
    reg: Registry[int] = Registry("widget", ValueError, modules={"json-widget": "json"})
    assert "json-widget" in reg and reg.names() == ["json-widget"]
    assert reg.register("plain", 7) == 7 and reg.get("plain") == 7
    assert reg.names() == ["json-widget", "plain"]
    with pytest.raises(LookupError, match="json does not register the widget 'json-widget'"):
        reg.get("json-widget")
    hint = r"^unknown widget 'plian' \(did you mean 'plain'\?\); known: json-widget, plain$"
    with pytest.raises(ValueError, match=hint):
        reg.get("plian")
    with pytest.raises(ValueError, match=r"^unknown widget 'zzz'; known: "):
        reg.get("zzz")


def test_listing_source_kinds_and_refusing_a_mistyped_one_import_no_adapter_module():
    code = ("import sys\nfrom vgmed_build.sources import SOURCE_KINDS, SourceError, get_adapter\n"
            "assert 'dicom' in SOURCE_KINDS.names()\n"
            "try:\n    get_adapter('dicon')\nexcept SourceError as e:\n    print(e)\n"
            "print(sorted(m for m in sys.modules if m.startswith('vgmed_build.sources.') or m == 'pydicom'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0].startswith("unknown source kind 'dicon' (did you mean 'dicom'?); known kinds: coco, ")
    assert out.splitlines()[1] == "['vgmed_build.sources.base']"
