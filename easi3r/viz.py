"""Figures, videos and an optional interactive viewer for a :class:`~easi3r.result.Reconstruction`.

Figures are built on matplotlib's object API with an Agg canvas, so nothing here touches pyplot's
global state or needs a display. The viewer needs the ``viz`` extra (``pip install easi3r[viz]``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .errors import Easi3RInputError
from .export.atomic import atomic_path
from .export.images import ATTENTION_KEYS, ATTENTION_PANELS, attention_panel_maps, mask_overlay, upsample_nearest
from .export.tum import canonical_unitquat

if TYPE_CHECKING:
    from .result import Reconstruction

__all__ = ["attention_grid", "mask_overlay_video", "view"]

# The official demo writes its videos at 24 fps when the input frame rate is unknown (image folders).
DEFAULT_FPS = 24.0


def _frame_indices(rec: Reconstruction, frames: Sequence[int] | None) -> list[int]:
    T = rec.num_frames
    idx = list(range(T)) if frames is None else [int(f) for f in frames]
    bad = [f for f in idx if not -T <= f < T]
    if bad or not idx:
        raise Easi3RInputError(f"frames must be non-empty indices in [-{T}, {T}), got {list(frames or [])}")
    return [f % T for f in idx]


def attention_grid(
    rec: Reconstruction,
    frames: Sequence[int] | None = None,
    *,
    cmap: str = "Spectral_r",
    panel_size: float = 2.0,
) -> Figure:
    """A figure of the attention maps: one row per frame, one column per panel.

    Columns (titles on the first row, :data:`~easi3r.export.images.ATTENTION_PANELS`): ``1 - src_mean``,
    ``src_std``, ``1 - ref_mean``, ``ref_std``, ``dynamic_map`` (nearest-upsampled to the frame, colormap
    ``cmap`` on [0, 1]) and the frame with its dynamic mask tinted red: the panels of the saved attention
    strips. The means are drawn inverted, as in the official visualisation, so that high (red) means
    "dynamic" in every map.

    Args:
        rec: the reconstruction.
        frames: frame indices to show (default all; negative indices count from the end).
        cmap: matplotlib colormap of the maps.
        panel_size: width of one panel in inches.

    Returns:
        A :class:`matplotlib.figure.Figure` with ``len(frames) * 6`` axes and an Agg canvas attached
        (``fig.savefig(...)`` works without pyplot).
    """
    idx = _frame_indices(rec, frames)
    H, W = rec.size
    ncols = len(ATTENTION_PANELS)
    fig = Figure(figsize=(panel_size * ncols, panel_size * H / W * len(idx) + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(idx), ncols, squeeze=False)
    for r, t in enumerate(idx):
        maps = attention_panel_maps({k: rec.attention[k][t] for k in ATTENTION_KEYS}, rec.dynamic_maps[t])
        for c, m in enumerate(maps):
            axes[r, c].imshow(upsample_nearest(m, (H, W)), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        axes[r, -1].imshow(mask_overlay(rec.images[t], rec.masks[t]))
        axes[r, 0].set_ylabel(rec.frame_names[t] if len(rec.frame_names[t]) <= 24 else f"frame {t}")
        for c in range(ncols):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(ATTENTION_PANELS[c], fontsize="small")
    return fig


def mask_overlay_video(
    rec: Reconstruction, path: str | os.PathLike[str], fps: float | None = None, *, alpha: float = 0.5
) -> Path:
    """Write an MP4 (``mp4v`` codec, OpenCV) of the frames with their dynamic masks tinted red, atomically.

    Args:
        rec: the reconstruction.
        path: output file; should end in ``.mp4``.
        fps: frame rate; default ``rec.fps``, else 24.
        alpha: tint opacity.

    Returns:
        The written path.

    Raises:
        Easi3RInputError: a non-positive ``fps``.
        OSError: OpenCV cannot open a video writer for the file.
    """
    rate = float(fps or rec.fps or DEFAULT_FPS)
    if not rate > 0:
        raise Easi3RInputError(f"fps must be positive, got {fps}")
    H, W = rec.size
    path = Path(path)
    with atomic_path(path) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"mp4v"), rate, (W, H))
        if not writer.isOpened():
            raise OSError(f"OpenCV could not open an mp4v video writer for {path}")
        try:
            for image, mask in zip(rec.images, rec.masks):
                writer.write(np.ascontiguousarray(mask_overlay(image, mask, alpha=alpha)[..., ::-1]))
        finally:
            writer.release()
    return path


def view(
    rec: Reconstruction,
    port: int = 8080,
    *,
    conf_threshold: float | None = None,
    point_size: float = 0.01,
    max_points_per_frame: int = 50_000,
    block: bool = True,
) -> Any:
    """Interactive 4D viewer in the browser (viser): per-frame point clouds with a time slider and cameras.

    Args:
        rec: the reconstruction.
        port: HTTP port of the viser server.
        conf_threshold: show points with ``confidence > conf_threshold`` (default ``rec.conf_threshold``).
        point_size: point size in scene units.
        max_points_per_frame: random subset per frame, to keep the browser responsive.
        block: serve until interrupted (Ctrl-C); with False return the server at once.

    Returns:
        The ``viser.ViserServer``.

    Raises:
        ImportError: viser is not installed (``pip install easi3r[viz]``).
    """
    try:
        import viser
    except ImportError as exc:
        raise ImportError("easi3r.viz.view needs viser: pip install easi3r[viz]") from exc

    thr = rec.conf_threshold if conf_threshold is None else conf_threshold
    server = viser.ViserServer(port=port)
    rng = np.random.default_rng(0)
    H, W = rec.size
    clouds = []
    for t in range(rec.num_frames):
        keep = np.flatnonzero((rec.confidence[t] > thr).reshape(-1))
        if len(keep) > max_points_per_frame:
            keep = np.sort(rng.choice(keep, max_points_per_frame, replace=False))
        pts = rec.points[t].reshape(-1, 3)[keep]
        cols = rec.images[t].reshape(-1, 3)[keep]
        clouds.append(
            server.scene.add_point_cloud(f"/frames/{t:05d}/points", points=pts, colors=cols, point_size=point_size)
        )
        c2w = rec.cam2world[t]
        K = rec.intrinsics[t]
        server.scene.add_camera_frustum(
            f"/frames/{t:05d}/camera",
            fov=float(2.0 * np.arctan2(H / 2.0, K[1, 1])),
            aspect=W / H,
            scale=0.05,
            image=rec.images[t],
            # viser frustums use OpenCV camera axes too, so the pose goes in unchanged.
            wxyz=canonical_unitquat(c2w[:3, :3])[[3, 0, 1, 2]],
            position=c2w[:3, 3],
        )
    slider = server.gui.add_slider("frame", min=0, max=max(rec.num_frames - 1, 0), step=1, initial_value=0)
    show_all = server.gui.add_checkbox("all frames", initial_value=False)

    def _update(_: Any = None) -> None:
        for t, cloud in enumerate(clouds):
            cloud.visible = bool(show_all.value) or t == int(slider.value)

    slider.on_update(_update)
    show_all.on_update(_update)
    _update()
    if block:
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
    return server
