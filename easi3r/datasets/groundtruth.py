"""Ground-truth readers in the benchmark datasets' own file formats.

* TUM RGB-D / Bonn trajectories: text ``timestamp tx ty tz qx qy qz qw`` (camera-to-world), read by
  :func:`easi3r.export.tum.read_tum` (the official ``vo_eval.load_traj(..., 'tum')`` uses evo's
  ``read_tum_trajectory_file``).
* DyCheck (iPhone, as prepared by Easi3R ``data/prepare_iphone.py``): one JSON per frame in ``camera/`` with
  ``w2c`` (4x4 world-to-camera) and ``K`` (3x3 pixels), depth ``depth_npy/<frame>.npy`` (``(H, W)`` metres,
  0 = invalid), read as in ``point_metric.py`` (``load_iphone_traj``, ``load_iphone_intrinsics``,
  ``depth_read_iphone``).
* MPI Sintel: binary ``camdata_left/<seq>/frame_XXXX.cam``: float32 tag 202021.25, then the 3x3 intrinsics
  and the 3x4 world-to-camera matrix as float64 (the Sintel SDK's ``cam_read``, used by MonST3R's
  ``vo_eval.load_sintel_traj``).

The official loaders centre the trajectory (subtract the mean position) for DyCheck and Sintel; that is
invisible to the Sim(3)-aligned metrics and is not reproduced.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .._checks import check_finite, check_shape
from ..errors import Easi3RInputError
from ..export.tum import read_tum
from ..geometry import rigid_inverse

__all__ = [
    "SINTEL_TAG",
    "read_iphone_cameras",
    "read_iphone_depths",
    "read_sintel_cameras",
    "read_tum_groundtruth",
]

#: First float32 of every Sintel ``.cam`` file (the SDK's ``TAG_FLOAT``).
SINTEL_TAG = 202021.25


def read_tum_groundtruth(path: str | os.PathLike[str]) -> NDArray[np.float64]:
    """``(T, 4, 4)`` camera-to-world poses of a TUM-format ground-truth file (quaternion scalar last)."""
    return read_tum(path)[1]


def _world_to_camera(mat: np.ndarray, where: str) -> NDArray[np.float64]:
    w2c = np.eye(4)
    rows = 3 if mat.shape == (3, 4) else 4
    if mat.shape not in ((3, 4), (4, 4)):
        raise Easi3RInputError(f"{where}: expected a 3x4 or 4x4 world-to-camera matrix, got shape {mat.shape}")
    w2c[:rows] = mat
    check_finite(w2c, where)
    if abs(np.linalg.det(w2c[:3, :3]) - 1.0) > 1e-3:
        raise Easi3RInputError(f"{where}: the rotation block of the world-to-camera matrix is not a rotation")
    return w2c


def read_iphone_cameras(folder: str | os.PathLike[str]) -> tuple[NDArray[np.float64], NDArray[np.float64], list[str]]:
    """Cameras of a prepared DyCheck sequence.

    Args:
        folder: the ``camera/`` folder (one ``<frame>.json`` per frame, sorted by name).

    Returns:
        ``(cam2world (T, 4, 4), K (T, 3, 3), frame names)``; ``cam2world`` is the inverse of ``w2c``.

    Raises:
        Easi3RInputError: no JSON file, or a file without valid ``w2c`` / ``K``.
    """
    files = sorted(Path(folder).glob("*.json"))
    if not files:
        raise Easi3RInputError(f"no camera JSON files in {folder}")
    w2c, K = [], []
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
            mat, k = np.asarray(data["w2c"], dtype=np.float64), np.asarray(data["K"], dtype=np.float64)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise Easi3RInputError(f"cannot read camera file {f}: {exc}") from None
        w2c.append(_world_to_camera(mat, str(f)))
        check_shape(k, "3 3", f"K of {f}")
        K.append(k)
    return rigid_inverse(np.stack(w2c)), np.stack(K), [f.stem for f in files]


def read_iphone_depths(folder: str | os.PathLike[str], names: list[str]) -> NDArray[np.float64]:
    """``(T, H, W)`` float64 ground-truth depth ``folder/<name>.npy`` of the given frames (0 = invalid)."""
    out = []
    for name in names:
        path = Path(folder) / f"{name}.npy"
        try:
            depth = np.load(path, allow_pickle=False).astype(np.float64)
        except (OSError, ValueError) as exc:
            raise Easi3RInputError(f"cannot read ground-truth depth {path}: {exc}") from None
        check_shape(depth, "H W", str(path))
        out.append(np.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0))
    shapes = {d.shape for d in out}
    if len(shapes) != 1:
        raise Easi3RInputError(f"ground-truth depth maps in {folder} differ in size: {sorted(shapes)}")
    return np.stack(out)


def read_sintel_cameras(folder: str | os.PathLike[str]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Cameras of a Sintel sequence: ``(cam2world (T, 4, 4), K (T, 3, 3))`` from its ``*.cam`` files (sorted).

    Raises:
        Easi3RInputError: no ``.cam`` file, a wrong tag or a truncated file.
    """
    files = sorted(Path(folder).glob("*.cam"))
    if not files:
        raise Easi3RInputError(f"no Sintel .cam files in {folder}")
    w2c, K = [], []
    for f in files:
        raw = f.read_bytes()
        if len(raw) < 4 + 21 * 8:
            raise Easi3RInputError(f"{f} is truncated: {len(raw)} bytes, a Sintel camera file holds {4 + 21 * 8}")
        tag = float(np.frombuffer(raw[:4], dtype="<f4")[0])
        if tag != SINTEL_TAG:
            raise Easi3RInputError(f"{f} is not a Sintel camera file (tag {tag}, expected {SINTEL_TAG})")
        values = np.frombuffer(raw[4 : 4 + 21 * 8], dtype="<f8")
        K.append(values[:9].reshape(3, 3).copy())
        w2c.append(_world_to_camera(values[9:].reshape(3, 4), str(f)))
    return rigid_inverse(np.stack(w2c)), np.stack(K)
