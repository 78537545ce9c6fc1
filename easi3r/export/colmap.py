"""COLMAP sparse model in text format (``cameras.txt``, ``images.txt``, ``points3D.txt``).

Downstream NeRF / Gaussian-splatting tools read this layout. Conventions of the files
(https://colmap.github.io/format.html):

- One ``PINHOLE`` camera per frame: ``CAMERA_ID PINHOLE WIDTH HEIGHT fx fy cx cy``. COLMAP puts the
  *centre* of the top-left pixel at ``(0.5, 0.5)``; easi3r (like OpenCV) puts it at ``(0, 0)``. So the
  principal point is written as ``cx + 0.5, cy + 0.5``; focal lengths are unchanged.
- ``images.txt``: per image ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME``, the **world-to-camera**
  pose with a Hamilton quaternion, scalar **first**, followed by a line of 2D points (left empty: we
  have no keypoints). Camera axes are OpenCV's (x right, y down, z forward), as in easi3r.
- ``points3D.txt``: ``POINT3D_ID X Y Z R G B ERROR TRACK[]``; we write error ``0`` and an empty track,
  which COLMAP's reader accepts (it stops at the end of the line).

Image ids and camera ids are ``frame index + 1`` (COLMAP ids are positive).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._checks import as_float64, check_shape
from ..errors import Easi3RInputError
from ..geometry import rigid_inverse
from .atomic import atomic_write_text
from .tum import canonical_unitquat

__all__ = [
    "COLMAP_PIXEL_OFFSET",
    "colmap_cameras_text",
    "colmap_images_text",
    "colmap_points_text",
    "write_colmap",
]

# Added to OpenCV pixel coordinates to obtain COLMAP ones (pixel centres at integer + 0.5).
COLMAP_PIXEL_OFFSET = 0.5


def colmap_cameras_text(intrinsics: np.ndarray, size: tuple[int, int]) -> str:
    """``cameras.txt`` content: one PINHOLE camera per frame.

    Args:
        intrinsics: ``(T, 3, 3)`` pinhole matrices in pixels, OpenCV convention (pixel centres at integers).
        size: ``(H, W)`` image size in pixels.
    """
    K = as_float64(intrinsics, "intrinsics")
    check_shape(K, "T 3 3", "intrinsics")
    H, W = size
    out = io.StringIO()
    out.write("# Camera list with one line of data per camera:\n")
    out.write("#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n")
    out.write(f"# Number of cameras: {len(K)}\n")
    for i, k in enumerate(K):
        params = (k[0, 0], k[1, 1], k[0, 2] + COLMAP_PIXEL_OFFSET, k[1, 2] + COLMAP_PIXEL_OFFSET)
        # repr of a Python float is the shortest string that round-trips exactly.
        out.write(f"{i + 1} PINHOLE {W} {H} " + " ".join(repr(float(p)) for p in params) + "\n")
    return out.getvalue()


def colmap_images_text(cam2world: np.ndarray, names: Sequence[str]) -> str:
    """``images.txt`` content: world-to-camera pose (qw qx qy qz tx ty tz) per image, empty keypoint lines.

    Args:
        cam2world: ``(T, 4, 4)`` camera-to-world, OpenCV camera axes.
        names: ``T`` image file names relative to the image folder (no spaces: COLMAP splits on them).
    """
    c2w = as_float64(cam2world, "cam2world")
    check_shape(c2w, "T 4 4", "cam2world")
    if len(names) != len(c2w):
        raise Easi3RInputError(f"need one image name per pose: {len(names)} names for {len(c2w)} poses")
    bad = [n for n in names if not n or any(ch.isspace() for ch in n)]
    if bad:
        raise Easi3RInputError(f"COLMAP image names must be non-empty without whitespace, got {bad[0]!r}")
    # The rigid inverse (R^T, -R^T t) is exact where np.linalg.inv would add round-off.
    w2c = rigid_inverse(c2w)
    quat = canonical_unitquat(w2c[:, :3, :3])  # xyzw, qw >= 0
    out = io.StringIO()
    out.write("# Image list with two lines of data per image:\n")
    out.write("#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n")
    out.write("#   POINTS2D[] as (X, Y, POINT3D_ID)\n")
    out.write(f"# Number of images: {len(c2w)}, mean observations per image: 0\n")
    for i, (q, T, name) in enumerate(zip(quat, w2c, names)):
        x, y, z, w = (repr(float(v)) for v in q)
        tx, ty, tz = (repr(float(v)) for v in T[:3, 3])
        out.write(f"{i + 1} {w} {x} {y} {z} {tx} {ty} {tz} {i + 1} {name}\n\n")
    return out.getvalue()


def colmap_points_text(points: np.ndarray, colors: np.ndarray) -> str:
    """``points3D.txt`` content: ``id x y z r g b 0`` per point, empty tracks.

    Args:
        points: ``(N, 3)`` world coordinates.
        colors: ``(N, 3)`` uint8 RGB.
    """
    pts = as_float64(points, "points").reshape(-1, 3)
    cols = np.asarray(colors).reshape(-1, 3)
    if len(pts) != len(cols):
        raise Easi3RInputError(f"points ({len(pts)}) and colors ({len(cols)}) must have the same length")
    out = io.StringIO()
    out.write("# 3D point list with one line of data per point:\n")
    out.write("#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n")
    out.write(f"# Number of points: {len(pts)}, mean track length: 0\n")
    if len(pts):
        ids = np.arange(1, len(pts) + 1, dtype=np.float64)
        flat = np.column_stack([ids, pts, cols.astype(np.float64), np.zeros(len(pts))])
        np.savetxt(out, flat, fmt=["%d", "%.9g", "%.9g", "%.9g", "%d", "%d", "%d", "%d"], delimiter=" ")
    return out.getvalue()


def write_colmap(
    folder: str | os.PathLike[str],
    cam2world: np.ndarray,
    intrinsics: np.ndarray,
    size: tuple[int, int],
    image_names: Sequence[str],
    points: np.ndarray | None = None,
    colors: np.ndarray | None = None,
    *,
    max_points: int | None = 100_000,
    seed: int = 0,
) -> dict[str, Path]:
    """Write a COLMAP text model (each file atomically) into ``folder``.

    Args:
        folder: output folder (created).
        cam2world: ``(T, 4, 4)`` camera-to-world, OpenCV camera axes.
        intrinsics: ``(T, 3, 3)`` at image size ``size``, OpenCV pixel convention.
        size: ``(H, W)`` of the images.
        image_names: ``T`` file names relative to the image folder.
        points: ``(N, 3)`` world points for ``points3D.txt`` (None writes an empty point list).
        colors: ``(N, 3)`` uint8 RGB of ``points``.
        max_points: keep at most this many points, a uniform random subset (None keeps all).
        seed: seed of that subset, so repeated exports are identical.

    Returns:
        ``{"cameras": path, "images": path, "points3D": path}``.
    """
    folder = Path(folder)
    c2w = as_float64(cam2world, "cam2world")
    K = as_float64(intrinsics, "intrinsics")
    check_shape(K, "T 3 3", "intrinsics", dims=check_shape(c2w, "T 4 4", "cam2world"))
    if points is None:
        pts = np.zeros((0, 3))
        cols = np.zeros((0, 3), dtype=np.uint8)
    else:
        pts = np.asarray(points).reshape(-1, 3)
        cols = np.zeros((len(pts), 3), np.uint8) if colors is None else np.asarray(colors).reshape(-1, 3)
        if max_points is not None and len(pts) > max_points:
            keep = np.sort(np.random.default_rng(seed).choice(len(pts), size=max_points, replace=False))
            pts, cols = pts[keep], cols[keep]
    return {
        "cameras": atomic_write_text(folder / "cameras.txt", colmap_cameras_text(K, size)),
        "images": atomic_write_text(folder / "images.txt", colmap_images_text(c2w, image_names)),
        "points3D": atomic_write_text(folder / "points3D.txt", colmap_points_text(pts, cols)),
    }
