"""The label and review pages in a real browser: Debian's Chromium driven by Playwright (headless).

Skipped when /usr/bin/chromium or the playwright package is missing (.ci/run installs both). The servers are
the real 'ppmtrack label' / 'ppmtrack review' commands, started on a free loopback port.
"""

import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from test_web import SAMPLE, write_results

from ppmtrack.pipelines.io.annotation import read_annotation

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 800}

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    pytest.importorskip("starlette", reason="the ui extra is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def serve():
    """Start a ppmtrack command that serves a page; returns its URL. Stopped (SIGTERM) after the test."""
    started = []

    def start(*args: str) -> str:
        proc = subprocess.Popen([sys.executable, "-m", "ppmtrack.pipelines.cli", *args, "--port", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(proc)
        line = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(60)
        match = re.search(r"http://\S+", line[0] if line else "")
        if not match:
            proc.kill()
            pytest.fail(f"the server did not start: {line} {proc.stderr.read()}")
        return match.group(0)

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(10)


def open_page(browser, url: str, frame: int):
    page = browser.new_page(viewport=VIEWPORT)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_function(f"document.body.dataset.frame === '{frame}'", timeout=30000)
    return page, errors


def canvas_point(page, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of the centre of image pixel (x, y) in the frame view."""
    view = page.evaluate("({s: ppm.view.scale, x: ppm.view.offsetX, y: ppm.view.offsetY})")
    box = page.locator("#view").bounding_box()
    return box["x"] + view["x"] + (x + 0.5) * view["s"], box["y"] + view["y"] + (y + 0.5) * view["s"]


def test_labeller_saves_clicked_points_and_shows_them_after_a_reload(browser, serve, tmp_path):
    from ppmtrack.pipelines.cli import _read_support, build_parser

    out = tmp_path / "support.json"
    url = serve("label", str(SAMPLE), "-o", str(out), "--keypoints", "nose,neck,tail", "--skeleton", "nose-neck")
    page, errors = open_page(browser, url, 0)
    wanted = {0: [(100, 80), (150.5, 120), (200, 161)], 40: [(30, 200), (290, 20.5), (160, 120)]}
    for frame, points in wanted.items():
        if frame:
            page.keyboard.press("Shift+ArrowRight")  # 10 frames at a time
            for _ in range(3):
                page.keyboard.press("Shift+ArrowRight")
            page.wait_for_function(f"document.body.dataset.frame === '{frame}'")
        for x, y in points:  # each click places the current keypoint and moves on to the next
            page.mouse.click(*canvas_point(page, x, y))
        page.evaluate("ppm.saved()")
    labels = read_annotation(out)
    assert [r.frame for r in labels.frames] == [0, 40] and labels.names == ["nose", "neck", "tail"]
    np.testing.assert_allclose(labels.keypoints, np.array([wanted[0], wanted[40]]), atol=1.0)
    # what 'ppmtrack adapt OUT' reads and checks before adapting
    args = build_parser().parse_args(["adapt", str(out), "-o", str(tmp_path / "x.engine"), "--model", "tiny"])
    _, support = _read_support(args)
    assert len(support.images) == 2 and support.images[0].shape == (240, 320, 3)

    page.reload()
    page.wait_for_function("document.body.dataset.frame === '0'")
    shown = page.evaluate("[...ppm.state.labels.values()].map((l) => [l.frame, l.points])")
    assert [f for f, _ in shown] == [0, 40]
    np.testing.assert_allclose([list(p.values()) for _, p in shown], labels.keypoints, atol=1e-3)
    assert page.locator("#labelled button").count() == 2
    assert not errors


def test_labeller_defines_keypoints_in_the_page_drags_a_point_and_marks_one_not_visible(browser, serve, tmp_path):
    out = tmp_path / "support.json"
    url = serve("label", str(SAMPLE), "-o", str(out))
    page, errors = open_page(browser, url, 0)
    assert page.locator("#define").get_attribute("open") is not None  # no keypoints yet: the editor is open
    page.fill("#names", "nose\nneck")
    page.fill("#skeleton", "nose, neck")
    page.click("#apply-names")
    fit = page.evaluate("ppm.view.scale")
    for key in ("+", "+", "-"):  # zoomed in: the clicks below go through the zoomed view
        page.keyboard.press(key)
    assert page.evaluate("ppm.view.scale") == pytest.approx(fit * 1.25)
    page.mouse.click(*canvas_point(page, 50, 50))  # nose
    page.keyboard.press("v")  # neck: not visible
    page.mouse.move(*canvas_point(page, 50, 50))
    page.mouse.down()
    page.mouse.move(*canvas_point(page, 120, 90), steps=4)
    page.mouse.up()
    page.evaluate("ppm.saved()")
    labels = read_annotation(out)
    assert labels.names == ["nose", "neck"] and labels.skeleton == [("nose", "neck")]
    np.testing.assert_allclose(labels.keypoints[0], [[120, 90], [np.nan, np.nan]], atol=1.0)
    assert not errors


def test_review_page_draws_the_csv_points_on_the_seeked_frame(browser, serve, tmp_path):
    tracks = write_results(tmp_path / "run")
    url = serve("review", str(tmp_path / "run"))
    page, errors = open_page(browser, url, 0)
    frame = 12
    page.evaluate(f"ppm.seek({frame})")
    page.wait_for_function(f"document.body.dataset.frame === '{frame}'")
    import cv2

    shot = cv2.imdecode(np.frombuffer(page.locator("#view").screenshot(), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    box = page.locator("#view").bounding_box()
    colours = page.evaluate("ppm.colours")
    for k in range(len(tracks.names)):
        x, y = canvas_point(page, *tracks.xy[frame, k])
        pixel = shot[round(y - box["y"]), round(x - box["x"])].astype(int)
        expected = np.array([int(colours[k][i:i + 2], 16) for i in (1, 3, 5)])
        assert np.abs(pixel - expected).max() <= 12, (tracks.names[k], pixel, expected)
        x0, y0 = canvas_point(page, *tracks.xy[0, k])  # where frame 0 has it: no dot of that colour now
        assert np.abs(shot[round(y0 - box["y"]), round(x0 - box["x"])].astype(int) - expected).max() > 12
    # correct the first keypoint on this frame and add the frame to the support file
    page.keyboard.press("e")
    page.mouse.move(*canvas_point(page, *tracks.xy[frame, 0]))
    page.mouse.down()
    page.mouse.move(*canvas_point(page, 30, 40), steps=4)
    page.mouse.up()
    page.keyboard.press("s")
    page.wait_for_function("document.getElementById('support-frames').textContent.includes('12')")
    labels = read_annotation(tmp_path / "run" / "sample.support.json")
    assert [r.frame for r in labels.frames] == [frame]
    np.testing.assert_allclose(labels.keypoints[0, 0], [30, 40], atol=1.0)
    np.testing.assert_allclose(labels.keypoints[0, 1:], tracks.xy[frame, 1:], atol=1e-3)
    assert "ppmtrack adapt" in page.locator("#adapt").text_content()
    page.keyboard.press(" ")  # play
    page.wait_for_function(f"Number(document.body.dataset.frame) >= {frame + 3}", timeout=30000)
    page.keyboard.press(" ")
    assert not errors
    assert json.loads((tmp_path / "run" / "sample.summary.json").read_text())["input"]["source"] == str(SAMPLE)
