"""Every error class of vgmed derives from VgmedError and keeps its standard base (read with ast, nothing imported)."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Signals, not failures: a deliberate skip, a deferred batch, a spent budget, SIGTERM (unwinds like Ctrl-C).
SIGNALS = {"ItemSkipped", "Deferred", "BudgetExhausted", "Terminated"}


def exception_classes() -> dict[str, list[str]]:
    """class name -> its base names, for every class of the two packages."""
    classes: dict[str, list[str]] = {}
    for path in [*(ROOT / "vgmed_build").rglob("*.py"), *(ROOT / "eval" / "vgmed_eval").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                classes[node.name] = [ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]
    return classes


def test_every_error_class_derives_from_vgmed_error():
    classes = exception_classes()

    def ancestors(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
        """The names above a class (by name: a class named like its base, e.g. a Protocol, stops the walk)."""
        above = {b for b in classes.get(name, []) if b not in seen}
        return above.union(*(ancestors(b, seen | {name}) for b in above))

    def is_exception(name: str) -> bool:
        return any(isinstance(getattr(builtins, n, None), type) and issubclass(getattr(builtins, n), BaseException)
                   for n in ancestors(name))

    def derives(name: str) -> bool:
        return "VgmedError" in ancestors(name)

    errors = {n for n in classes if n != "VgmedError" and n not in SIGNALS and is_exception(n)}
    assert len(errors) >= 30  # the walk found them
    assert not [n for n in sorted(errors) if not derives(n)], "error classes that do not derive from VgmedError"


def test_the_error_classes_keep_their_standard_base():
    from vgmed_build.catalog import CatalogError
    from vgmed_build.errors import VgmedError
    from vgmed_build.sources import SourceError

    assert issubclass(SourceError, ValueError) and issubclass(CatalogError, RuntimeError)
    assert issubclass(SourceError, VgmedError) and issubclass(CatalogError, VgmedError)
    err = SourceError("bad", path="a.nii", item="case1")
    assert isinstance(err, VgmedError) and str(err) == "a.nii: bad" and err.item == "case1"
