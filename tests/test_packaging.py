"""vgmed ships as real software: the wheel and sdist carry every module and resource, the programs start
without importing heavy libraries, and a command whose extra is missing says which one to install.

An editable install hides a module the wheel lacks (that is how `vgmed_build.ingest` went missing), so
the distributions are built here from the tracked files of the checkout, as from a clean clone.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from vgmed_build import cli as build_cli
from vgmed_build import commands
from vgmed_eval import cli as eval_cli

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "nibabel", "pydicom", "SimpleITK", "scipy", "highdicom", "matplotlib", "pandas")
PROGRAMS = {"vgmed-build": build_cli.COMMAND_LINE, "vgmed-eval": eval_cli.COMMAND_LINE}
MODULE_OF = {"vgmed-build": "vgmed_build.cli", "vgmed-eval": "vgmed_eval.cli"}


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT.parent)


@pytest.mark.parametrize("prog", PROGRAMS)
@pytest.mark.parametrize("argv", [["--help"], ["no-such-command"]])
def test_help_and_a_typo_import_no_heavy_library(prog, argv):
    done = _python(
        f"import sys\nfrom {MODULE_OF[prog]} import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr


@pytest.mark.parametrize("prog", PROGRAMS)
def test_every_command_of_the_table_is_registered_by_its_module(prog):
    line = PROGRAMS[prog]
    full = commands.build_parser(line.prog, line.description, line.version, line.commands)
    assert list(_choices(full)) == [c.name for c in line.commands], "--help lists the table's order"
    for command in line.commands:
        alone = commands.build_parser(line.prog, "", line.version, line.commands, [command.module])
        own = {a.dest for a in _choices(alone)[command.name]._actions} - {"help", "verbose", "no_progress"}
        assert own, f"{command.module} does not register {command.name!r}"
        assert command.summary and _summary(alone, command.name) == command.summary


def _choices(parser):
    return next(a for a in parser._actions if isinstance(a, commands._Subcommands)).choices


def _summary(parser, name: str) -> str:
    action = next(a for a in parser._actions if isinstance(a, commands._Subcommands))
    return next(c.help for c in action._choices_actions if c.dest == name)


def test_a_command_without_its_extra_names_the_extra_to_install(tmp_path):
    # the parser and the input checks need no torch (the model options name the families without it):
    # the command gets as far as loading the model
    done = _python(
        "import sys\nsys.modules['torch'] = None  # as if the eval extra were not installed\n"
        "from vgmed_eval.cli import main\n"
        f"print('rc', main(['grounding', '--release', {str(tmp_path)!r}, '--model', 'm', '--out', 'o']))"
    )
    assert "rc 2" in done.stdout, done.stderr
    assert "error: vgmed-eval grounding needs torch" in done.stderr
    assert "pip install 'vgmed[eval]'" in done.stderr and "Traceback" not in done.stderr


def test_shared_options_after_the_command():
    parser = build_cli.COMMAND_LINE.build_parser(["stats"])
    late = parser.parse_args(["stats", "--build", "b", "-v", "--no-progress"])
    early = parser.parse_args(["-v", "stats", "--build", "b"])
    plain = parser.parse_args(["stats", "--build", "b"])
    assert (late.verbose, late.no_progress) == (True, True)
    assert (early.verbose, early.no_progress) == (True, False)
    assert (plain.verbose, plain.no_progress) == (False, False)


def _tracked_copy(dest: Path) -> Path:
    """The tracked files of the checkout (what a clean clone holds), with uncommitted edits."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def _expected_wheel_files() -> set[str]:
    """Every module and resource the installed package needs, as paths inside the wheel."""
    out = {str(p.relative_to(ROOT)) for p in (ROOT / "vgmed_build").rglob("*")
           if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    out |= {"vgmed_eval/" + str(p.relative_to(ROOT / "eval" / "vgmed_eval"))
            for p in (ROOT / "eval" / "vgmed_eval").rglob("*.py")}
    for folder in ("schemas", "prompts"):
        out |= {f"vgmed_build/_data/{folder}/" + str(p.relative_to(ROOT / folder))
                for p in (ROOT / folder).rglob("*") if p.is_file()}
    return out


@pytest.mark.slow
def test_sdist_and_the_wheel_built_from_it_carry_every_module_and_resource(tmp_path):
    """`python -m build` makes the sdist, then the wheel from the unpacked sdist, as `pip install` of an
    sdist does: a file missing from the sdist is missing from that wheel too."""
    src = _tracked_copy(tmp_path / "src")
    dist = tmp_path / "dist"
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(src)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    wheel = zipfile.ZipFile(next(dist.glob("vgmed-*.whl")))
    names = set(wheel.namelist())
    missing = sorted(_expected_wheel_files() - names)
    assert not missing, f"the wheel lacks {missing[:20]}"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "vgmed-eval = vgmed_eval.cli:main" in wheel.read(entry_points).decode()
    with tarfile.open(next(dist.glob("vgmed-*.tar.gz"))) as sdist:
        members = {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name}
    for path in ("LICENSE", "setup.py", "pyproject.toml", "README.md", "eval/vgmed_eval/cli/__init__.py",
                 "vgmed_build/ingest/run.py", "vgmed_build/catalog/base.py", "schemas/region.schema.json"):
        assert path in members, f"the sdist lacks {path}"


def test_the_source_kind_table_names_the_module_that_registers_each_kind():
    from vgmed_build.sources import SOURCE_KINDS, SourceError, get_adapter

    assert all(get_adapter(kind).kind == kind for kind in SOURCE_KINDS.modules)  # LookupError if not registered
    assert SOURCE_KINDS.names() == sorted(SOURCE_KINDS.modules)  # no module registers a kind the table lacks
    with pytest.raises(SourceError, match=r"unknown source kind 'nifit' \(did you mean 'nifti'\?\); known kinds: co"):
        get_adapter("nifit")
