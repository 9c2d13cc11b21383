"""The review screen in a real browser: headless Chromium (the Debian package, driven by Playwright)
logs in to the test's Label Studio, reviews one task with mouse and keyboard, and `review pull`
brings back exactly what it did. First, at 1366 x 768 and 1920 x 1080, in the stream ("Label All
Tasks") and in the task-list view: the whole form is visible, the image uses the height (and grows on
the larger screen), the task list does not squeeze the form, and the image shown is the slice with
its patient directions marked. The tasks are the demo's own (the bundled sample, ingested and drafted as
`vgmed-build demo` does); `VGMED_REVIEW_SCREENSHOTS=docs` keeps the screenshots of docs/review.md.
A CT task switches between the windows rendered from the slice's Hounsfield units."""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from ingest_fixtures import SAMPLE_SOURCES, ingest
from labelstudio_fixture import drafts_of
from PIL import Image, ImageColor

from vgmed_build.catalog import Catalog, open_catalog
from vgmed_build.cli import main
from vgmed_build.ctslices import decode_hu, hu_path
from vgmed_build.imaging import ct_window, to_uint8
from vgmed_build.review.convert import box_colour
from vgmed_build.review.images import REVIEW_WINDOWS, window_choice
from vgmed_build.review.pull import pull, reviewer_id
from vgmed_build.review.push import push
from vgmed_build.review.server import connect
from vgmed_build.review.tasks import AS_RELEASED

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORTS = [(1366, 768), (1920, 1080)]
VIEWS = ("stream", "list")
# The bytes of the picture an <img> shows, fetched by the page (with its session).
FETCH_BYTES = "img => fetch(img.src).then(r => r.arrayBuffer()).then(b => Array.from(new Uint8Array(b)))"
# The CT window views (config.xml) shown over the image: hidden ones stay laid out, so look at the style.
SHOWN_WINDOWS = ("() => [...document.querySelectorAll('.vgmed-window')]"
                 ".filter(e => getComputedStyle(e).visibility === 'visible')"
                 ".map(e => [...e.classList].find(c => c !== 'vgmed-window'))")
# Set to a folder (e.g. docs/) to keep the screenshots of the review screen.
SCREENSHOTS_ENV = "VGMED_REVIEW_SCREENSHOTS"


def chromium_path() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium chromium-driver, as .ci/run does)")
    return found


@pytest.fixture
def browser_page(tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh --user-data-dir
            executable_path=chromium_path(),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": VIEWPORTS[0][0], "height": VIEWPORTS[0][1]},
        )
        context.set_default_timeout(60_000)
        try:
            yield context.new_page()
        finally:
            context.close()


def log_in(page, server) -> None:
    page.goto(server.url + "/user/login/")
    page.fill("input[name=email]", server.username)
    page.fill("input[name=password]", server.password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/user/login" not in url)


def open_stream(page, server, project_id: int) -> None:
    """Label All Tasks: the instructions come first; close them and wait for the task."""
    page.goto(f"{server.url}/projects/{project_id}/data?labeling=1")
    page.get_by_text("Labeling Instructions").wait_for()
    assert page.get_by_text("Reviewing vgmed drafts").is_visible()  # prompts/review_instructions.md
    page.keyboard.press("Escape")
    page.get_by_text("Labeling Instructions").wait_for(state="hidden")
    page.locator("[data-testid=htx-textbox-edit-button]").first.wait_for()
    page.locator(".vgmed-image canvas").first.wait_for()


def open_from_list(page, server, project_id: int) -> None:
    """The task-list view: the data manager's table on the left, the task opened beside it."""
    page.goto(f"{server.url}/projects/{project_id}/data")
    page.locator("[class*=row-wrapper]").first.click()
    page.locator("[data-testid=htx-textbox-edit-button]").first.wait_for()
    page.locator(".vgmed-image canvas").first.wait_for()


def fits(page, width: int, height: int) -> list[str]:
    """What of the review screen lies outside the viewport or under the Submit bar (nothing, when every
    field is visible without scrolling)."""
    parts = {
        "image": ".vgmed-image img",
        "facts": ".vgmed-facts",
        "question": "[data-testid=htx-textbox-content] >> nth=0",
        "answer": "[data-testid=htx-textbox-content] >> nth=1",
        "draft": ".vgmed-draft",
        "verdict": ".lsf-choices",
        "comment": "input[name=comment]",
        "box labels": ".vgmed-form .lsf-labels",
    }
    submit = page.locator("button:has-text('Submit')").first.bounding_box()
    outside = [] if submit and submit["y"] + submit["height"] <= height else [f"submit: {submit}"]
    for name, selector in parts.items():
        box = page.locator(selector).first.bounding_box()
        inside = box is not None and box["x"] >= 0 and box["y"] >= 0
        if not inside or box["x"] + box["width"] > width or box["y"] + box["height"] > submit["y"]:
            outside.append(f"{name}: {box}")
    return outside


@pytest.fixture
def demo(tmp_path) -> Catalog:
    """The bundled sample, ingested and drafted as `vgmed-build demo` does (before the browser starts:
    Playwright's sync API holds an event loop, and generate runs its own)."""
    build = tmp_path / "build"
    assert ingest(build, "--sources", str(SAMPLE_SOURCES)) == 0
    # --unbalanced keep: the axial MNI and CT slices hold every structure of their source, so by default
    # they get no localization "yes"; review is tried on those drafts.
    assert main(["generate", "--build", str(build), "--drafter", "templates", "--position-questions",
                 "--unbalanced", "keep", "--no-progress"]) == 0
    return open_catalog(build)


def demo_draft(catalog: Catalog, source: str, label: str) -> dict:
    """A localization draft about ``label`` (present, so with its boxes) on the sample's ``source``."""
    regions = dict(catalog.conn.execute("SELECT id, source FROM regions"))
    return next(d for d in drafts_of(catalog).values() if regions[d["region_id"]] == source
                and d["q_type"] == "localization" and not d.get("absent") and d["label"] == label)


def test_review_in_chromium_comes_back_exactly(labelstudio, demo, browser_page, tmp_path):
    page, catalog = browser_page, demo
    draft = demo_draft(catalog, "mni152", "left white matter")
    report = push(catalog, labelstudio, draft_ids=[draft["id"]], progress=False)
    log_in(page, labelstudio)

    # The whole screen fits at both sizes, in both views, opened at that size: facts, question, answer,
    # the draft, verdict, comment, box labels and Submit without scrolling; the image uncropped (the
    # picture fills its canvas exactly) and marked with the patient's directions.
    keep = os.environ.get(SCREENSHOTS_ENV)
    task_id = catalog.conn.execute("SELECT task_id FROM review_tasks").fetchone()[0]
    shown: dict[tuple[str, int], dict] = {}
    for width, height in VIEWPORTS:
        for view in VIEWS:
            page.set_viewport_size({"width": width, "height": height})
            (open_stream if view == "stream" else open_from_list)(page, labelstudio, report.project_id)
            page.wait_for_timeout(500)
            outside = fits(page, width, height)
            assert outside == [], (view, width, height, outside)
            img = page.locator(".vgmed-image img").bounding_box()
            stage = page.locator(".vgmed-image canvas").first.bounding_box()
            assert abs(img["width"] - stage["width"]) < 1 and abs(img["height"] - stage["height"]) < 1
            assert "_review" in page.evaluate(  # the slice with R / L, A / P drawn in (test_review_images.py)
                "id => fetch('/api/tasks/' + id).then(r => r.json()).then(t => t.data.image)", task_id)
            assert page.locator(".vgmed-form").bounding_box()["width"] >= 340, (view, width)  # never squeezed
            shown[view, width] = img
            shot = tmp_path / f"review-screen-{view}-{width}x{height}.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
            if keep:
                shutil.copy(shot, Path(keep) / shot.name)
    # The stream's image takes most of the height at 1366 x 768 (the MNI template's axial slice, taller
    # than wide, all Label Studio allows it: 100vh - 194 px) and grows on the larger screen, in both views.
    assert shown["stream", 1366]["height"] > 0.7 * 768
    for view in VIEWS:
        assert shown[view, 1920]["width"] > 1.4 * shown[view, 1366]["width"], view
    page.set_viewport_size({"width": 1366, "height": 768})
    open_stream(page, labelstudio, report.project_id)
    assert page.get_by_text(f"as drafted: {draft['question']} | answer: {draft['answer']}").is_visible()

    # Edit the question in place.
    new_question = "Is white matter on the patient's left visible on this axial MR slice?"
    page.locator("[data-testid=htx-textbox-edit-button]").first.click()
    editor = page.locator(".vgmed-form textarea:focus, .vgmed-form input:focus").first
    editor.wait_for()
    editor.fill(new_question)
    editor.press("Enter")  # a one-line editor: Enter saves and closes it
    page.get_by_text(new_question).wait_for()
    assert page.locator(".vgmed-form textarea:focus, .vgmed-form input:focus").count() == 0

    # Move the box: dragged 12 screen pixels right and 7 down (whole pixels: the browser delivers the
    # mouse at whole pixels), which is that many image pixels at the display scale.
    x0, y0, x1, y1 = draft["boxes"][0]
    img = page.locator(".vgmed-image img").bounding_box()
    scale = img["width"] / draft["width"]
    sx, sy = 12, 7
    dx, dy = round(sx / scale), round(sy / scale)
    # Grab the box by its top edge (outlines are drawn, not filled), a quarter along: the middle of
    # an edge is the resize handle of a selected box.
    grab_x, grab_y = round(img["x"] + (x0 + (x1 - x0) / 4) * scale), round(img["y"] + y0 * scale)
    page.mouse.click(grab_x, grab_y)
    page.mouse.move(grab_x, grab_y)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(grab_x + round(sx * step / 10), grab_y + round(sy * step / 10))
    page.mouse.up()

    # Verdict, comment, and submit with the keyboard (Ctrl+Enter).
    page.locator("label:has(input[name=edit])").click()
    page.fill("input[name=comment]", "box 1 moved")
    page.press("input[name=comment]", "Enter")  # a one-line TextArea adds its text on Enter
    page.get_by_text("box 1 moved").wait_for()
    page.keyboard.press("Control+Enter")
    page.wait_for_function(
        "id => fetch('/api/tasks/' + id).then(r => r.json()).then(t => t.total_annotations > 0)",
        arg=task_id,
        polling=500,
    )

    pulled = pull(catalog, labelstudio, progress=False)
    assert (pulled.new_events, pulled.errors) == (1, [])
    (event,) = [json.loads(rec) for (rec,) in catalog.conn.execute("SELECT record_json FROM review_events")]
    me = connect(labelstudio).users.whoami().id
    assert event["reviewer"] == reviewer_id(labelstudio.identity, me)
    assert event["verdict"] == "edit" and event["edited"]
    assert event["question"] == new_question and event["answer"] == draft["answer"]
    assert event["comment"] == "box 1 moved"
    assert event["boxes"] == [[x0 + dx, y0 + dy, x1 + dx, y1 + dy], *draft["boxes"][1:]]


def pick_window(page, choice: str) -> None:
    """Choose ``choice`` in the CT window drop-down (its options open in a pop-over at the page's end)."""
    page.locator(".vgmed-windows button").click()
    page.get_by_text(choice, exact=True).last.click()


def test_ct_window_switch_shows_the_slice_rendered_from_its_units(labelstudio, demo, browser_page):
    """The sample's CT slice is released in its mediastinal window; the review screen offers soft tissue,
    lung and bone, each rendered from the Hounsfield units ingest kept (not from the released PNG), laid
    exactly over the image with the draft's boxes drawn in, and back to the image the boxes are edited on."""
    page, catalog = browser_page, demo
    build = catalog.build_dir
    draft = demo_draft(catalog, "ct-seg", "aorta")
    units = decode_hu((build / hu_path(draft["image"])).read_bytes())
    released = np.asarray(Image.open(build / draft["image"]))
    # The units render the released PNG again in its window (to 1 grey level: the units are whole HU) ...
    assert np.abs(to_uint8(units, *ct_window("mediastinum")).astype(int) - released).max() <= 1
    # ... and hold what that window clipped: bone detail where the release is white.
    assert len(np.unique(to_uint8(units, *ct_window("bone"))[released == 255])) > 20
    report = push(catalog, labelstudio, draft_ids=[draft["id"]], progress=False)
    task_id = catalog.conn.execute("SELECT task_id FROM review_tasks").fetchone()[0]
    log_in(page, labelstudio)
    keep = os.environ.get(SCREENSHOTS_ENV)
    for (width, height), view in itertools.product(VIEWPORTS, VIEWS):
        page.set_viewport_size({"width": width, "height": height})
        (open_stream if view == "stream" else open_from_list)(page, labelstudio, report.project_id)
        page.wait_for_timeout(500)
        assert fits(page, width, height) == [], (view, width, height)  # the switch's row fits too
        main_img = page.locator(".vgmed-image img").first.bounding_box()
        assert page.evaluate(SHOWN_WINDOWS) == []  # no window picked: the image the boxes are edited on
        for name in REVIEW_WINDOWS:
            pick_window(page, window_choice(name))
            page.wait_for_function(f"() => ({SHOWN_WINDOWS})().join() === 'vgmed-window-{name}'")
            shown = page.locator(f".vgmed-window-{name} img")
            box = shown.bounding_box()
            assert all(abs(box[k] - main_img[k]) < 1 for k in ("x", "y", "width", "height")), (name, box, main_img)
            png = page.evaluate(FETCH_BYTES, shown.element_handle())
            pixels = np.asarray(Image.open(io.BytesIO(bytes(png))).convert("RGB"), dtype=int)
            expected = to_uint8(units, *ct_window(name)).astype(int)
            # Inside the box drawn in, the view is the slice in that window; the box is box 1's red.
            x0, y0, x1, y1 = draft["boxes"][0]
            inner = (slice(y0 + 3, y1 - 3), slice(x0 + 3, x1 - 3))
            assert np.abs(pixels[inner][..., 0] - expected[inner]).max() <= 1, name
            assert tuple(pixels[y1 - 1, (x0 + x1) // 2]) == ImageColor.getrgb(box_colour(0, 1)[1]), name
            if keep and name == "lung" and view == "stream":
                page.screenshot(path=str(Path(keep) / f"review-screen-ct-lung-{width}x{height}.png"))
        pick_window(page, AS_RELEASED)
        page.wait_for_function(f"() => ({SHOWN_WINDOWS})().length === 0")
    assert page.evaluate("id => fetch('/api/tasks/' + id).then(r => r.json()).then(t => t.data.windows.length)",
                         task_id) == 1 + len(REVIEW_WINDOWS)
