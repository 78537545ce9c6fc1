"""``easi3r view`` in a real browser: the viser page loads, the WebGL canvas renders the points, and the frame
slider moves the frame (headless Chromium from the system packages, driven by Playwright)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from browser.driver import browser_page, free_port, serve, skip_reason, wait_for
from helpers.reconstruction import make_reconstruction
from PIL import Image

SKIP = skip_reason("viser")


def _canvas_pixels(page) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(page.locator("canvas").first.screenshot())).convert("RGB"), dtype=float)


@pytest.mark.slow
@pytest.mark.skipif(SKIP is not None, reason=SKIP or "")
def test_viewer_in_a_browser(tmp_path):
    rec = make_reconstruction(T=4, H=32, W=48)
    rec.save(tmp_path / "run")
    port = free_port()
    args = ["-m", "easi3r.app", "view", str(tmp_path / "run"), "--port", str(port), "--point-size", "0.05"]
    with serve(args, port, tmp_path / "view.log", timeout=120), browser_page(tmp_path / "profile") as page:
        page.goto(f"http://127.0.0.1:{port}/")
        page.get_by_text("frame 0 / 3: frame_00.png").wait_for()
        page.wait_for_timeout(2000)  # let the scene arrive and render
        before = _canvas_pixels(page)
        # The canvas renders something: not one flat colour.
        assert before.std(axis=(0, 1)).max() > 5.0
        shot = tmp_path / "viewer.png"
        page.screenshot(path=str(shot))
        print(f"screenshot: {shot}")
        slider = page.locator("[role=slider]").first
        assert slider.get_attribute("aria-valuemax") == "3"
        slider.focus()
        page.keyboard.press("ArrowRight")
        page.get_by_text("frame 1 / 3: frame_01.png").wait_for()
        assert slider.get_attribute("aria-valuenow") == "1"
        # Another frame's points are drawn: the canvas changes.
        wait_for(lambda: np.abs(_canvas_pixels(page) - before).mean() > 0.5, 20, "the canvas to show frame 1")
