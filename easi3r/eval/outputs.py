"""Reading a run's outputs back for evaluation: easi3r's own files or the official Easi3R launcher's.

Two folder layouts are accepted for one sequence (the first file found wins):

=============  ====================================  ================================================
quantity       easi3r (``Reconstruction.save``)      official (``dust3r/cloud_opt/base_opt.py`` savers)
=============  ====================================  ================================================
trajectory     ``trajectory.tum`` (qx qy qz qw)      ``pred_traj.txt`` (``t x y z qw qx qy qz``)
intrinsics     ``intrinsics.txt`` (9 per row)        ``pred_intrinsics.txt`` (9 per row)
depth          ``depths.npz`` (``depths``)           ``frame_{i:04d}.npy`` (``save_depth_maps``)
masks          ``masks/*.png``                       ``dynamic_mask_{i}.png`` (see :mod:`.masks`)
=============  ====================================  ================================================
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .._checks import check_finite, check_shape
from ..errors import Easi3RInputError
from ..export.tum import read_tum

__all__ = ["read_pred_depths", "read_pred_intrinsics", "read_pred_trajectory"]

_OFFICIAL_DEPTH = re.compile(r"^frame_(\d+)\.npy$")


def read_pred_trajectory(folder: str | os.PathLike[str]) -> NDArray[np.float64]:
    """``(T, 4, 4)`` float64 camera-to-world poses of a run folder (``trajectory.tum`` or ``pred_traj.txt``).

    Raises:
        Easi3RInputError: neither file exists, or the file is malformed.
    """
    d = Path(folder)
    if (d / "trajectory.tum").is_file():
        return read_tum(d / "trajectory.tum")[1]
    if (d / "pred_traj.txt").is_file():
        return read_tum(d / "pred_traj.txt", scalar_first=True)[1]
    raise Easi3RInputError(f"no trajectory in {d}: expected trajectory.tum or pred_traj.txt")


def read_pred_intrinsics(folder: str | os.PathLike[str]) -> NDArray[np.float64]:
    """``(T, 3, 3)`` float64 pixel intrinsics of a run folder (``intrinsics.txt`` or ``pred_intrinsics.txt``)."""
    d = Path(folder)
    path = next((d / n for n in ("intrinsics.txt", "pred_intrinsics.txt") if (d / n).is_file()), None)
    if path is None:
        raise Easi3RInputError(f"no intrinsics in {d}: expected intrinsics.txt or pred_intrinsics.txt")
    try:
        rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise Easi3RInputError(f"cannot read intrinsics file {path}: {exc}") from None
    if rows.shape[1] != 9:
        raise Easi3RInputError(f"{path}: expected 9 numbers per line (a row-major 3x3), got {rows.shape[1]}")
    check_finite(rows, str(path))
    return rows.reshape(-1, 3, 3)


def read_pred_depths(folder: str | os.PathLike[str]) -> NDArray[np.float64]:
    """``(T, H, W)`` float64 z-depth maps of a run folder (``depths.npz`` or ``frame_{i:04d}.npy``)."""
    d = Path(folder)
    if (d / "depths.npz").is_file():
        try:
            with np.load(d / "depths.npz", allow_pickle=False) as data:
                depths = np.asarray(data["depths"], dtype=np.float64)
        except (OSError, ValueError, KeyError) as exc:
            raise Easi3RInputError(f"cannot read {d / 'depths.npz'}: {exc}") from None
    else:
        numbered = sorted((int(m.group(1)), p) for p in d.glob("frame_*.npy") if (m := _OFFICIAL_DEPTH.match(p.name)))
        if not numbered:
            raise Easi3RInputError(f"no depth maps in {d}: expected depths.npz or frame_<i>.npy")
        try:
            depths = np.stack([np.load(p, allow_pickle=False).astype(np.float64) for _, p in numbered])
        except (OSError, ValueError) as exc:
            raise Easi3RInputError(f"cannot read the depth maps in {d}: {exc}") from None
    check_shape(depths, "T H W", f"depths of {d}")
    return depths
