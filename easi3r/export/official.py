"""The official Easi3R / MonST3R output files (``layout="official"``), written next to ours.

Names and conventions of official ``dust3r/cloud_opt/base_opt.py`` (``save_tum_poses``, ``save_focals``,
``save_intrinsics``, ``save_conf_maps``, ``save_init_conf_maps``, ``save_rgb_imgs``, ``save_dynamic_masks``,
``save_depth_maps``) as the demo and ``dust3r/pose_eval.py`` write them, so that the official readers
(``point_metric.py``, ``mask_metric.py``) and tools built on them can read a folder saved by easi3r:

===========================  ============================================================================
file                         content
===========================  ============================================================================
``pred_traj.txt``            one line per frame ``t x y z qw qx qy qz``, camera-to-world, quaternion
                             **scalar first** (not TUM's ``qx qy qz qw``), ``t = 0.0, 1.0, ...`` (frame
                             index), values as Python ``str(float)``; quaternions of scipy
                             ``Rotation.as_quat()`` (official ``c2w_to_tumpose``)
``pred_intrinsics.txt``      one row per frame, the 9 values of the row-major 3x3 ``K``, ``%.6f``, pixels of
                             the processed image
``pred_focal.txt``           one focal per line (``(fx + fy) / 2``), ``%.6f``
``frame_NNNN.npy``           ``(H, W)`` float32 z-depth, ``NNNN`` zero-padded to 4
``frame_NNNN.png``           the processed RGB frame, 8-bit (the official depth PNG of this name is
                             overwritten by the RGB frame)
``conf_N.npy``               ``(H, W)`` float32 **log** confidence (official ``get_conf()`` with
                             ``conf_trf='log'``), after the GLB cleaning (``clean_depth`` / ``mask_sky``):
                             cleaned pixels are ``-inf``; ``N`` not padded
``init_conf_N.npy``          log confidence before cleaning
``dynamic_mask_N.png``       ``(H, W)`` uint8 grey 0 / 255 dynamic mask, ``N`` not padded
===========================  ============================================================================

Files of these names for frame indices ``>= T`` (an earlier, longer run in the same folder) are removed.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from scipy.spatial.transform import Rotation

from .._checks import as_float64, check_shape
from .atomic import atomic_write_bytes, atomic_write_text
from .images import write_png

if TYPE_CHECKING:
    from ..result import Reconstruction

__all__ = ["OFFICIAL_PER_FRAME", "official_traj_text", "write_official"]

#: Per-frame files of the official layout (format strings of the frame index), in writing order.
OFFICIAL_PER_FRAME: tuple[str, ...] = (
    "frame_{:04d}.npy",
    "frame_{:04d}.png",
    "conf_{}.npy",
    "init_conf_{}.npy",
    "dynamic_mask_{}.png",
)
# The same names as patterns, for the stale-file clean-up (group 1 is the index).
_STALE_PATTERNS = tuple(
    re.compile("^" + re.escape(f).replace(re.escape("{:04d}"), r"(\d{4,})").replace(re.escape("{}"), r"(\d+)") + "$")
    for f in OFFICIAL_PER_FRAME
)


def official_traj_text(cam2world: np.ndarray) -> str:
    """The content of the official ``pred_traj.txt`` for ``(T, 4, 4)`` camera-to-world poses.

    Line ``t``: ``f"{t} {x} {y} {z} {qw} {qx} {qy} {qz}"`` with ``t`` the float frame index and the quaternion of
    scipy ``Rotation.from_matrix(R).as_quat()`` reordered to scalar first (official
    ``dust3r/utils/vo_eval.py::save_trajectory_tum_format`` and ``c2w_to_tumpose``).
    """
    poses = as_float64(cam2world, "cam2world")
    check_shape(poses, "T 4 4", "cam2world")
    xyzw = Rotation.from_matrix(poses[:, :3, :3]).as_quat()
    rows = np.concatenate([poses[:, :3, 3], xyzw[:, [3, 0, 1, 2]]], axis=1)
    return "".join(f"{float(t)} " + " ".join(str(float(v)) for v in row) + "\n" for t, row in enumerate(rows))


def _savetxt(values: np.ndarray) -> str:
    buf = io.StringIO()
    np.savetxt(buf, values, fmt="%.6f")
    return buf.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _remove_stale(folder: Path, T: int) -> None:
    for p in folder.iterdir():
        for pattern in _STALE_PATTERNS:
            m = pattern.match(p.name)
            if m is not None and int(m.group(1)) >= T and p.is_file():
                p.unlink()
                break


def write_official(
    folder: str | os.PathLike[str],
    rec: Reconstruction,
    *,
    cleaned_confidence: NDArray[np.float32] | None = None,
    on_file: Callable[[Path], None] | None = None,
) -> dict[str, Path]:
    """Write the official-layout files (module docstring) of ``rec`` into ``folder``, each atomically.

    Args:
        folder: destination folder (created if needed).
        rec: the result: its processed frames, masks, cameras (OpenCV camera-to-world; intrinsics in processed
            pixels), depths and raw confidence (``1 + exp(x)``, >= 1, written as ``init_conf_N.npy``).
        cleaned_confidence: ``(T, H, W)`` confidence after ``clean_depth`` / ``mask_sky`` (0 for cleaned
            pixels), written as ``conf_N.npy``; None writes ``rec.confidence`` there too.
        on_file: called with every written path (progress bars).

    Returns:
        ``{"pred_traj", "pred_intrinsics", "pred_focal"}`` -> path, plus ``"official"`` -> ``folder``.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    T = rec.num_frames
    images, masks, depths, confidence = rec.images, rec.masks, rec.depths, rec.confidence
    cam2world, intrinsics = rec.cam2world, rec.intrinsics
    tick = on_file if on_file is not None else (lambda _: None)
    paths = {
        "pred_traj": atomic_write_text(out / "pred_traj.txt", official_traj_text(cam2world)),
        "pred_intrinsics": atomic_write_text(out / "pred_intrinsics.txt", _savetxt(intrinsics.reshape(T, 9))),
        "pred_focal": atomic_write_text(
            out / "pred_focal.txt", _savetxt((0.5 * (intrinsics[:, 0, 0] + intrinsics[:, 1, 1]))[:, None])
        ),
    }
    for p in paths.values():
        tick(p)
    conf = confidence if cleaned_confidence is None else cleaned_confidence
    with np.errstate(divide="ignore", invalid="ignore"):  # log(0) = -inf for cleaned pixels, as official
        log_conf = np.log(conf.astype(np.float32))
        log_init = np.log(confidence.astype(np.float32))
    depth_name, rgb_name, conf_name, init_name, mask_name = OFFICIAL_PER_FRAME
    for t in range(T):
        written = [
            atomic_write_bytes(out / depth_name.format(t), _npy_bytes(depths[t].astype(np.float32))),
            write_png(out / rgb_name.format(t), images[t]),
            atomic_write_bytes(out / conf_name.format(t), _npy_bytes(log_conf[t])),
            atomic_write_bytes(out / init_name.format(t), _npy_bytes(log_init[t])),
            write_png(out / mask_name.format(t), np.where(masks[t], 255, 0).astype(np.uint8)),
        ]
        for p in written:
            tick(p)
    _remove_stale(out, T)
    paths["official"] = out
    return paths
