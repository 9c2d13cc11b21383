"""Nonsense options and paths (issue 30): a clear error naming the option before any work, never a
traceback, and nothing of the user's touched; a rendering bound for what options cannot catch."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from ingest_fixtures import ingest, mni, write_pair

from vgmed_build.catalog import open_catalog
from vgmed_build.cli import build_parser, main

SOURCE = '[[source]]\nname = "brain"\nkind = "nifti"\npath = "nifti"\nmodality = "MRI"\n'


@pytest.mark.parametrize(
    "options, says",
    [
        ("window = [nan, 400]", "option 'window' = [nan, 400] (list): expected [level, width], finite numbers"),
        ("window = [40, inf]", "option 'window' = [40, inf] (list): expected [level, width], finite numbers"),
        ("spacing_mm = inf", "option 'spacing_mm' = inf (float): expected a number of millimetres from 0.01 to 100"),
        ("spacing_mm = 1e-9", "option 'spacing_mm' = 1e-09 (float): expected a number of millimetres from 0.01"),
        ("min_side_px = 1000000", "option 'min_side_px' = 1000000 (int): expected a whole number of pixels from 0 "
                                  "(never enlarge) to 8192"),
        ("midline_mm = nan", "option 'midline_mm' = nan (float): expected a finite number of millimetres"),
        ("midline_margin_mm = -5.0", "option 'midline_margin_mm' = -5.0 (float): expected a finite number of "
                                     "millimetres, 0 or more"),
        ("max_area_ratio = nan", "option 'max_area_ratio' = nan (float): expected a number in (0, 1]"),
        ("label_suffix = \"_seg\"\nchannel = 0\n", None),  # a good file: the check is not over-eager
    ],
)
def test_nonsense_options_are_refused_before_any_work(tmp_path, capsys, options, says):
    image, labels, affine = mni()
    write_pair(tmp_path / "nifti", "case1", image, labels, affine)
    sources = tmp_path / "sources.toml"
    sources.write_text(f"{SOURCE}[source.options]\n{options}\n", encoding="utf-8")
    build = tmp_path / "build"
    code = ingest(build, "--sources", str(sources))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if says is None:
        assert code == 0 and build.is_dir()
        return
    assert code == 2
    assert f"{sources}: source 'brain': {says}" in err, err
    assert not build.exists()  # refused before anything was written


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--option", "window=[40, nan]"], "option 'window' = [40, nan] (list): expected [level, width], finite"),
        (["--option", "spacing_mm=inf"], "option 'spacing_mm' = inf (float): expected a number of millimetres"),
        (["--option", "midline_margin_mm=-1"], "option 'midline_margin_mm' = -1 (int): expected a finite number"),
    ],
)
def test_nonsense_option_flags_are_refused(tmp_path, capsys, flags, says):
    build = tmp_path / "build"
    code = ingest(build, "--source", f"nifti:{tmp_path}", "--modality", "MRI", *flags)
    err = capsys.readouterr().err
    assert code == 2 and says in err and "Traceback" not in err, err
    assert not build.exists()


def test_an_unknown_modality_is_refused_in_the_file_and_as_a_flag(tmp_path, capsys):
    (tmp_path / "nifti").mkdir()
    sources = tmp_path / "sources.toml"
    sources.write_text(SOURCE.replace('"MRI"', '"MIR"'), encoding="utf-8")
    assert ingest(tmp_path / "build", "--sources", str(sources)) == 2
    err = capsys.readouterr().err
    assert f"{sources}: source 'brain': key 'modality': unknown modality 'MIR'; use one of CT," in err, err
    assert ingest(tmp_path / "build", "--source", f"nifti:{tmp_path / 'nifti'}", "--modality", "Xray-ish") == 2
    err = capsys.readouterr().err
    assert "error: --modality: unknown modality 'Xray-ish'; use one of" in err and "MRI" in err, err
    for spelling in ("MR", "x-ray", "Natural", "natural", "MG", "Mammography"):  # spellings and codes pass
        sources.write_text(SOURCE.replace('"MRI"', f'"{spelling}"'), encoding="utf-8")
        assert ingest(tmp_path / "build", "--sources", str(sources)) == 1  # taken: the empty folder is the error
        assert "unknown modality" not in capsys.readouterr().err


def test_a_latin1_sources_file_is_a_clear_error(tmp_path, capsys):
    sources = tmp_path / "sources.toml"
    sources.write_bytes(f"# Quelle für Gehirn\n{SOURCE}body_part = \"tête\"\n".encode("latin-1"))
    assert ingest(tmp_path / "build", "--sources", str(sources)) == 2
    err = capsys.readouterr().err
    assert f"error: {sources}:1: not UTF-8 text (byte 0xfc); save the sources file as UTF-8" in err, err
    assert "Traceback" not in err and not (tmp_path / "build").exists()


def build_commands() -> list[list[str]]:
    """Every command (and subcommand) that takes --build, read from the parser itself."""
    found: list[list[str]] = []

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*prefix, name])
        if any("--build" in a.option_strings for a in parser._actions):
            found.append(prefix)

    walk(build_parser(), [])
    return found


# What each command needs besides --build to get as far as using it.
EXTRA = {"ingest": ["--source", "nifti:."], "release": ["--out", "rel"], "judge": ["--model", "m"]}
# Commands that only look for a server of the build and say there is none (a file holds none).
SERVER_ONLY = {("labelstudio", "stop"), ("labelstudio", "status"), ("labelstudio", "invite")}


def test_build_pointing_at_a_file_is_a_clear_error_for_every_build_command(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    user_file = tmp_path / "notes.txt"
    user_file.write_text("my notes\n")
    commands = build_commands()
    assert len(commands) >= 14 and ["ingest"] in commands and ["review", "pull"] in commands
    for command in commands:
        code = main([*command, "--build", str(user_file), *EXTRA.get(command[0], [])])
        err = capsys.readouterr().err
        assert "Traceback" not in err
        if tuple(command) in SERVER_ONLY:
            assert code != 0 or command[1] == "stop", command
            continue
        assert code == 2, (command, err)
        assert f"error: {user_file}: is a file, not a build directory; give --build a folder" in err, (command, err)
    assert user_file.read_text() == "my notes\n" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_slice_over_the_size_bound_is_one_items_error(tmp_path, capsys):
    """spacing_mm = 0.01 (allowed: some sources are that fine) on a 2 mm brain would render a slice of
    ~18,000 pixels a side: that item is an error naming the bound, the next one renders."""
    image, labels, affine = mni()
    write_pair(tmp_path / "fine", "case1", image, labels, affine)
    write_pair(tmp_path / "plain", "case1", image, labels, affine)
    sources = tmp_path / "sources.toml"
    fine, plain = (SOURCE.replace('"brain"', f'"{n}"').replace('"nifti"\nmodality', f'"{n}"\nmodality')
                   for n in ("fine", "plain"))
    sources.write_text(f"{fine}[source.options]\nspacing_mm = 0.01\n{plain}", encoding="utf-8")
    build = tmp_path / "build"
    assert ingest(build, "--sources", str(sources), "--with-paths") == 1
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "error [fine]" in x]
    assert "would be rendered at" in line and "more than 8192 a side; give a larger spacing_mm" in line, line
    with open_catalog(build, create=False) as catalog:
        done = sorted(catalog.conn.execute("SELECT source FROM items WHERE status='done'").fetchall())
    assert done == [("plain",)]


def test_min_side_px_enlargement_stops_at_the_size_bound():
    """An extreme aspect ratio enlarged towards min_side_px keeps its long side within the bound."""
    from vgmed_build.imaging import enlargement, slice_geometry

    assert enlargement((4, 4000), 512) == 2  # 8 x 8000, not 512 x 512,000
    assert enlargement((100, 120), 512) == 5  # the usual case unchanged
    geom = slice_geometry(np.diag([1.0, 1.0, 1.0, 1.0]), (4000, 4, 3), "axial", 1, None, 512)
    assert max(geom.shape) <= 8192 and min(geom.shape) >= 8
