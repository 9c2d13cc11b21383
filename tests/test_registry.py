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


def test_tables_read_from_the_modules_source_name_what_each_module_registers(tmp_path):
    from vgmed_build.registry import calls, class_attribute, declared_in

    (tmp_path / "one.py").write_text('KINDS.register("a", A())\nKINDS.register(\'b\', B())\n'
                                     'def f():\n    KINDS.register("not-top-level", C())\n')
    (tmp_path / "two.py").write_text('@register\nclass X:\n    family = "x"\n    model_types = ("x1", "x2")  # note\n')
    assert declared_in("pkg", tmp_path, calls("KINDS.register")) == {"a": "pkg.one", "b": "pkg.one"}
    assert declared_in("pkg", tmp_path, class_attribute("family")) == {"x": "pkg.two"}
    assert declared_in("pkg", tmp_path, class_attribute("model_types")) == {"x1": "pkg.two", "x2": "pkg.two"}
    (tmp_path / "three.py").write_text('KINDS.register("a", Again())\n')
    with pytest.raises(LookupError, match="'a' is registered by both pkg.one and pkg.three"):
        declared_in("pkg", tmp_path, calls("KINDS.register"))


def test_the_family_tables_name_the_module_that_registers_each_family_and_model_type():
    from vgmed_eval.adapters import MODEL_ADAPTERS, MODEL_TYPES

    assert {"llava", "qwen2_vl", "gemma3", "internvl"} <= set(MODEL_ADAPTERS.modules)
    for family in MODEL_ADAPTERS.modules:
        assert MODEL_ADAPTERS.get(family).family == family  # LookupError if its module does not register it
    for model_type in MODEL_TYPES.modules:
        assert model_type in MODEL_TYPES.get(model_type).model_types
    assert MODEL_ADAPTERS.names() == sorted(MODEL_ADAPTERS.modules)  # nothing registered the table lacks
    assert MODEL_TYPES.names() == sorted(MODEL_TYPES.modules)


def test_help_lists_the_families_without_importing_torch():
    code = ("import sys, argparse\nfrom vgmed_eval.model_options import add_model_options\n"
            "p = argparse.ArgumentParser()\nadd_model_options(p)\n"
            "print(next(a.help for a in p._actions if a.dest == 'model'))\nprint('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert "(gemma3, internvl, llava, llava_next, qwen2_5_vl, qwen2_vl, qwen3_vl)" in out[0]
    assert out[1] == "False"


def test_docs_list_every_family():
    from pathlib import Path

    from vgmed_eval.families import MODEL_ADAPTERS

    text = (Path(__file__).parents[1] / "docs" / "eval.md").read_text(encoding="utf-8")
    listed = text.split("(`builtin:tiny-<family>`, families ", 1)[1].split(";", 1)[0]
    expected = ", ".join(f"`{name}`" for name in MODEL_ADAPTERS.names())
    assert " ".join(listed.split()) == expected, f"docs/eval.md should list the families as: {expected}"


def test_a_family_without_tiny_says_what_it_must_provide():
    from vgmed_eval.adapters.base import Adapter

    class Stub(Adapter):
        family = "stub"

    with pytest.raises(NotImplementedError, match=r"Stub \(family 'stub'\) must provide tiny\(\): a tiny random"):
        Stub.tiny()
