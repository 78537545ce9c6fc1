"""Every export of a :class:`~easi3r.result.Reconstruction` into one folder, and reading its archive back.

:func:`save_reconstruction` is the body of :meth:`Reconstruction.save <easi3r.result.Reconstruction.save>`;
:func:`read_reconstruction` the body of :meth:`Reconstruction.load <easi3r.result.Reconstruction.load>`.
Each file is written by the atomic writers of :mod:`easi3r.export.atomic`.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from ..errors import Easi3RInputError
from .atomic import atomic_save_npz, atomic_write_text
from .colmap import write_colmap
from .images import ATTENTION_KEYS, attention_strip, frame_filename, write_frame_pngs, write_mask_pngs
from .mesh import write_glb, write_ply
from .tum import write_tum

if TYPE_CHECKING:
    from ..result import Reconstruction

__all__ = ["ARCHIVE_NAME", "read_reconstruction", "save_reconstruction"]

#: File name of the archive holding every array field (:meth:`Reconstruction.arrays`).
ARCHIVE_NAME = "reconstruction.npz"

# Archive entries a saved result must hold (besides ``attention_<key>`` for every key of ATTENTION_KEYS).
_REQUIRED = ("images", "masks", "dynamic_maps", "cam2world", "intrinsics", "depths", "points", "confidence")
# Files written after the 3 T frame PNGs: dynamic maps, trajectory, intrinsics, depths, confidence, archive,
# PLY, GLB and the three COLMAP files (the progress bar's total).
_NUM_SINGLE_FILES = 11


def attention_frame(rec: Reconstruction, t: int) -> NDArray[np.uint8]:
    """Frame ``t``'s ``(H, 6 W, 3)`` uint8 attention strip (:func:`~easi3r.export.images.attention_strip`)."""
    return attention_strip(
        {k: rec.attention[k][t] for k in ATTENTION_KEYS}, rec.dynamic_maps[t], rec.images[t], rec.masks[t]
    )


def save_reconstruction(
    rec: Reconstruction,
    out_dir: str | os.PathLike[str],
    *,
    progress: bool = False,
    colmap_max_points: int | None = 100_000,
) -> dict[str, Path]:
    """Write every export of ``rec`` into ``out_dir`` (created if needed).

    Each file is written under a temporary name in its folder and renamed when complete, so an
    interrupted save leaves only complete files under final names (possibly from an earlier save)
    and no temporary files. Files of the same name are overwritten; frame files of an earlier,
    longer run are removed from the frame folders.

    ===================  ======================================================================
    key                  file
    ===================  ======================================================================
    ``images``           ``images/00000.png`` ... processed RGB frames (named in ``colmap/images.txt``)
    ``masks``            ``masks/00000.png`` ... dynamic masks, 8-bit 0/255, ``H x W``
    ``attention``        ``attention/00000.png`` ... ``H x 6W`` strips: ``1-src_mean, src_std,
                         1-ref_mean, ref_std, dynamic_map`` (``Spectral_r``, nearest-upsampled),
                         then the frame with the mask tinted red
    ``dynamic_maps``     ``dynamic_maps.npz``: ``dynamic_maps`` (+ ``cluster_labels``, ``threshold``)
    ``trajectory``       ``trajectory.tum``: TUM ``t tx ty tz qx qy qz qw``, camera-to-world;
                         ``t`` = frame index / fps in seconds (frame index when fps is unknown)
    ``intrinsics``       ``intrinsics.txt``: one row-major 3x3 per line in pixels, ``%.6f``
    ``depths``           ``depths.npz`` (``depths``); ``confidence``: ``confidence.npz``
    ``reconstruction``   ``reconstruction.npz``: every array field (``Reconstruction.arrays``)
    ``ply``              ``scene.ply``: confident points (``confidence > conf_threshold``), all
                         frames, static and dynamic, xyz + rgb(a); OpenCV world coordinates
    ``glb``              ``scene.glb``: the same points + one frustum per camera (viridis over time)
    ``colmap_cameras``   ``colmap/cameras.txt`` (PINHOLE, principal point + 0.5), ``colmap_images``:
                         ``colmap/images.txt`` (world-to-camera), ``colmap_points3D``:
                         ``colmap/points3D.txt`` (<= ``colmap_max_points`` confident points)
    ===================  ======================================================================

    Args:
        rec: the result.
        out_dir: destination folder.
        progress: show a tqdm bar over the files.
        colmap_max_points: size of the random (seeded) subset in ``points3D.txt``; None keeps all.

    Returns:
        Key -> path as in the table (folders for the per-frame outputs).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    T = rec.num_frames
    bar = tqdm(total=3 * T + _NUM_SINGLE_FILES, disable=not progress, desc="saving", unit="file")
    paths: dict[str, Path] = {}

    def done(key: str, path: Path) -> None:
        paths[key] = path
        bar.update(1)

    def tick(_: Path) -> None:
        bar.update(1)

    try:
        write_frame_pngs(out / "images", rec.images, tick)
        paths["images"] = out / "images"
        write_mask_pngs(out / "masks", rec.masks, tick)
        paths["masks"] = out / "masks"
        write_frame_pngs(out / "attention", (attention_frame(rec, t) for t in range(T)), tick)
        paths["attention"] = out / "attention"

        dyn = {"dynamic_maps": rec.dynamic_maps}
        if rec.cluster_labels is not None:
            dyn["cluster_labels"] = rec.cluster_labels
        if rec.threshold is not None:
            dyn["threshold"] = np.asarray(rec.threshold, dtype=np.float64)
        done("dynamic_maps", atomic_save_npz(out / "dynamic_maps.npz", dyn, compressed=True))

        stamps = np.arange(T, dtype=np.float64) / (rec.fps if rec.fps else 1.0)
        done("trajectory", write_tum(out / "trajectory.tum", rec.cam2world, stamps))
        buf = io.StringIO()
        np.savetxt(buf, rec.intrinsics.reshape(T, 9), fmt="%.6f")
        done("intrinsics", atomic_write_text(out / "intrinsics.txt", buf.getvalue()))
        done("depths", atomic_save_npz(out / "depths.npz", depths=rec.depths))
        done("confidence", atomic_save_npz(out / "confidence.npz", confidence=rec.confidence))
        done("reconstruction", atomic_save_npz(out / ARCHIVE_NAME, rec.arrays()))

        pts, cols = rec.point_cloud()
        done("ply", write_ply(out / "scene.ply", pts, cols))
        done("glb", write_glb(out / "scene.glb", pts, cols, rec.cam2world, rec.intrinsics, rec.size))
        names = [frame_filename(t) for t in range(T)]
        colmap = write_colmap(
            out / "colmap", rec.cam2world, rec.intrinsics, rec.size, names, pts, cols, max_points=colmap_max_points
        )
        for key in ("cameras", "images", "points3D"):
            done(f"colmap_{key}", colmap[key])
    finally:
        bar.close()
    return paths


def read_reconstruction(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The keyword arguments of ``Reconstruction`` stored by :func:`save_reconstruction`.

    Args:
        path: the saved folder or its ``reconstruction.npz``.

    Returns:
        ``{field: value}`` for every field (optional ones at their defaults when the archive lacks them).

    Raises:
        Easi3RInputError: the file cannot be read or is not a saved result.
    """
    path = Path(path)
    if path.is_dir():
        path = path / ARCHIVE_NAME
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise Easi3RInputError(f"cannot read reconstruction file {path}: {exc}") from None
    with data:
        d = {k: data[k] for k in data.files}
    missing = [k for k in _REQUIRED + tuple(f"attention_{k}" for k in ATTENTION_KEYS) if k not in d]
    if missing:
        raise Easi3RInputError(f"{path} is not a saved Reconstruction: missing {missing}")
    return {
        **{k: d[k] for k in _REQUIRED},
        "attention": {k[len("attention_") :]: v for k, v in d.items() if k.startswith("attention_")},
        "frame_names": [str(n) for n in d.get("frame_names", [])] or [f"{i:05d}" for i in range(len(d["images"]))],
        "original_sizes": [tuple(s) for s in d["original_sizes"].tolist()] if "original_sizes" in d else None,
        "image_size": int(d.get("image_size", 512)),
        "fps": float(d["fps"]) if "fps" in d else None,
        "cluster_labels": d.get("cluster_labels"),
        "threshold": float(d["threshold"]) if "threshold" in d else None,
        "conf_threshold": float(d.get("conf_threshold", 1.1)),
        "backbone": str(d.get("backbone", "")),
    }
