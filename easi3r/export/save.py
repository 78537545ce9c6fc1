"""Every export of a :class:`~easi3r.result.Reconstruction` into one folder, and reading its archive back.

:func:`save_reconstruction` is the body of :meth:`Reconstruction.save <easi3r.result.Reconstruction.save>`;
:func:`read_reconstruction` the body of :meth:`Reconstruction.load <easi3r.result.Reconstruction.load>`.
Each file is written by the atomic writers of :mod:`easi3r.export.atomic`.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import numpy as np
import torch
from numpy.typing import NDArray
from tqdm.auto import tqdm

from ..errors import Easi3RInputError, first_line
from .atomic import atomic_save_npz, atomic_write_text, remove_temp_files
from .clean import clean_pointcloud, segment_sky
from .colmap import write_colmap
from .images import ATTENTION_KEYS, attention_strip, frame_filename, mask_overlay, write_frame_pngs, write_mask_pngs
from .mesh import official_view_transform, write_glb, write_ply
from .official import OFFICIAL_PER_FRAME, write_official
from .tum import write_tum
from .video import write_video

if TYPE_CHECKING:
    from ..result import Reconstruction

__all__ = [
    "ARCHIVE_NAME",
    "LAYOUTS",
    "GlbOptions",
    "Layout",
    "SaveOptions",
    "glb_confidence",
    "read_reconstruction",
    "save_reconstruction",
    "write_reconstruction_glb",
]

#: ``layout`` values of :func:`save_reconstruction`.
Layout = Literal["default", "official"]
LAYOUTS: tuple[str, ...] = ("default", "official")


class GlbOptions(TypedDict, total=False):
    """Keyword options of :func:`write_reconstruction_glb` (and ``Reconstruction.write_glb``)."""

    clean_depth: bool
    mask_sky: bool
    cam_size: float | None
    as_pointcloud: bool
    official_view: bool


class SaveOptions(TypedDict, total=False):
    """Keyword options of :func:`save_reconstruction` (and ``Reconstruction.save``)."""

    progress: bool
    colmap_max_points: int | None
    layout: Layout
    videos: bool
    clean_depth: bool
    mask_sky: bool
    cam_size: float | None
    as_pointcloud: bool


#: File name of the archive holding every array field (:meth:`Reconstruction.arrays`).
ARCHIVE_NAME = "reconstruction.npz"

# Archive entries a saved result must hold (besides ``attention_<key>`` for every key of ATTENTION_KEYS).
_REQUIRED = ("images", "masks", "dynamic_maps", "cam2world", "intrinsics", "depths", "points", "confidence")
# Files written after the 3 T frame PNGs: dynamic maps, trajectory, intrinsics, depths, confidence, archive,
# PLY, GLB and the three COLMAP files (the progress bar's total).
_NUM_SINGLE_FILES = 11


def attention_frame(rec: Reconstruction, t: int, *, labels: bool = True) -> NDArray[np.uint8]:
    """Frame ``t``'s ``(H, 6 W, 3)`` uint8 attention strip (:func:`~easi3r.export.images.attention_strip`)."""
    return attention_strip(
        {k: rec.attention[k][t] for k in ATTENTION_KEYS},
        rec.dynamic_maps[t],
        rec.images[t],
        rec.masks[t],
        labels=labels,
    )


def glb_confidence(
    rec: Reconstruction, *, clean_depth: bool = False, mask_sky: bool = False, progress: bool = False
) -> NDArray[np.float32]:
    """``(T, H, W)`` float32 confidence after the official GLB filters (0 where a filter removed a pixel).

    ``clean_depth``: :func:`~easi3r.export.clean.clean_pointcloud` (official ``clean_pointcloud``, tol 0.001);
    ``mask_sky``: confidence 0 on :func:`~easi3r.export.clean.segment_sky` pixels (official ``mask_sky``).
    Without either, :attr:`Reconstruction.confidence` unchanged.
    """
    conf = rec.confidence
    if clean_depth:
        cleaned = clean_pointcloud(
            torch.from_numpy(conf),
            torch.from_numpy(rec.intrinsics),
            torch.from_numpy(rec.cam2world),
            torch.from_numpy(rec.depths),
            progress=progress,
        )
        conf = cleaned.numpy()
    if mask_sky:
        sky = np.stack([segment_sky(im) for im in rec.images])
        conf = np.where(sky, np.float32(0.0), conf)
    return np.asarray(conf, dtype=np.float32)


def write_reconstruction_glb(
    rec: Reconstruction,
    path: str | os.PathLike[str],
    *,
    clean_depth: bool = False,
    mask_sky: bool = False,
    cam_size: float | None = None,
    as_pointcloud: bool = True,
    official_view: bool = False,
    confidence: NDArray[np.float32] | None = None,
    progress: bool = False,
) -> Path:
    """Write ``rec`` as ``scene.glb``-style binary glTF with the official demo's options.

    The points are those with ``confidence > conf_threshold`` after the filters of :func:`glb_confidence`
    (the official demo thresholds the *pre-cleaning* confidence by default, so there its ``clean_depth`` and
    ``mask_sky`` leave the GLB unchanged; here they remove the filtered points, which is what they are for).

    Args:
        rec: the result.
        path: destination file.
        clean_depth: drop points that float in front of another camera's depth (official ``clean_depth``).
        mask_sky: drop sky pixels (official ``mask_sky``, HSV heuristic).
        cam_size: frustum size in scene units (official ``cam_size``, demo 0.05); None: 5 % of the scene.
        as_pointcloud: one point cloud (official default) or per-frame meshes of the valid pixel quads.
        official_view: transform the scene like the official demo (:func:`~easi3r.export.mesh.official_view_transform`);
            False keeps the OpenCV world of the PLY / TUM / COLMAP files.
        confidence: precomputed :func:`glb_confidence` (skips recomputing the filters).
        progress: tqdm bar of the depth cleaning.
    """
    conf = (
        glb_confidence(rec, clean_depth=clean_depth, mask_sky=mask_sky, progress=progress)
        if confidence is None
        else confidence
    )
    return write_glb(
        path,
        rec.points,
        rec.images,
        rec.cam2world,
        rec.intrinsics,
        rec.size,
        valid=conf > rec.conf_threshold,
        as_pointcloud=as_pointcloud,
        cam_size=cam_size,
        transform=official_view_transform(rec.cam2world[0]) if official_view else None,
    )


def save_reconstruction(
    rec: Reconstruction,
    out_dir: str | os.PathLike[str],
    *,
    progress: bool = False,
    colmap_max_points: int | None = 100_000,
    layout: Layout = "default",
    videos: bool = False,
    clean_depth: bool = False,
    mask_sky: bool = False,
    cam_size: float | None = None,
    as_pointcloud: bool = True,
) -> dict[str, Path]:
    """Write every export of ``rec`` into ``out_dir`` (created if needed).

    Each file is written under a temporary name in its folder and renamed when complete, so an
    interrupted save leaves only complete files under final names (possibly from an earlier save).
    Temporary files a killed earlier save left behind are deleted first
    (:func:`~easi3r.export.atomic.remove_temp_files`).
    Files of the same name are overwritten; frame files of an earlier, longer run are removed from the frame
    folders.

    ===================  ======================================================================
    key                  file
    ===================  ======================================================================
    ``images``           ``images/00000.png`` ... processed RGB frames (named in ``colmap/images.txt``)
    ``masks``            ``masks/00000.png`` ... dynamic masks, 8-bit 0/255, ``H x W``
    ``attention``        ``attention/00000.png`` ... ``H x 6W`` strips: ``1-src_mean, src_std,
                         1-ref_mean, ref_std, dynamic_map`` (``Spectral_r``, nearest-upsampled),
                         then the frame with the mask tinted red; each panel labelled
    ``dynamic_maps``     ``dynamic_maps.npz``: ``dynamic_maps`` (+ ``cluster_labels``, ``threshold``)
    ``trajectory``       ``trajectory.tum``: TUM ``t tx ty tz qx qy qz qw``, camera-to-world;
                         ``t`` = frame index / fps in seconds (frame index when fps is unknown)
    ``intrinsics``       ``intrinsics.txt``: one row-major 3x3 per line in pixels, ``%.6f``
    ``depths``           ``depths.npz`` (``depths``); ``confidence``: ``confidence.npz``
    ``reconstruction``   ``reconstruction.npz``: every array field (``Reconstruction.arrays``)
    ``ply``              ``scene.ply``: confident points (``confidence > conf_threshold``), all
                         frames, static and dynamic, xyz + rgb(a); OpenCV world coordinates
    ``glb``              ``scene.glb``: the confident points after ``clean_depth`` / ``mask_sky``
                         (or per-frame meshes) + one frustum per camera (viridis over time)
    ``colmap_cameras``   ``colmap/cameras.txt`` (PINHOLE, principal point + 0.5), ``colmap_images``:
                         ``colmap/images.txt`` (world-to-camera), ``colmap_points3D``:
                         ``colmap/points3D.txt`` (<= ``colmap_max_points`` confident points)
    ``masks_video``      ``videos=True``: ``masks.mp4``, the frames with the mask tinted red
    ``attention_video``  ``videos=True``: ``attention.mp4``, the labelled attention strips
    ===================  ======================================================================

    ``layout="official"`` also writes the official file names and conventions
    (:mod:`easi3r.export.official`: keys ``pred_traj``, ``pred_intrinsics``, ``pred_focal`` and ``official``,
    the folder holding ``frame_NNNN.npy/png``, ``conf_N.npy``, ``init_conf_N.npy``, ``dynamic_mask_N.png``),
    and ``scene.glb`` then uses the official demo's display transform.

    Args:
        rec: the result.
        out_dir: destination folder.
        progress: show a tqdm bar over the files.
        colmap_max_points: size of the random (seeded) subset in ``points3D.txt``; None keeps all.
        layout: ``"default"`` (the files above) or ``"official"`` (also the official names).
        videos: also write ``masks.mp4`` and ``attention.mp4`` (:func:`~easi3r.export.video.write_video`, at
            ``rec.fps`` or 10 fps).
        clean_depth, mask_sky, cam_size, as_pointcloud: GLB options of :func:`write_reconstruction_glb`.

    Returns:
        Key -> path as in the table (folders for the per-frame outputs).

    Raises:
        Easi3RInputError: an unknown ``layout`` or a bad ``cam_size`` (checked before anything is written).
    """
    if layout not in LAYOUTS:
        raise Easi3RInputError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    if cam_size is not None and not (isinstance(cam_size, (int, float)) and np.isfinite(cam_size) and cam_size > 0):
        raise Easi3RInputError(f"cam_size must be a positive number of scene units, got {cam_size!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for folder in (out, out / "images", out / "masks", out / "attention", out / "colmap"):
        remove_temp_files(folder)
    T = rec.num_frames
    official = layout == "official"
    total = (
        3 * T + _NUM_SINGLE_FILES + (2 * T if videos else 0) + ((3 + len(OFFICIAL_PER_FRAME) * T) if official else 0)
    )
    bar = tqdm(total=total, disable=not progress, desc="saving", unit="file")
    paths: dict[str, Path] = {}

    def done(key: str, path: Path) -> None:
        paths[key] = path
        bar.update(1)

    def tick(_: object) -> None:
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
        cleaned = glb_confidence(rec, clean_depth=clean_depth, mask_sky=mask_sky, progress=progress)
        glb = write_reconstruction_glb(
            rec, out / "scene.glb", cam_size=cam_size, as_pointcloud=as_pointcloud, official_view=official,
            confidence=cleaned,
        )  # fmt: skip
        done("glb", glb)
        names = [frame_filename(t) for t in range(T)]
        colmap = write_colmap(
            out / "colmap", rec.cam2world, rec.intrinsics, rec.size, names, pts, cols, max_points=colmap_max_points
        )
        for key in ("cameras", "images", "points3D"):
            done(f"colmap_{key}", colmap[key])
        if videos:
            fps = rec.fps
            overlays = (mask_overlay(rec.images[t], rec.masks[t]) for t in range(T))
            paths["masks_video"], _ = write_video(out / "masks.mp4", overlays, fps, on_frame=tick)
            strips = (attention_frame(rec, t) for t in range(T))
            paths["attention_video"], _ = write_video(out / "attention.mp4", strips, fps, on_frame=tick)
        if official:
            cleaned_or_none = cleaned if (clean_depth or mask_sky) else None
            paths.update(write_official(out, rec, cleaned_confidence=cleaned_or_none, on_file=tick))
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
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise Easi3RInputError(f"{path} is not a saved Reconstruction: not an npz archive")
        with data:
            d = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        # A truncated or corrupt archive fails in np.load (BadZipFile) or while reading a member (zlib, EOF).
        raise Easi3RInputError(f"cannot read reconstruction file {path}: {first_line(exc)}") from None
    missing = [k for k in _REQUIRED + tuple(f"attention_{k}" for k in ATTENTION_KEYS) if k not in d]
    if missing:
        raise Easi3RInputError(f"{path} is not a saved Reconstruction: missing {missing}")
    return {
        **{k: d[k] for k in _REQUIRED},
        "attention": {k[len("attention_") :]: v for k, v in d.items() if k.startswith("attention_")},
        "frame_names": [str(n) for n in d.get("frame_names", [])] or [f"{i:05d}" for i in range(len(d["images"]))],
        "original_sizes": [tuple(s) for s in d["original_sizes"].tolist()] if "original_sizes" in d else None,
        "image_size": int(d.get("image_size", 512)),
        "crop": bool(d.get("crop", True)),
        "metric": bool(d.get("metric", False)),
        "fps": float(d["fps"]) if "fps" in d else None,
        "cluster_labels": d.get("cluster_labels"),
        "threshold": float(d["threshold"]) if "threshold" in d else None,
        "conf_threshold": float(d.get("conf_threshold", 1.1)),
        "backbone": str(d.get("backbone", "")),
    }
