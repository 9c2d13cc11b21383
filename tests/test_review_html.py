"""HTML in reviewer-visible text is shown as text, never run (issue 30).

What vgmed puts in front of a reviewer reaches Label Studio two ways. Task data (facts, the draft as
drafted, the adjudicator's notes with the reviewers' comments) is shown by the labeling config's
``Header`` tags and the task list's cells, which Label Studio 1.23.2 renders as React text children
(checked in its bundle: ``HtxHeader`` renders ``children: item._value``, the Data Manager's
``StringCell`` ``{valueToString(value)}``), so markup in it stays visible characters. The project's
instructions are the one field Label Studio inserts as raw HTML; vgmed renders them from Markdown
with HTML escaped. These tests pin both halves.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from labelstudio_fixture import make_build

from vgmed_build.review.images import IMAGE_KEY, WINDOW_KEYS
from vgmed_build.review.state import load_drafts
from vgmed_build.review.tasks import instructions_html, label_config, markdown_html, task_payload

HOSTILE = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
TEXT_TAGS = {"Header"}  # tags whose value Label Studio shows as plain text
URL_TAGS = {"Image"}  # the image URL


def test_task_data_reaches_only_tags_that_show_text():
    config = ET.fromstring(label_config())
    used = {}
    for el in config.iter():
        for attr, value in el.attrib.items():
            for name in re.findall(r"\$(\w+)", value):
                used.setdefault(name, set()).add((el.tag, attr))
    for key in (IMAGE_KEY, *WINDOW_KEYS):  # image URLs: the image, and a CT slice's other windows
        assert used[key] == {("Image", "value")}, key
    # the window switch's options: vgmed's own window names (window_data), never text from a draft
    assert used["windows"] == {("Choices", "value")}
    shown = {name: places for name, places in used.items() if name not in {IMAGE_KEY, *WINDOW_KEYS, "windows"}}
    assert shown and all(places <= {(t, "value") for t in TEXT_TAGS} for places in shown.values()), shown
    # no tag that renders HTML or Markdown anywhere in the config
    assert not {el.tag for el in config.iter()} & {"HyperText", "Markdown", "Html", "Text", "Paragraphs"}
    assert not any("html" in el.attrib for el in config.iter())


def test_hostile_text_is_carried_as_plain_text(tmp_path):
    catalog = make_build(tmp_path / "b", n_images=1)
    row = load_drafts(catalog)[0]
    row.draft["question"] = f"Where is {HOSTILE}?"
    row.draft["display_name"] = HOSTILE
    data = task_payload(row, "/data/x.png", note=f"disputed: r-1: reject ({HOSTILE})")["data"]
    config = ET.fromstring(label_config())
    shown = {re.sub(r"^\$", "", el.get("value", "")) for el in config.iter("Header")}
    # the text arrives unaltered (no double escaping), in fields only Header shows
    assert HOSTILE in data["draft_text"] and HOSTILE in data["facts_what"] and HOSTILE in data["facts_note"]
    assert {"draft_text", "facts_what", "facts_note"} <= shown


def test_instructions_escape_html_and_unsafe_links():
    html = markdown_html(f"# Review\n\n{HOSTILE}\n\n[click](javascript:alert(3)) and [ok](https://example.org)")
    assert "<img" not in html and "<script" not in html and "href=\"javascript" not in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html and "&lt;script&gt;" in html
    assert '<a href="https://example.org">ok</a>' in html and "<h1>Review</h1>" in html
    shipped = instructions_html()
    assert shipped.startswith("<h") and "<script" not in shipped
