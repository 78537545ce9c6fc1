"""masks.mp4 / attention.mp4: readable by OpenCV, T frames of the right size and content, written atomically."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from helpers.reconstruction import make_reconstruction

from easi3r.errors import Easi3RInputError
from easi3r.export.atomic import is_temp_name
from easi3r.export.images import mask_overlay
from easi3r.export.save import attention_frame
from easi3r.export.video import DEFAULT_FPS, VIDEO_CODECS, write_video

T, H, W = 5, 32, 48


def _read(path):
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(bgr[..., ::-1])
    cap.release()
    return np.stack(frames), fps


@pytest.mark.parametrize("fps", [12.0, None])
def test_save_videos(tmp_path, fps):
    rec = make_reconstruction(T=T, H=H, W=W, fps=fps)
    paths = rec.save(tmp_path, videos=True)
    assert paths["masks_video"] == tmp_path / "masks.mp4" and paths["attention_video"] == tmp_path / "attention.mp4"
    masks, rate = _read(tmp_path / "masks.mp4")
    assert masks.shape == (T, H, W, 3) and rate == pytest.approx(fps or DEFAULT_FPS)
    strips, _ = _read(tmp_path / "attention.mp4")
    assert strips.shape == (T, H, 6 * W, 3)
    for t in range(T):  # lossy codec: close to the source frames, and each frame is its own one
        err = [
            np.abs(masks[t].astype(int) - mask_overlay(rec.images[s], rec.masks[s]).astype(int)).mean()
            for s in range(T)
        ]
        assert err[t] < 12 and int(np.argmin(err)) == t
        assert np.abs(strips[t].astype(int) - attention_frame(rec, t).astype(int)).mean() < 20
    assert not [p for p in tmp_path.iterdir() if is_temp_name(p.name)]


def test_write_video_codec_and_errors(tmp_path):
    frames = [np.full((16, 32, 3), 40 * i, np.uint8) for i in range(3)]
    path, code = write_video(tmp_path / "a.mp4", frames, 5)
    assert code in VIDEO_CODECS
    cap = cv2.VideoCapture(str(path))
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode()
    # FFmpeg's decoder names MPEG-4 Part 2 "FMP4".
    assert fourcc in {"avc1": {"avc1", "h264", "H264"}, "mp4v": {"mp4v", "FMP4"}}[code]
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    cap.release()
    with pytest.raises(Easi3RInputError, match="no frames"):
        write_video(tmp_path / "empty.mp4", [], 5)
    with pytest.raises(Easi3RInputError, match="frame 1"):
        write_video(tmp_path / "mixed.mp4", [frames[0], np.zeros((8, 8, 3), np.uint8)], 5)
    with pytest.raises(Easi3RInputError, match="fps"):
        write_video(tmp_path / "bad.mp4", frames, 0)
    # Failed writes leave neither a final-name file nor a temporary one.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]
