"""The web app: its job function and knobs (no Gradio needed), the command-line parsers, and a real browser
driving ``easi3r app`` (Gradio, headless Chromium) on the fixture checkpoint and the synthetic demo clip."""

from __future__ import annotations

import argparse
import json
import logging
import zipfile
from pathlib import Path

import pytest
from browser.driver import browser_page, free_port, serve, skip_reason
from browser.media import read_video_frames

from easi3r import app
from easi3r.errors import Easi3RInputError

TINY = Path(__file__).parent / "data" / "reference" / "tiny_dust3r.pth"
#: Outputs every job's zip holds (besides the per-frame PNG folders).
EXPECTED = {"scene.glb", "scene.ply", "masks.mp4", "trajectory.tum", "trajectory.png", "reconstruction.npz",
            "config.json", "intrinsics.txt", "colmap/cameras.txt"}  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="easi3r")
    sub = parser.add_subparsers(dest="command", required=True)
    app.add_app_parser(sub)
    app.add_view_parser(sub)
    return parser


def test_parsers_defaults_and_options():
    args = _parser().parse_args(["app"])
    defaults = (args.host, args.port, args.backbone, args.image_size, args.flow)
    assert defaults == ("127.0.0.1", 7860, "monst3r", 512, True)
    args = _parser().parse_args(["app", "--backbone", "demo", "--port", "9000", "--no-flow", "--iterations", "3"])
    assert (args.backbone, args.port, args.flow, args.iterations, args.func) == ("demo", 9000, False, 3, app._cmd_app)
    args = _parser().parse_args(["view", "out", "--port", "8081", "--point-size", "0.02"])
    assert (args.out_dir, args.host, args.port, args.point_size, args.func) == ("out", "127.0.0.1", 8081, 0.02,
                                                                                app._cmd_view)  # fmt: skip


def test_view_command_on_a_missing_folder_is_a_one_line_error(tmp_path, capsys):
    assert app.main(["view", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read reconstruction file") and err.count("\n") == 1


def test_settings_become_a_validated_config():
    cfg = app.AppSettings(backbone="demo", image_size=64.0, max_frames=0, fps=0, window=3, threshold="0.25",
                          iterations=7, flow=False).config()  # fmt: skip
    assert (cfg.image_size, cfg.max_frames, cfg.fps, cfg.window, cfg.threshold) == (64, None, None, 3, 0.25)
    assert (cfg.align.iterations, cfg.flow) == (7, False)
    assert app.parse_threshold("OTSU") == "otsu" and app.parse_threshold(0.5) == 0.5
    for bad, match in (
        (dict(threshold="high"), "threshold must be"),
        (dict(threshold="1.5"), r"threshold must be in \[0, 1\]"),
        (dict(image_size=60), "multiple of 16"),
        (dict(iterations=2.5), "iterations must be a whole number"),
        (dict(backbone="  "), "backbone must name"),
    ):
        with pytest.raises(Easi3RInputError, match=match):
            app.AppSettings(**bad).config()


def test_stage_progress_forwards_pipeline_stages_and_restores_the_logger():
    logger = logging.getLogger("easi3r")
    before = logger.level
    seen = []
    with app.stage_progress(lambda f, s: seen.append((f, s))):
        logger.debug("stage: pass 2")
        logger.debug("stage: encode (4 frames, 8 pairs, global alignment)")
        logger.debug("not a stage")
    logger.debug("stage: alignment")  # after the block: not forwarded
    assert seen == [(0.4, "pass 2"), (0.05, "encode (4 frames, 8 pairs, global alignment)")]
    assert logger.level == before and not [h for h in logger.handlers if type(h).__name__ == "_Handler"]


def test_write_zip_holds_the_folder_without_temp_files(tmp_path):
    out = tmp_path / "easi3r_output"
    (out / "masks").mkdir(parents=True)
    (out / "a.txt").write_text("a")
    (out / "masks" / "00000.png").write_bytes(b"png")
    (out / ".b.txt.k2j9x_0a.tmp.txt").write_text("partial")  # the shape atomic_path gives a temp file
    path = app.write_zip(out, tmp_path / "out.zip")
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["easi3r_output/a.txt", "easi3r_output/masks/00000.png"]
        assert zf.read("easi3r_output/a.txt") == b"a"


def test_run_job_checks_its_input_before_any_work(tmp_path):
    cache = app.BackboneCache("cpu")
    with pytest.raises(Easi3RInputError, match="no input"):
        app.run_job(app.AppSettings(backbone=str(TINY)), [], tmp_path / "job", cache)
    with pytest.raises(Easi3RInputError, match="threshold"):
        app.run_job(app.AppSettings(threshold="x"), None, tmp_path / "job", cache)
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    with pytest.raises(Easi3RInputError, match="cannot open video"):
        app.run_job(app.AppSettings(backbone=str(TINY), image_size=64), [bad], tmp_path / "job", cache)
    assert cache._net is None  # the frames failed before the backbone was loaded


@pytest.mark.slow
def test_run_job_on_the_demo_clip(tmp_path):
    stages = []
    settings = app.AppSettings(backbone=str(TINY), image_size=64, iterations=2, flow=False, demo_frames=4)
    result = app.run_job(settings, None, tmp_path / "job", app.BackboneCache("cpu"),
                         progress=lambda f, s: stages.append((f, s.split(" (")[0])))  # fmt: skip
    # The app's own "load", the pipeline's stages (its "load" again), then the app's steps, in order.
    assert [s for _, s in stages] == ["load", "load", "encode", "k-means", "pass 1", "pass 2", "alignment",
                                      "assemble", "save", "videos", "zip", "finished"]  # fmt: skip
    fractions = [f for f, _ in stages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert result.num_frames == 4 and result.summary.startswith("4 frames at 64x48")
    with zipfile.ZipFile(result.archive) as zf:
        inside = {n.split("/", 1)[1] for n in zf.namelist()}
        assert EXPECTED <= inside and {f"masks/{t:05d}.png" for t in range(4)} <= inside
        config = json.loads(zf.read("easi3r_output/config.json"))
    assert config["backbone"] == str(TINY) and config["config"]["align"]["iterations"] == 2
    for video in (result.out_dir / "masks.mp4", result.preview):
        frames = read_video_frames(video)
        assert len(frames) == 4 and frames[0].shape == (48, 64, 3)
    assert result.glb.read_bytes()[:4] == b"glTF"
    panel = app.attention_image(app._App(tmp_path, "cpu", 2).reconstruction(str(result.out_dir)), 3)
    assert panel.ndim == 3 and panel.shape[2] == 3 and panel.shape[1] > 2 * panel.shape[0]


# ------------------------------------------------------------------------------------------------ the browser

SKIP = skip_reason("gradio")


@pytest.mark.slow
@pytest.mark.skipif(SKIP is not None, reason=SKIP or "")
def test_app_in_a_browser(tmp_path):
    """``easi3r app`` on a free local port: a bad upload shows the one-line error, then the demo clip runs through
    the page; the result video plays, the 3D model has a canvas, the zip downloads with the outputs."""
    port = free_port()
    args = ["-m", "easi3r.app", "app", "--backbone", str(TINY), "--device", "cpu", "--port", str(port)]
    args += ["--image-size", "64", "--max-frames", "4", "--demo-frames", "4", "--iterations", "3", "--no-flow"]
    bad = tmp_path / "bad.mp4"
    bad.write_text("this is a text file, not a video\n")
    with serve(args, port, tmp_path / "app.log", timeout=240), browser_page(tmp_path / "profile") as page:
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#run")
        # (2) A bad upload: the library's one-line error appears in the page.
        page.set_input_files("#upload input[type=file]", str(bad))
        page.locator("#upload").get_by_text("bad.mp4").wait_for()
        page.click("#run")
        page.wait_for_function("document.querySelector('#status').innerText.includes('error:')", timeout=120_000)
        status = page.inner_text("#status").strip()
        assert status.startswith("error: cannot open video") and status.endswith("bad.mp4'"), status
        # (1) The app keeps serving: the demo clip, with a knob set in the page (2 iterations).
        page.check("#source input[value='synthetic demo clip']")
        page.fill("#iterations input", "2")
        page.click("#run")
        page.wait_for_function("document.querySelector('#status').innerText.includes('done:')", timeout=300_000)
        assert page.inner_text("#status").strip().startswith("done: 4 frames at 64x48")
        video = page.locator("#result_video video")
        video.wait_for()
        page.wait_for_function("document.querySelector('#result_video video').readyState >= 2", timeout=30_000)
        assert page.evaluate("[document.querySelector('#result_video video').videoWidth, "
                             "document.querySelector('#result_video video').videoHeight]") == [64, 48]  # fmt: skip
        page.locator("#scene canvas").wait_for()
        page.locator("#panels img").wait_for()
        page.locator("#trajectory img").wait_for()
        shot = tmp_path / "app.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
        with page.expect_download() as download:
            page.locator("#archive a[download]").click()
        archive = tmp_path / "download.zip"
        download.value.save_as(archive)
    # The server stopped at the end of the block and removed its job files (uploads included).
    log = (tmp_path / "app.log").read_text()
    work = Path(log.split("job files in ", 1)[1].split(",", 1)[0])
    assert work.name.startswith("easi3r-app-") and not work.exists()
    with zipfile.ZipFile(archive) as zf:
        inside = {n.split("/", 1)[1] for n in zf.namelist()}
        assert EXPECTED <= inside, sorted(inside)
        assert json.loads(zf.read("easi3r_output/config.json"))["config"]["align"]["iterations"] == 2
        zf.extractall(tmp_path / "unzipped")
    # (3) The mp4 files open with OpenCV and have T frames.
    videos = sorted((tmp_path / "unzipped" / "easi3r_output").glob("*.mp4"))
    assert videos
    for path in videos:
        assert len(read_video_frames(path)) == 4, path
