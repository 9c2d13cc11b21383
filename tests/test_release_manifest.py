"""manifest.json written and read as a stream (issue 27): the streamed writer gives json.dumps's bytes,
the streamed reader gives json.loads's values and errors, the ordered walk gives sorted()'s order."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vgmed_build.catalog.scratch import SeenStore, sorted_unique
from vgmed_build.release import not_ours
from vgmed_build.release_manifest import files_in_order, read_manifest, walk, write_manifest
from vgmed_build.validate import _tree as validate_tree

HEAD = {"format": "vgmed-release", "name": "VGMED", "quality": {"judge": {"files": {}}, "x": [1.5, None]},
        "counts": {"records": 3, "by_file": {}}, "note": 'say "files": {} here\u2028and\u0085there'}
# Keys json indents differently if split on anything but "\n": U+2028 / U+0085 stay unescaped.
TRICKY = ["images/a.png", 'quo"te.md', "unicode/\u00e9\u4e2d.png", "line\u2028sep.png", "nel\u0085.png",
          "new\nline.png", "tab\t.png"]


def _entries(names):
    return [(n, {"kind": "image", "bytes": i, "sha256": f"{i:064x}"}) for i, n in enumerate(names)]


@pytest.mark.parametrize("names", [[], ["README.md"], TRICKY])
def test_streamed_manifest_is_json_dumps_byte_for_byte(tmp_path, names):
    path = tmp_path / "manifest.json"
    write_manifest(path, HEAD, iter(_entries(names)))
    expected = json.dumps({**HEAD, "files": dict(_entries(names))}, indent=2, ensure_ascii=False) + "\n"
    assert path.read_bytes() == expected.encode("utf-8")


def _as_loads(path: Path) -> object:
    """What json.loads gives, rebuilt from the streamed reading (files: last entry of a key wins)."""
    manifest = read_manifest(path)
    if not isinstance(manifest.head, dict) or manifest.head.get("files") != {}:
        return manifest.head
    files = {}
    for rel, entry in manifest.files():
        files[rel] = entry
    return {**manifest.head, "files": files}


READABLE = {
    "ours": json.dumps({**HEAD, "files": dict(_entries(TRICKY))}, indent=2, ensure_ascii=False),
    "files first, floats": '{"files": {"b": {"bytes": 1.5e3}, "a": [1, {"x": -0.25}]}, "n": 12345678901234567890}',
    "a repeated file": '{"files": {"a": 1, "b": 2, "a": 3}, "k": 1, "k": 2}',
    "files not an object": '{"files": [1, 2], "format": "vgmed-release"}',
    "files given twice": '{"files": {"a": 1}, "x": 0, "files": {"b": 2}}',
    "a list": '[{"files": {}}]',
    "NaN": '{"files": {"a": NaN}}',
    "no files": '{"format": "vgmed-release"}',
}
BROKEN = {
    "empty": b"",
    "truncated": b'{"files": {"a": {"bytes": 1',
    "trailing text": b'{"files": {}} x',
    "a BOM": b'\xef\xbb\xbf{"files": {}}',
    "not UTF-8": b'{"files": {"\xff": 1}}',
    "a second value": b'{"files": {}}\n{"files": {}}',
}


@pytest.mark.parametrize("case", sorted(READABLE))
def test_streamed_reading_gives_what_json_loads_gives(tmp_path, case):
    path = tmp_path / "manifest.json"
    path.write_text(READABLE[case], encoding="utf-8")
    assert _as_loads(path) == json.loads(READABLE[case]) or case == "NaN"
    if case == "NaN":  # read whole (the stream refuses NaN): nan != nan, compare the text
        assert repr(_as_loads(path)) == repr(json.loads(READABLE[case]))


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_manifest_raises_what_json_loads_raises(tmp_path, case):
    path = tmp_path / "manifest.json"
    path.write_bytes(BROKEN[case])
    with pytest.raises(ValueError) as expected:
        json.loads(path.read_text(encoding="utf-8"))
    with pytest.raises(type(expected.value)) as got:
        read_manifest(path)
    assert str(got.value) == str(expected.value)


def test_the_files_entries_are_not_built_by_the_head_reading(tmp_path):
    path = tmp_path / "manifest.json"
    write_manifest(path, HEAD, _entries(f"images/{i:05d}.png" for i in range(3000)))
    manifest = read_manifest(path)
    assert manifest.whole is None and manifest.head == {**HEAD, "files": {}}
    assert sum(1 for _ in manifest.files()) == 3000


def _tree(root: Path) -> None:
    for rel in ["b", "a-c/x", "a/z", "a/b/c", "a.txt", "\u00e9/1", "A", "a0", "images/x.png", "images-1/y"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    (root / "empty").mkdir()
    os.symlink(root / "a", root / "link")  # a link to a folder: listed, not entered


def test_ordered_walks_give_sorted_orders(tmp_path):
    _tree(tmp_path)
    paths = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")]
    paths = [rel for rel in paths if not rel.startswith("link/")]  # whether rglob enters the link or not
    assert list(files_in_order(tmp_path)) == sorted(rel for rel in paths if (tmp_path / rel).is_file()
                                                    and rel != "link")
    assert list(files_in_order(tmp_path))[:4] == ["A", "a-c/x", "a.txt", "a/b/c"]  # "-" and "." sort before "/"
    assert sorted(rel for rel, _ in walk(tmp_path)) == sorted(paths)
    assert [p for p in validate_tree(tmp_path) if p.name != "link"] == [  # validate's walk: by path parts
        p for p in sorted(tmp_path.rglob("*")) if "link" not in p.relative_to(tmp_path).parts]
    keys = ["b", "a", "\udcff", "\u00e9", "a", "", "\U0001f600", "\uffff"]
    assert list(sorted_unique(keys)) == sorted(set(keys))


def test_seen_store_lists_last_entry_and_folders_above(tmp_path):
    with SeenStore() as seen:
        seen.add_listed([("images/a.png", 1), ("b", 2), ("images/a.png", 3), ("imagesX", 4)])
        assert list(seen.listed()) == [("b", 2), ("images/a.png", 3), ("imagesX", 4)]
        assert seen.is_listed("b") and not seen.is_listed("images")
        assert seen.lists_under("images") and not seen.lists_under("image") and not seen.lists_under("b")


def test_not_ours_reads_the_file_list_as_a_stream(tmp_path):
    release = tmp_path / "rel"
    (release / "images" / "sub").mkdir(parents=True)
    (release / "images" / "a.png").write_bytes(b"x")
    write_manifest(release / "manifest.json", {"format": "vgmed-release"},
                   [("images/a.png", {}), ("images/sub/b.png", {})])
    (release / "images" / "sub" / "b.png").write_bytes(b"y")
    assert not_ours(release) is None
    for i in range(7):
        (release / "images" / f"user{i}.txt").write_text("mine")
    reason = not_ours(release)
    assert reason == ("is a vgmed release but holds 7 path(s) its manifest does not list ('images/user0.txt', "
                      "'images/user1.txt', 'images/user2.txt', 'images/user3.txt', 'images/user4.txt', ...)")
    (release / "manifest.json").write_text('{"format": "vgmed-release", "files": 3}')
    assert not_ours(release) == "is not a vgmed release (manifest.json has no file list)"
    (release / "manifest.json").write_text('{"format": "vgmed-release", "files": {')
    assert not_ours(release).startswith("is not a vgmed release (manifest.json cannot be read: Expecting")
