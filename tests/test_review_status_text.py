"""`review status` prints readable text: counts and words, never a Python repr (`{'review': 92}`, `None`)."""

from __future__ import annotations

from vgmed_build import cli
from vgmed_build.catalog import open_catalog
from vgmed_build.review.status import status_lines, summary


def test_status_of_a_build_never_pushed_reads_as_words(tmp_path, capsys):
    with open_catalog(tmp_path / "build"):
        pass
    assert cli.main(["review", "status", "--build", str(tmp_path / "build")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "drafts ok: 0; tasks pushed: none yet; reviewers per item: not set (no push yet); last pull: never"


def test_pushed_tasks_per_project_and_the_last_pull_are_named(tmp_path):
    with open_catalog(tmp_path / "build") as catalog:
        s = summary(catalog)
    s.update(pushed={"review": 92, "adjudication": 3}, reviewers_per_item=2, last_pull="2026-12-07T20:47:01+00:00")
    text = "\n".join(status_lines(s))
    assert text.splitlines()[0] == ("drafts ok: 0; tasks pushed: 3 to project adjudication, 92 to project review; "
                                    "reviewers per item: 2; last pull: 2026-12-07T20:47:01+00:00")
    assert "{" not in text and "None" not in text
