"""Figures, videos and an optional interactive viewer for a :class:`~easi3r.result.Reconstruction`.

Figures are built on matplotlib's object API with an Agg canvas, so nothing here touches pyplot's
global state or needs a display. The viewer needs the ``viz`` extra (``pip install easi3r[viz]``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import NDArray

from .errors import Easi3RInputError
from .export.atomic import atomic_path
from .export.images import ATTENTION_KEYS, ATTENTION_PANELS, attention_panel_maps, mask_overlay, upsample_nearest
from .export.tum import canonical_unitquat

if TYPE_CHECKING:
    from .result import Reconstruction

__all__ = ["Viewer4D", "attention_grid", "frame_point_subsets", "mask_overlay_video", "trajectory_plot", "view"]

# The official demo writes its videos at 24 fps when the input frame rate is unknown (image folders).
DEFAULT_FPS = 24.0
#: OpenCV fourcc per container: MPEG-4 part 2 in .mp4 (always available in OpenCV's FFmpeg), VP8 in .webm (what a
#: browser plays: the web app's preview).
VIDEO_CODECS = {".mp4": "mp4v", ".webm": "VP80"}


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
    """Write a video of the frames with their dynamic masks tinted red, atomically.

    The codec follows the suffix (:data:`VIDEO_CODECS`): ``.mp4`` is MPEG-4 part 2 (``mp4v``), ``.webm`` is VP8,
    which browsers play (the web app's preview).

    Args:
        rec: the reconstruction.
        path: output file ending in ``.mp4`` or ``.webm``.
        fps: frame rate; default ``rec.fps``, else 24.
        alpha: tint opacity.

    Returns:
        The written path.

    Raises:
        Easi3RInputError: a non-positive ``fps`` or an unsupported suffix.
        OSError: OpenCV cannot open a video writer for the file.
    """
    rate = float(fps or rec.fps or DEFAULT_FPS)
    if not rate > 0:
        raise Easi3RInputError(f"fps must be positive, got {fps}")
    path = Path(path)
    codec = VIDEO_CODECS.get(path.suffix.lower())
    if codec is None:
        raise Easi3RInputError(f"video path must end in {' or '.join(VIDEO_CODECS)}, got {str(path)!r}")
    H, W = rec.size
    with atomic_path(path) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*codec), rate, (W, H))
        if not writer.isOpened():
            raise OSError(f"OpenCV could not open a {codec} video writer for {path}")
        try:
            for image, mask in zip(rec.images, rec.masks):
                writer.write(np.ascontiguousarray(mask_overlay(image, mask, alpha=alpha)[..., ::-1]))
        finally:
            writer.release()
    return path


def trajectory_plot(rec: Reconstruction, *, size: float = 4.0) -> Figure:
    """The camera trajectory: camera centres (``cam2world[:, :3, 3]``) from above (x, z) and from the side (z, -y).

    OpenCV world axes (y down), so the side view plots ``-y`` upwards. Centres are coloured by frame (viridis, as
    the frusta of ``scene.glb``) and each carries a short arrow along its viewing direction (the camera's +z axis,
    ``cam2world[:, :3, 2]``), scaled to 10 % of the trajectory's extent.

    Args:
        rec: the reconstruction.
        size: height of the figure in inches.

    Returns:
        A :class:`~matplotlib.figure.Figure` with two axes (``"top view (x, z)"``, ``"side view (z, -y)"``) and an
        Agg canvas attached.
    """
    centres = rec.cam2world[:, :3, 3]
    forward = rec.cam2world[:, :3, 2]
    extent = float(np.ptp(centres, axis=0).max()) if rec.num_frames > 1 else 0.0
    arrow = 0.1 * (extent if extent > 0 else 1.0)
    fig = Figure(figsize=(2.1 * size, size), layout="constrained")
    FigureCanvasAgg(fig)
    colours = np.linspace(0.0, 1.0, rec.num_frames)
    for ax, (a, sa), (b, sb), title in (
        (fig.add_subplot(1, 2, 1), (0, 1.0), (2, 1.0), "top view (x, z)"),
        (fig.add_subplot(1, 2, 2), (2, 1.0), (1, -1.0), "side view (z, -y)"),
    ):
        u, v = sa * centres[:, a], sb * centres[:, b]
        ax.plot(u, v, color="0.6", linewidth=1.0)
        points = ax.scatter(u, v, c=colours, cmap="viridis", vmin=0.0, vmax=1.0, s=18, zorder=3)
        ax.quiver(u, v, sa * forward[:, a] * arrow, sb * forward[:, b] * arrow, colours, cmap="viridis",
                  angles="xy", scale_units="xy", scale=1.0, width=0.004)  # fmt: skip
        ax.set_title(title, fontsize="small")
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(True, linewidth=0.3)
    cbar = fig.colorbar(points, ax=fig.axes, shrink=0.8, ticks=[0.0, 1.0])
    cbar.ax.set_yticklabels(["0", str(rec.num_frames - 1)])
    cbar.set_label("frame")
    return fig


def frame_point_subsets(rec: Reconstruction, max_points_per_frame: int, *, seed: int = 0) -> list[NDArray[np.int64]]:
    """Per frame, the flat pixel indices (row-major in ``(H, W)``) the viewer draws: the finite points, a random
    subset of at most ``max_points_per_frame`` when there are more (a local generator seeded by ``seed``), sorted.

    Raises:
        Easi3RInputError: ``max_points_per_frame < 1``.
    """
    if isinstance(max_points_per_frame, bool) or int(max_points_per_frame) < 1:
        raise Easi3RInputError(f"max_points_per_frame must be a positive integer, got {max_points_per_frame!r}")
    rng = np.random.default_rng(seed)
    out = []
    for t in range(rec.num_frames):
        keep = np.flatnonzero(np.isfinite(rec.points[t]).all(axis=-1).reshape(-1))
        if len(keep) > max_points_per_frame:
            keep = np.sort(rng.choice(keep, int(max_points_per_frame), replace=False))
        out.append(keep.astype(np.int64))
    return out


class Viewer4D:
    """The state of the interactive 4D viewer on a viser server (built by :func:`view`).

    Per frame ``t`` the scene holds two point clouds, ``/frames/t/static`` (pixels outside ``rec.masks[t]``) and
    ``/frames/t/dynamic`` (inside), restricted to ``confidence > threshold``, and a camera frustum
    (``cam2world[t]``, OpenCV axes as viser's); ``/trajectory`` joins the camera centres. GUI: frame slider,
    play/pause, fps, "all frames", static / dynamic / cameras toggles, confidence threshold and point size
    sliders, and a line naming the shown frame.

    Attributes:
        rec: the reconstruction shown. server: the ``viser.ViserServer``. frame: the frame the slider shows.
    """

    def __init__(
        self,
        rec: Reconstruction,
        server: Any,
        *,
        conf_threshold: float,
        point_size: float,
        max_points_per_frame: int,
    ) -> None:
        self.rec = rec
        self.server = server
        self._subsets = frame_point_subsets(rec, max_points_per_frame)
        self._stop = threading.Event()
        self._player: threading.Thread | None = None
        T, (H, W) = rec.num_frames, rec.size
        gui, scene = server.gui, server.scene
        self.slider = gui.add_slider("frame", min=0, max=max(T - 1, 0), step=1, initial_value=0)
        self.readout = gui.add_markdown(self._readout_text(0))
        self.play = gui.add_checkbox("play", initial_value=False)
        self.fps = gui.add_slider("fps", min=1, max=30, step=1, initial_value=int(min(max(rec.fps or 8, 1), 30)))
        self.all_frames = gui.add_checkbox("all frames", initial_value=False)
        self.show_static = gui.add_checkbox("static points", initial_value=True)
        self.show_dynamic = gui.add_checkbox("dynamic points (masks)", initial_value=True)
        self.show_cameras = gui.add_checkbox("cameras and trajectory", initial_value=True)
        hi = max(float(np.nanmax(rec.confidence)), conf_threshold + 1e-3)
        self.threshold = gui.add_slider("confidence >", min=0.0, max=hi, step=hi / 200, initial_value=conf_threshold)
        self.point_size = gui.add_slider("point size", min=point_size / 10, max=point_size * 10, step=point_size / 10,
                                         initial_value=point_size)  # fmt: skip
        self.static_clouds: list[Any] = []
        self.dynamic_clouds: list[Any] = []
        self.cameras: list[Any] = []
        # Frusta a tenth of the median depth deep, so that they fit the scene's (arbitrary) scale.
        depth = float(np.nanmedian(rec.depths))
        frustum = 0.1 * depth if np.isfinite(depth) and depth > 0 else 0.05
        for t in range(T):
            for part, clouds in (("static", self.static_clouds), ("dynamic", self.dynamic_clouds)):
                pts, cols = self._points(t, part)
                clouds.append(scene.add_point_cloud(f"/frames/{t:05d}/{part}", points=pts, colors=cols,
                                                    point_size=point_size))  # fmt: skip
            c2w, K = rec.cam2world[t], rec.intrinsics[t]
            self.cameras.append(
                scene.add_camera_frustum(
                    f"/frames/{t:05d}/camera",
                    fov=float(2.0 * np.arctan2(H / 2.0, K[1, 1])),
                    aspect=W / H,
                    scale=frustum,
                    image=rec.images[t],
                    # viser frustums use OpenCV camera axes too, so the pose goes in unchanged.
                    wxyz=canonical_unitquat(c2w[:3, :3])[[3, 0, 1, 2]],
                    position=c2w[:3, 3],
                )
            )
        centres = rec.cam2world[:, :3, 3].astype(np.float32)
        segments = np.stack([centres[:-1], centres[1:]], axis=1) if T > 1 else np.zeros((0, 2, 3), np.float32)
        self.trajectory = scene.add_line_segments("/trajectory", points=segments, colors=(255, 160, 0))
        for handle in (self.slider, self.all_frames, self.show_static, self.show_dynamic, self.show_cameras):
            handle.on_update(lambda _: self.refresh())
        self.threshold.on_update(lambda _: self.update_points())
        self.point_size.on_update(lambda _: self.update_point_size())
        self.play.on_update(lambda _: self._toggle_play())
        self.refresh()

    @property
    def frame(self) -> int:
        """The frame index the slider shows."""
        return int(self.slider.value)

    def _readout_text(self, t: int) -> str:
        return f"frame {t} / {self.rec.num_frames - 1}: {self.rec.frame_names[t]}"

    def _points(self, t: int, part: str) -> tuple[NDArray[np.float32], NDArray[np.uint8]]:
        """Frame ``t``'s drawn points of one part (``"static"`` or ``"dynamic"``) above the current threshold."""
        idx = self._subsets[t]
        thr = float(self.threshold.value)
        dynamic = self.rec.masks[t].reshape(-1)[idx]
        keep = idx[(self.rec.confidence[t].reshape(-1)[idx] > thr) & (dynamic if part == "dynamic" else ~dynamic)]
        return self.rec.points[t].reshape(-1, 3)[keep], self.rec.images[t].reshape(-1, 3)[keep]

    def refresh(self) -> None:
        """Visibility of every cloud and camera from the slider and toggles; the frame readout."""
        t, every = self.frame, bool(self.all_frames.value)
        for k in range(self.rec.num_frames):
            on = every or k == t
            self.static_clouds[k].visible = on and bool(self.show_static.value)
            self.dynamic_clouds[k].visible = on and bool(self.show_dynamic.value)
            self.cameras[k].visible = bool(self.show_cameras.value) and (every or k <= t)
        self.trajectory.visible = bool(self.show_cameras.value)
        self.readout.content = self._readout_text(t)

    def update_points(self) -> None:
        """Re-filter every cloud by the confidence threshold slider."""
        for t in range(self.rec.num_frames):
            for part, clouds in (("static", self.static_clouds), ("dynamic", self.dynamic_clouds)):
                clouds[t].points, clouds[t].colors = self._points(t, part)

    def update_point_size(self) -> None:
        """Apply the point size slider to every cloud."""
        for cloud in (*self.static_clouds, *self.dynamic_clouds):
            cloud.point_size = float(self.point_size.value)

    def step(self) -> None:
        """Advance the slider by one frame, wrapping at the end (one tick of playback)."""
        self.slider.value = (self.frame + 1) % self.rec.num_frames

    def _toggle_play(self) -> None:
        if self.play.value and (self._player is None or not self._player.is_alive()):
            self._player = threading.Thread(target=self._play_loop, name="easi3r-viewer-play", daemon=True)
            self._player.start()

    def _play_loop(self) -> None:
        while self.play.value and not self._stop.is_set():
            self.step()
            self._stop.wait(1.0 / max(float(self.fps.value), 1.0))

    def close(self) -> None:
        """Stop playback and the server."""
        self._stop.set()
        if self._player is not None:
            self._player.join(timeout=5.0)
        self.server.stop()


def view(
    rec: Reconstruction,
    port: int = 8080,
    *,
    host: str = "127.0.0.1",
    conf_threshold: float | None = None,
    point_size: float = 0.01,
    max_points_per_frame: int = 50_000,
    block: bool = True,
) -> Viewer4D:
    """Interactive 4D viewer in the browser (viser) at ``http://host:port``: per-frame static and dynamic point
    clouds with a time slider, play/pause, toggles, a confidence threshold, point size, cameras and trajectory
    (:class:`Viewer4D`).

    Args:
        rec: the reconstruction.
        port: HTTP port of the viser server.
        host: interface to bind (default localhost only).
        conf_threshold: initial threshold, points with ``confidence > conf_threshold`` (default
            ``rec.conf_threshold``).
        point_size: initial point size in scene units.
        max_points_per_frame: random subset per frame, to keep the browser responsive.
        block: serve until interrupted (Ctrl-C), then stop the server; with False return at once (call
            :meth:`Viewer4D.close` when done).

    Returns:
        The :class:`Viewer4D` (its ``server`` is the ``viser.ViserServer``).

    Raises:
        ImportError: viser is not installed (``pip install easi3r[viz]``).
        Easi3RInputError: a non-positive ``point_size`` or ``max_points_per_frame``.
    """
    try:
        import viser
    except ImportError as exc:
        raise ImportError("easi3r.viz.view needs viser: pip install easi3r[viz]") from exc
    if not point_size > 0:
        raise Easi3RInputError(f"point_size must be positive, got {point_size!r}")
    frame_point_subsets(rec, max_points_per_frame)  # validates before the server starts
    thr = float(rec.conf_threshold if conf_threshold is None else conf_threshold)
    server = viser.ViserServer(host=host, port=port, verbose=False)
    viewer = Viewer4D(rec, server, conf_threshold=thr, point_size=point_size, max_points_per_frame=max_points_per_frame)
    if block:
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
        finally:
            viewer.close()
    return viewer
