"""The demo in headless Chromium: upload a photo, see the label and the heatmap; stream a
(fake) webcam showing a face and check the live view keeps up.

Uses Debian's /usr/bin/chromium through pip's playwright (never `playwright install`); skips
when either is missing. MPAFER_SCREENSHOTS=1 serves the bundled default model instead of the untrained
one and saves docs/screenshots/demo.png and live.png (README's pictures):
    MPAFER_SCREENSHOTS=1 python -m pytest -q tests/test_demo_browser.py
"""
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ASTRONAUT, REPO, served_app

sys.path.insert(0, str(REPO))

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = REPO / "docs" / "screenshots"
TAKE_SCREENSHOTS = os.environ.get("MPAFER_SCREENSHOTS") == "1"

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def app_url():
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    # screenshots show what users see: the bundled model (the tests hold for either)
    with served_app(checkpoint=None if TAKE_SCREENSHOTS else "untrained") as (demo, _):
        yield demo.local_url


def write_webcam_video(path: Path, frames: int = 20) -> Path:
    """A Y4M clip (640x480, 4:2:0) of the astronaut, drifting sideways, for Chromium's fake camera."""
    photo = Image.open(ASTRONAUT).convert("RGB").resize((640, 640)).crop((0, 0, 640, 480))
    with open(path, "wb") as out:
        out.write(b"YUV4MPEG2 W640 H480 F10:1 Ip A1:1 C420jpeg\n")
        for i in range(frames):
            frame = photo.transform(photo.size, Image.Transform.AFFINE, (1, 0, i - frames // 2, 0, 1, 0))
            luma, blue, red = frame.convert("YCbCr").split()
            out.write(b"FRAME\n" + np.asarray(luma).tobytes())
            out.write(np.asarray(blue.resize((320, 240))).tobytes() + np.asarray(red.resize((320, 240))).tobytes())
    return path


@pytest.fixture(scope="module")
def page(app_url, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    video = write_webcam_video(tmp_path_factory.mktemp("webcam") / "face.y4m")
    fake_camera = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                   f"--use-file-for-fake-video-capture={video}"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS + fake_camera)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000}, permissions=["camera"])
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.goto(app_url, wait_until="domcontentloaded")
            yield page
        finally:
            browser.close()


def _save_screenshot(page, name: str, height: int = 1720) -> None:
    """The page down to the descriptions table, palette-quantised to stay under about 200 KB."""
    from io import BytesIO

    from PIL import Image

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = Image.open(BytesIO(page.screenshot(full_page=True))).convert("RGB")
    shot = shot.crop((0, 0, shot.width, min(shot.height, height)))
    shot = shot.resize((1024, round(shot.height * 1024 / shot.width)), Image.Resampling.LANCZOS)
    shot = shot.quantize(colors=96, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    shot.save(SCREENSHOTS / name, optimize=True)


def test_upload_shows_label_heatmap_and_descriptions(page):
    from playwright.sync_api import expect

    if TAKE_SCREENSHOTS:
        expect(page.locator("#untrained-banner")).to_have_count(0)
    else:
        expect(page.locator("#untrained-banner")).to_contain_text("untrained")
    page.locator("#photo-input input[type=file]").set_input_files(str(ASTRONAUT))
    expect(page.locator("#message")).to_contain_text("One face", timeout=60_000)

    label = page.locator("#probabilities")
    expect(label).to_contain_text("%")
    message = page.locator("#message").inner_text()
    predicted = message.split(":", 1)[1].split("(")[0].strip(" *")
    expect(label).to_contain_text(predicted)

    heatmap = page.locator("#heatmap img")
    expect(heatmap).to_be_visible()
    assert page.evaluate("img => img.complete && img.naturalWidth", heatmap.element_handle()) == 224
    expect(page.locator("#regions")).to_contain_text("mouth")
    expect(page.locator("#regions")).to_contain_text("match (")
    expect(page.locator("#annotated img")).to_be_visible()
    expect(page.locator("#about-note")).to_contain_text("not inner emotions")
    expect(page.locator("#heat-legend")).to_contain_text("cosine similarity")
    expect(page.locator("#heat-class input")).to_have_value(predicted)  # the picker starts at the prediction
    # the upload's file is deleted once decoded: the photo the user chose still shows
    preview = page.locator("#photo-input img").first
    expect(preview).to_be_visible()
    assert page.evaluate("img => img.complete && img.naturalWidth", preview.element_handle()) > 0

    if TAKE_SCREENSHOTS:
        _save_screenshot(page, "demo.png")


def _pick(page, dropdown: str, choice: str) -> None:
    """Choose ``choice`` in the Gradio dropdown ``dropdown`` (a CSS selector) as a user would."""
    box = page.locator(f"{dropdown} input")
    box.click()
    box.fill(choice)  # filters the list down to the choice
    page.get_by_role("option", name=choice, exact=True).click()


def test_outlines_contrast_occlusion_and_gradcam_for_the_picked_class(page):
    from playwright.sync_api import expect

    predicted = page.locator("#message").inner_text().split(":", 1)[1].split("(")[0].strip(" *")
    expect(page.locator("#heat-legend")).to_contain_text("the 16 patches that entered the score")
    # why A rather than B: B starts at the runner-up, with its own legend
    legend = page.locator("#contrast-legend")
    expect(legend).to_contain_text(f"Why {predicted} rather than", timeout=30_000)
    runner = page.locator("#contrast-class input").input_value()
    assert runner and runner != predicted
    expect(legend).to_contain_text(f"Why {predicted} rather than {runner}?")
    contrast = page.locator("#contrast img")
    expect(contrast).to_be_visible()
    assert page.evaluate("img => img.complete && img.naturalWidth", contrast.element_handle()) == 224
    # the occlusion check beside it, in words
    expect(page.locator("#occlusion-summary")).to_contain_text(f"Blurring check for {predicted}")
    expect(page.locator("#occlusion")).to_contain_text("mouth")
    expect(page.locator("#occlusion")).to_contain_text("points")
    # another B in the second picker redraws the contrast
    from mpafer.data.classes import FERPLUS_CLASSES  # both models' classes

    first_src = contrast.get_attribute("src")
    other = next(name for name in FERPLUS_CLASSES if name not in (predicted, runner))
    _pick(page, "#contrast-class", other)
    expect(legend).to_contain_text(f"Why {predicted} rather than {other}?", timeout=30_000)
    expect(contrast).not_to_have_attribute("src", first_src)
    # Grad-CAM for the class in the heatmap picker, not only the predicted one
    page.locator("#gradcam-toggle input[type=checkbox]").check()
    expect(page.locator("#gradcam img")).to_be_visible(timeout=60_000)
    expect(page.locator("#gradcam")).to_contain_text(f"Grad-CAM for {predicted}")
    _pick(page, "#heat-class", other)
    expect(page.locator("#gradcam")).to_contain_text(f"Grad-CAM for {other}", timeout=60_000)
    expect(legend).to_contain_text(f"Why {other} rather than {predicted}?")  # B was A: back to the prediction
    page.locator("#gradcam-toggle input[type=checkbox]").uncheck()
    expect(page.locator("#gradcam img")).to_be_hidden(timeout=30_000)


def test_probe_plain_text_bar_chart_and_cleared_by_a_new_photo(page, tmp_path):
    from playwright.sync_api import expect

    button = page.locator("#probe-button")
    expect(button).to_be_visible()
    assert "primary" in (button.get_attribute("class") or "")
    page.locator("#probe-text textarea").fill("<b>wide</b> **eyes**")
    button.click()
    result = page.locator("#probe-message textarea")
    expect(result).to_have_value(re.compile(re.escape('"<b>wide</b> **eyes**"')), timeout=60_000)
    expect(page.locator("#probe-heatmap img")).to_be_visible()
    expect(page.locator("#probe-chart canvas, #probe-chart svg").first).to_be_visible()
    # a new photo (an upload, deleted once decoded, replacing the first): the last probe's results go
    photo = tmp_path / "mirrored.png"
    Image.open(ASTRONAUT).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photo)
    page.locator("#photo-input input[type=file]").set_input_files(str(photo))
    expect(result).to_have_value("", timeout=60_000)
    expect(page.locator("#message")).to_contain_text("One face", timeout=60_000)
    page.wait_for_timeout(2000)  # the page asks a second time for the same upload: still one face
    expect(page.locator("#message")).to_contain_text("One face")
    preview = page.locator("#photo-input img").first
    assert page.evaluate("img => img.complete && img.naturalWidth", preview.element_handle()) > 0


def test_group_picture_every_face_boxed_and_the_limit_said(page, tmp_path):
    """A class photo of 64 faces (about 55 px each, 1600x1000): all are found, the 50 largest
    are analysed and numbered, and the note under the picture says so."""
    from playwright.sync_api import expect

    from test_demo_faces import group_picture

    picture = tmp_path / "class.jpg"
    group_picture(8, 8, (1600, 1000)).save(picture, quality=90)
    page.get_by_role("tab", name="Photo").click()
    page.locator("#photo-input input[type=file]").set_input_files(str(picture))
    message = page.locator("#message")
    expect(message).to_contain_text("Showing the 50 largest of 64 faces", timeout=120_000)
    expect(message).to_contain_text("numbered in reading order")
    expect(message).to_contain_text("50: ")
    annotated = page.locator("#annotated img")
    expect(annotated).to_be_visible()
    assert page.evaluate("img => img.complete && img.naturalWidth", annotated.element_handle()) == 1600


def test_live_webcam_keeps_up(page, monkeypatch):
    """Frames from the (fake) camera are analysed at 5 or more per second on this machine."""
    from playwright.sync_api import expect

    from demo import live_view

    calls, averaged = [], []
    original = live_view.live

    def counted(predictor, frame, *tracker):
        result = original(predictor, frame, *tracker)
        calls.append((time.monotonic(), frame is not None and result is not None))
        # how many frames the face's smoothed label is the mean of: the tab's tracker persists
        averaged.append(max((len(t.history) for t in tracker[0].tracks), default=0) if tracker else 0)
        return result

    monkeypatch.setattr(live_view, "live", counted)  # the app looks the handler up per call
    page.get_by_role("tab", name="Live webcam").click()
    camera = page.locator("#live-webcam")
    camera.get_by_role("button", name="Click to Access Webcam").click()
    camera.locator("button", has_text="Record").click()
    expect(page.locator("#live-output img")).to_be_visible(timeout=30_000)
    time.sleep(1.0)  # warm-up
    start, first = time.monotonic(), len(calls)
    time.sleep(4.0)
    rate = (len(calls) - first) / (time.monotonic() - start)
    print(f"live view: {rate:.1f} frames analysed per second")  # shown with pytest -rP
    assert rate >= 5.0, f"live view updated {rate:.1f} times a second"
    assert all(ok for _, ok in calls[first:])
    assert max(averaged) >= 3  # labels averaged over several frames (about 0.5 s), not per frame
    if TAKE_SCREENSHOTS:
        _save_screenshot(page, "live.png", height=860)
    camera.locator("button", has_text="Stop").click()
