"""TUM RGB-D trajectory files.

The TUM format stores one camera-to-world pose per line as ``timestamp tx ty tz qx qy qz qw``: the optical
centre in world coordinates and a unit quaternion with the scalar **last**. The official Easi3R/MonST3R code
writes ``pred_traj.txt`` with the same columns but the quaternion scalar **first** (``t x y z qw qx qy qz``);
:func:`read_tum` reads it with ``scalar_first=True``. :func:`write_tum` always writes true TUM.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import roma
import torch
from numpy.typing import NDArray

from .._checks import as_float64, check_finite, check_shape
from ..errors import Easi3RInputError
from .atomic import atomic_write_text

__all__ = ["canonical_unitquat", "read_tum", "write_tum"]

_HEADER = "# timestamp tx ty tz qx qy qz qw (camera-to-world, TUM RGB-D format, quaternion scalar last)\n"
# Orthonormality tolerance for the rotation blocks: loose enough for float32 poses, tight enough to catch
# matrices that carry a scale or a shear (which a quaternion cannot represent).
_ORTHO_TOL = 1e-4


def canonical_unitquat(rotations: NDArray[np.float64]) -> NDArray[np.float64]:
    """Unit quaternions ``(..., 4)`` float64, XYZW (scalar last, roma's convention), of ``(..., 3, 3)`` rotations.

    ``q`` and ``-q`` are one rotation; the sign is fixed to ``qw >= 0`` so that files are comparable line by line.
    """
    rotmat = torch.from_numpy(np.ascontiguousarray(rotations, dtype=np.float64))
    quat: NDArray[np.float64] = roma.rotmat_to_unitquat(rotmat).numpy()
    quat[quat[..., 3] < 0] *= -1.0
    return quat


def _as_poses(cam2world: np.ndarray, name: str) -> NDArray[np.float64]:
    poses = as_float64(cam2world, name)
    check_shape(poses, "T 4 4", name)
    check_finite(poses, name)
    rot = poses[:, :3, :3]
    err = np.abs(rot.transpose(0, 2, 1) @ rot - np.eye(3)).max(axis=(1, 2))
    bad = np.flatnonzero((err > _ORTHO_TOL) | (np.linalg.det(rot) <= 0))
    if bad.size:
        raise Easi3RInputError(f"{name}[{bad[0]}] has a rotation block that is not a proper rotation matrix")
    return poses


def write_tum(path: str | os.PathLike[str], cam2world: np.ndarray, timestamps: np.ndarray | None = None) -> Path:
    """Write camera-to-world poses as a TUM trajectory, atomically.

    Args:
        path: destination file (missing parent folders are created).
        cam2world: ``(T, 4, 4)`` camera-to-world matrices (any float dtype, converted to float64).
        timestamps: ``(T,)`` timestamps in seconds; ``None`` writes the frame indices ``0, 1, ...``.

    Returns:
        The path written.

    Raises:
        Easi3RInputError: wrong shapes, non-finite values, or rotation blocks that are not rotations.

    The file is written under a temporary name in the same folder and then renamed
    (:func:`easi3r.export.atomic.atomic_write_text`), so an interrupted write never leaves a truncated file
    under ``path``. Quaternions are written with ``qw >= 0``.
    """
    poses = _as_poses(cam2world, "cam2world")
    n = poses.shape[0]
    if timestamps is None:
        stamps = np.arange(n, dtype=np.float64)
    else:
        stamps = as_float64(timestamps, "timestamps").reshape(-1)
        if stamps.shape[0] != n:
            raise Easi3RInputError(f"timestamps must have {n} entries (one per pose), got {stamps.shape[0]}")
    quat = canonical_unitquat(poses[:, :3, :3])  # (T, 4) xyzw
    rows = np.concatenate([stamps[:, None], poses[:, :3, 3], quat], axis=1)

    text = _HEADER + "".join(" ".join(f"{v:.9f}" for v in row) + "\n" for row in rows)
    return atomic_write_text(path, text)


def read_tum(
    path: str | os.PathLike[str], *, scalar_first: bool = False
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Read a TUM trajectory file.

    Args:
        path: the file. Lines starting with ``#`` and blank lines are skipped; columns may be separated by
            spaces, tabs or commas.
        scalar_first: read the quaternion as ``qw qx qy qz`` (the official Easi3R/MonST3R ``pred_traj.txt``)
            instead of the standard ``qx qy qz qw``.

    Returns:
        ``(timestamps, cam2world)``: ``(T,)`` float64 timestamps and ``(T, 4, 4)`` float64 camera-to-world
        matrices. Quaternions are normalised before conversion.

    Raises:
        Easi3RInputError: the file cannot be read, holds no pose, or a line is malformed (the message names
            the file and the 1-based line number).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise Easi3RInputError(f"cannot read trajectory file {path}: {exc}") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.replace(",", " ").split()
        try:
            values = [float(v) for v in fields]
        except ValueError:
            values = []
        if len(values) != 8 or not np.isfinite(values).all():
            raise Easi3RInputError(
                f"{path}:{lineno}: expected 8 finite numbers 'timestamp tx ty tz q q q q', got {stripped!r}"
            )
        q = np.asarray(values[4:])
        if np.linalg.norm(q) < 1e-12:
            raise Easi3RInputError(f"{path}:{lineno}: zero quaternion")
        rows.append(values)
    if not rows:
        raise Easi3RInputError(f"trajectory file {path} contains no pose")
    data = np.asarray(rows, dtype=np.float64)
    quat = data[:, 4:]
    if scalar_first:
        quat = quat[:, [1, 2, 3, 0]]
    quat = quat / np.linalg.norm(quat, axis=1, keepdims=True)
    cam2world = np.tile(np.eye(4), (len(data), 1, 1))
    cam2world[:, :3, :3] = roma.unitquat_to_rotmat(torch.from_numpy(np.ascontiguousarray(quat))).numpy()
    cam2world[:, :3, 3] = data[:, 1:4]
    return data[:, 0].copy(), cam2world
