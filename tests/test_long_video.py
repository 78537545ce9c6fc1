"""Long videos: window-wise alignment inside the pipeline, no silent frame cap, dropped frames logged."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from easi3r import Easi3R
from easi3r.demo import render_video
from easi3r.pipeline import NetworkPointmaps, Trace

FAST = dict(device="cpu", image_size=64, iterations=3, flow=False, clusters=8)


@pytest.fixture(scope="module")
def runner(tiny_checkpoint: Path) -> Easi3R:
    return Easi3R(tiny_checkpoint, **FAST)


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return np.stack(render_video(12, 64, 48, seed=1).frames)


def test_one_window_equals_global_mode(runner: Easi3R, clip: np.ndarray, tiny_checkpoint: Path) -> None:
    """Window mode with a window covering the video re-runs the pairs in the same batches: identical outputs."""
    glob = runner.run(clip, progress=False)
    win = Easi3R(tiny_checkpoint, **FAST, alignment="window", align_window=len(clip)).run(clip, progress=False)
    for name in ("masks", "cam2world", "intrinsics", "depths", "points", "confidence"):
        np.testing.assert_array_equal(getattr(win, name), getattr(glob, name), err_msg=name)


def test_window_mode_fetches_one_window_of_pointmaps_at_a_time(
    tiny_checkpoint: Path, clip: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = NetworkPointmaps.__call__

    def counting(self: NetworkPointmaps, edge_indices):  # type: ignore[no-untyped-def]
        calls.append(len(edge_indices))
        frames = set(self.edges[edge_indices.cpu()].flatten().tolist())
        assert max(frames) - min(frames) < 6  # only the pairs of one window of 6 frames
        return original(self, edge_indices)

    monkeypatch.setattr(NetworkPointmaps, "__call__", counting)
    trace = Trace()
    rec = Easi3R(tiny_checkpoint, **FAST, alignment="auto", align_window=6).run(clip, progress=False, trace=trace)
    assert trace.alignment_mode == "window"
    assert len(calls) == 3  # windows [0, 6), [3, 9), [6, 12)
    assert sum(calls) < len(trace.edges)  # never all pairs at once (edges across windows are never aligned)
    assert trace.pass2 is not None and trace.pass2.pointmaps is None  # pass 2 kept no pointmaps
    assert np.isfinite(rec.cam2world).all() and np.isfinite(rec.points).all()
    assert (rec.depths > 0).all()


def _write_video(path: Path, n: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (64, 48))
    base = np.stack(render_video(4, 64, 48, seed=2).frames)
    for k in range(n):
        writer.write(cv2.cvtColor(base[k % 4], cv2.COLOR_RGB2BGR))
    writer.release()


def test_video_is_capped_at_200_frames_with_a_log(
    tmp_path: Path, runner: Easi3R, caplog: pytest.LogCaptureFixture
) -> None:
    video = tmp_path / "long.mp4"
    _write_video(video, 300)
    with caplog.at_level(logging.WARNING, logger="easi3r"):
        frames = runner.load(video)
    assert len(frames) == 200
    assert any("100 frames dropped" in r.getMessage() for r in caplog.records), caplog.text


def test_folder_is_not_cut_and_max_frames_none_keeps_every_video_frame(
    tmp_path: Path, tiny_checkpoint: Path, runner: Easi3R
) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    frame = np.asarray(render_video(1, 64, 48).frames[0])
    for k in range(250):
        Image.fromarray(frame).save(folder / f"{k:04d}.png")
    assert len(runner.load(folder)) == 250  # "auto": a folder is used whole
    video = tmp_path / "long.mp4"
    _write_video(video, 230)
    assert len(Easi3R(tiny_checkpoint, **FAST, max_frames=None).load(video)) == 230
    assert len(Easi3R(tiny_checkpoint, **FAST, max_frames=20).load(folder)) == 20


@pytest.mark.slow
def test_300_frame_folder_runs_end_to_end(tmp_path: Path, tiny_checkpoint: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for k, f in enumerate(render_video(300, 64, 48, seed=4).frames):
        Image.fromarray(f).save(folder / f"{k:04d}.png")
    trace = Trace()
    fast = {**FAST, "iterations": 2}
    rec = Easi3R(tiny_checkpoint, **fast, max_frames=None).run(folder, progress=False, trace=trace)
    assert rec.num_frames == 300 and trace.alignment_mode == "window"  # auto: 300 > align_window = 100
    assert np.isfinite(rec.cam2world).all() and np.isfinite(rec.depths).all()
