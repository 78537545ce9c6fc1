"""Reading back the videos the app and the library write (OpenCV, as a user's player would)."""

from __future__ import annotations

import os

import cv2
import numpy as np

__all__ = ["read_video_frames"]


def read_video_frames(path: str | os.PathLike[str]) -> list[np.ndarray]:
    """Every frame of a video file as ``(H, W, 3)`` uint8 **RGB**, in order (empty when OpenCV cannot open it)."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(np.ascontiguousarray(frame[..., ::-1]))
    finally:
        cap.release()
    return frames
