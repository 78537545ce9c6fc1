"""MP4 videos of a result (OpenCV ``VideoWriter``), written atomically.

The codec is H.264 (FourCC ``avc1``) when the installed OpenCV can encode it, else MPEG-4 Part 2 (``mp4v``),
which every ``opencv-python-headless`` wheel can write: the PyPI wheels bundle FFmpeg without libx264, so on a
plain CPU machine ``avc1`` fails to open (FFmpeg then only finds the ``h264_v4l2m2m`` hardware encoder) and
the fallback is used. Each video is encoded into a temporary file in the destination folder and renamed when
complete (:func:`easi3r.export.atomic.atomic_path`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from .._checks import check_dtype, check_shape
from ..errors import Easi3RInputError, Easi3RRuntimeError
from .atomic import atomic_path

__all__ = ["DEFAULT_FPS", "VIDEO_CODECS", "write_video"]

#: Frame rate used when a result does not know the video's frame rate.
DEFAULT_FPS = 10.0
#: FourCC codes tried in order.
VIDEO_CODECS: tuple[str, ...] = ("avc1", "mp4v")


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's log while probing codecs (a failed ``avc1`` open logs errors), then restore it."""
    logging_mod = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging_mod is None:
        yield
        return
    level = logging_mod.getLogLevel()
    logging_mod.setLogLevel(logging_mod.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging_mod.setLogLevel(level)


def _open_writer(path: Path, fps: float, size: tuple[int, int], codecs: tuple[str, ...]) -> tuple[cv2.VideoWriter, str]:
    H, W = size
    for code in codecs:
        with _quiet_opencv():
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*code), fps, (W, H))
        if writer.isOpened():
            return writer, code
        writer.release()
    raise Easi3RRuntimeError(f"OpenCV cannot write an MP4 video here with any of the codecs {list(codecs)}")


def write_video(
    path: str | os.PathLike[str],
    frames: Iterable[np.ndarray],
    fps: float | None = None,
    *,
    codecs: tuple[str, ...] = VIDEO_CODECS,
    on_frame: Callable[[int], None] | None = None,
) -> tuple[Path, str]:
    """Encode RGB frames as an MP4 video, atomically.

    Args:
        path: destination ``.mp4`` file.
        frames: ``(H, W, 3)`` uint8 RGB images, all of one size (even sides for H.264).
        fps: frames per second; None uses :data:`DEFAULT_FPS`.
        codecs: FourCC codes tried in order (first one OpenCV can open wins).
        on_frame: called with the frame index after each frame (progress bars).

    Returns:
        ``(path, fourcc)``: the written file and the codec used.

    Raises:
        Easi3RInputError: no frame, frames of different sizes or not uint8 RGB, a bad ``fps``.
        Easi3RRuntimeError: OpenCV can open none of the codecs.
    """
    rate = DEFAULT_FPS if fps is None else float(fps)
    if not (np.isfinite(rate) and rate > 0):
        raise Easi3RInputError(f"fps must be a positive number, got {fps}")
    final = Path(path)
    writer: cv2.VideoWriter | None = None
    code = ""
    dims: dict[str, int] = {}
    with atomic_path(final) as tmp:
        try:
            for t, frame in enumerate(frames):
                img = np.asarray(frame)
                dims = check_shape(img, "H W 3", f"video frame {t}", dims=dims)
                check_dtype(img, (np.uint8,), f"video frame {t}")
                if writer is None:
                    writer, code = _open_writer(tmp, rate, (dims["H"], dims["W"]), codecs)
                writer.write(np.ascontiguousarray(img[..., ::-1]))
                if on_frame is not None:
                    on_frame(t)
        finally:
            if writer is not None:
                writer.release()
        if writer is None:
            raise Easi3RInputError(f"no frames to write into {final}")
    return final, code
