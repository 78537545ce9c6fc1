"""Window-wise global alignment: long videos with the pairwise pointmaps of one window resident at a time.

:func:`~easi3r.align.optimize.global_align` optimises every pair of the video at once, so all pairwise pointmaps
must be in memory together (the official code's memory ceiling). MonST3R's window-wise mode instead aligns
overlapping windows of frames one after the other and chains them. Here each window runs the unchanged global
alignment (same loss, MST initialisation and flow term) on the pairs whose two frames lie in it; only its
per-frame results are kept, and each window's world is mapped into the first window's world by a Sim(3) fitted
on the frames it shares with the windows before it.

The pointmaps come from a :class:`PointmapSource`, called once per window with that window's edges, so a pipeline
can recompute them (re-run the network on those pairs) instead of holding all of them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import roma
import torch
from numpy.typing import NDArray
from torch import Tensor
from tqdm.auto import tqdm

from .._checks import check_dtype, check_same_device, check_shape
from ..config import AlignConfig
from ..distributed import DistContext, all_gather_objects
from ..errors import Easi3RInputError, Easi3RRuntimeError
from .flow import FlowProvider
from .geometry import depth_to_camera_points, pixel_grid, sim3_matrix, transform_points
from .model import KnownMode
from .mst import MSTEdge
from .optimize import Alignment, global_align

__all__ = ["InMemoryPointmaps", "PointmapSource", "plan_windows", "window_align", "window_edge_indices"]

#: ``(pts_1, pts_2, conf_1, conf_2)`` of a list of edges: ``(E, H, W, 3)`` twice, then ``(E, H, W)`` twice.
Pointmaps = tuple[Tensor, Tensor, Tensor, Tensor]

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def plan_windows(n_frames: int, window: int, overlap: float) -> list[range]:
    """Overlapping windows of ``window`` consecutive frames covering frames ``0 .. n_frames - 1``.

    Consecutive windows share ``round(window * overlap)`` frames, clipped to ``[1, window - 1]`` (at least one
    shared frame to chain them), i.e. they start ``window - shared`` frames apart. The last window ends at
    ``n_frames``: it is shifted back to full length, so it may share more frames with the one before it.
    ``window >= n_frames`` gives the single window ``range(0, n_frames)``.

    Args:
        n_frames: number of frames ``T`` (>= 2).
        window: frames per window (>= 2).
        overlap: fraction of a window shared with the next one, in ``[0, 1)``.

    Returns:
        The windows in order, as ``range`` objects of frame indices.

    Raises:
        Easi3RInputError: ``n_frames < 2``, ``window < 2``, ``overlap`` outside ``[0, 1)`` or a non-integer count.

    Example:
        >>> plan_windows(40, 16, 0.5)
        [range(0, 16), range(8, 24), range(16, 32), range(24, 40)]
        >>> plan_windows(20, 16, 0.5)  # the last window is shifted back to full length
        [range(0, 16), range(4, 20)]
        >>> plan_windows(10, 16, 0.5)
        [range(0, 10)]
    """
    if not _is_int(n_frames) or n_frames < 2:
        raise Easi3RInputError(f"window alignment needs at least 2 frames, got n_frames={n_frames!r}")
    if not _is_int(window) or window < 2:
        raise Easi3RInputError(f"window must be an integer >= 2, got {window!r}")
    if not isinstance(overlap, (int, float)) or isinstance(overlap, bool) or not 0.0 <= overlap < 1.0:
        raise Easi3RInputError(f"overlap must be a fraction in [0, 1), got {overlap!r}")
    n, size = int(n_frames), int(window)
    if size >= n:
        return [range(0, n)]
    shared = min(max(round(size * overlap), 1), size - 1)
    starts = [0]
    while starts[-1] + size < n:
        starts.append(min(starts[-1] + size - shared, n - size))
    return [range(s, s + size) for s in starts]


def window_edge_indices(edges: Tensor, frames: range) -> Tensor:
    """Indices of the edges whose two frames both lie in ``frames``.

    Args:
        edges: ``(P, 2)`` integer frame pairs ``(view 1, view 2)``.
        frames: a window of consecutive frames (``range`` with step 1).

    Returns:
        ``(E,)`` int64 indices into ``edges``, increasing (the global edge order is kept), on ``edges.device``.
    """
    check_shape(edges, "P 2", "edges")
    check_dtype(edges, _INT_DTYPES, "edges")
    if frames.step != 1:
        raise Easi3RInputError(f"frames must be consecutive (step 1), got {frames!r}")
    inside = ((edges >= frames.start) & (edges < frames.stop)).all(dim=1)
    return torch.nonzero(inside).flatten()


class PointmapSource(Protocol):
    """Provider of the pairwise pointmaps of a subset of the edges (one window's).

    Called as ``source(edge_indices)`` with ``(E,)`` int64 indices into the global edge list; returns
    ``(pts_1, pts_2, conf_1, conf_2)`` of those edges in that order: ``(E, H, W, 3)`` view-1 and view-2 points in
    view 1's camera frame, and ``(E, H, W)`` raw confidences (>= 1). A pipeline implements it by running the
    network on those pairs, so that only one window's pointmaps are resident at a time.
    """

    def __call__(self, edge_indices: Tensor) -> Pointmaps: ...


@dataclass(frozen=True)
class InMemoryPointmaps:
    """A :class:`PointmapSource` over pointmaps already computed for every edge (tests, the global mode).

    Attributes:
        pts_1, pts_2: ``(P, H, W, 3)`` view-1 / view-2 points in view 1's camera frame.
        conf_1, conf_2: ``(P, H, W)`` raw confidences.
    """

    pts_1: Tensor
    pts_2: Tensor
    conf_1: Tensor
    conf_2: Tensor

    def __post_init__(self) -> None:
        dims = check_shape(self.pts_1, "P H W 3", "pts_1")
        check_shape(self.pts_2, "P H W 3", "pts_2", dims=dims)
        check_shape(self.conf_1, "P H W", "conf_1", dims=dims)
        check_shape(self.conf_2, "P H W", "conf_2", dims=dims)
        check_same_device({"pts_1": self.pts_1, "pts_2": self.pts_2, "conf_1": self.conf_1, "conf_2": self.conf_2})

    def __call__(self, edge_indices: Tensor) -> Pointmaps:
        """The pointmaps of ``edge_indices`` (``(E,)`` int64), copied (``index_select``), in that order."""
        idx = edge_indices.to(self.pts_1.device)
        return (
            self.pts_1.index_select(0, idx),
            self.pts_2.index_select(0, idx),
            self.conf_1.index_select(0, idx),
            self.conf_2.index_select(0, idx),
        )


def _world_points(cam2world: Tensor, focals: Tensor, principal_points: Tensor, depths: Tensor) -> Tensor:
    """``(T, H, W, 3)`` world points of ``(T, H, W)`` z-depths (the aligner's ``get_pts3d`` computation)."""
    t, h, w = depths.shape
    grid = pixel_grid(h, w, device=depths.device).reshape(-1, 2)
    cam = depth_to_camera_points(depths.reshape(t, -1), focals, principal_points, grid)
    return transform_points(cam2world, cam).reshape(t, h, w, 3)


def _move_poses(cam2world: Tensor, scale: Tensor, rotation: Tensor, translation: Tensor) -> Tensor:
    """Camera-to-world poses after the world similarity ``x -> s R x + t``: rotations ``R R_k``, centres
    ``s R c_k + t`` (the rotation block stays orthonormal, the scale only moves the centres)."""
    out = cam2world.clone()
    out[:, :3, :3] = rotation @ cam2world[:, :3, :3]
    out[:, :3, 3] = scale * cam2world[:, :3, 3] @ rotation.T + translation
    return out


Sim3 = tuple[Tensor, Tensor, Tensor]


@dataclass
class _Stitched:
    """Results accumulated over the windows, in the first window's world (see :func:`window_align`)."""

    cam2world: Tensor
    focals: Tensor
    principal_points: Tensor
    intrinsics: Tensor
    depths: Tensor
    confidence: Tensor
    pw_poses: Tensor
    pw_scale: Tensor
    placed: Tensor  # (T,) bool: frames already taken from an earlier window
    assigned: Tensor  # (P,) bool: edges already taken from an earlier window
    loss: float = 0.0
    init_loss: float = 0.0
    mst_log: list[MSTEdge] = dataclasses.field(default_factory=list)
    pnp_frames: list[int] = dataclasses.field(default_factory=list)

    @classmethod
    def empty(cls, n_frames: int, n_edges: int, first: Alignment) -> _Stitched:
        """NaN-filled storage with the dtypes, devices and pixel shapes of the first window's result."""

        def nan_like(x: Tensor, n: int) -> Tensor:
            return x.new_full((n, *x.shape[1:]), math.nan)

        return cls(
            cam2world=nan_like(first.cam2world, n_frames),
            focals=nan_like(first.focals, n_frames),
            principal_points=nan_like(first.principal_points, n_frames),
            intrinsics=nan_like(first.intrinsics, n_frames),
            depths=nan_like(first.depths, n_frames),
            confidence=nan_like(first.confidence, n_frames),
            pw_poses=nan_like(first.pw_poses, n_edges),
            pw_scale=nan_like(first.pw_scale, n_edges),
            placed=torch.zeros(n_frames, dtype=torch.bool),
            assigned=torch.zeros(n_edges, dtype=torch.bool),
        )

    def add(self, frames: range, edge_indices: Tensor, result: Alignment, sim3: Sim3 | None) -> None:
        """Take the frames and edges of one window not taken yet, moved by ``sim3 = (s, R, t)`` (float64) into
        the reference world (``None``: the window is the reference, its values are kept bit for bit)."""
        cam2world, depths, pw_poses, pw_scale = result.cam2world, result.depths, result.pw_poses, result.pw_scale
        if sim3 is not None:
            s, R, t = sim3
            dtype = cam2world.dtype
            cam2world = _move_poses(cam2world.double(), s, R, t).to(dtype)
            depths = (depths.double() * s).to(dtype)
            pw_poses = (sim3_matrix(s, R, t) @ pw_poses.double()).to(dtype)
            pw_scale = (pw_scale.double() * s).to(dtype)
        new = ~self.placed[frames.start : frames.stop]
        frame_ids = torch.arange(frames.start, frames.stop)[new]
        per_frame = (
            (self.cam2world, cam2world),
            (self.focals, result.focals),
            (self.principal_points, result.principal_points),
            (self.intrinsics, result.intrinsics),
            (self.depths, depths),
            (self.confidence, result.confidence),
        )
        for store, value in per_frame:
            store[frame_ids.to(store.device)] = value[new.to(value.device)]
        self.placed[frame_ids] = True
        edge_ids = edge_indices.cpu()
        first = ~self.assigned[edge_ids]
        for store, value in ((self.pw_poses, pw_poses), (self.pw_scale, pw_scale)):
            store[edge_ids[first].to(store.device)] = value[first.to(value.device)]
        self.assigned[edge_ids] = True
        self.loss += result.loss
        self.init_loss += result.init_loss
        self.mst_log += [dataclasses.replace(e, i=e.i + frames.start, j=e.j + frames.start) for e in result.mst_log]
        self.pnp_frames += [f + frames.start for f in result.pnp_frames]

    def alignment(self) -> Alignment:
        """The stitched :class:`Alignment`; ``points`` back-projects the stitched depths."""
        points = _world_points(self.cam2world, self.focals, self.principal_points, self.depths)
        return Alignment(
            cam2world=self.cam2world,
            focals=self.focals,
            principal_points=self.principal_points,
            intrinsics=self.intrinsics,
            depths=self.depths,
            points=points,
            confidence=self.confidence,
            pw_poses=self.pw_poses,
            pw_scale=self.pw_scale,
            loss=self.loss,
            init_loss=self.init_loss,
            mst_log=self.mst_log,
            pnp_frames=self.pnp_frames,
        )


def _select_pixels(valid: Tensor, most: int) -> Tensor:
    """Flat indices of the ``True`` pixels of ``valid``, strided down to at most ``most`` (fixed, no RNG)."""
    idx = torch.nonzero(valid.flatten()).flatten()
    stride = max(1, math.ceil(idx.numel() / most))
    return idx[::stride]


def _overlap_sim3(
    stitched: _Stitched,
    result: Alignment,
    frames: range,
    masks: Tensor | None,
    conf_threshold: float,
    points_per_frame: int,
    with_scale: bool = True,
) -> Sim3:
    """Sim(3) ``(s, R, t)`` (float64) mapping a window's world onto the reference world, fitted on its frames
    already placed by earlier windows (see :func:`window_align`); ``with_scale=False`` fits a rigid motion
    (``s = 1``)."""
    shared = [f for f in frames if bool(stitched.placed[f])]
    g = torch.tensor(shared, device=stitched.depths.device)
    local = g - frames.start
    ref_pts = _world_points(
        stitched.cam2world[g], stitched.focals[g], stitched.principal_points[g], stitched.depths[g]
    ).double()
    win_pts = result.points[local].double()
    conf = torch.minimum(stitched.confidence[g], result.confidence[local])
    static = torch.ones_like(conf, dtype=torch.bool) if masks is None else ~masks[shared].to(conf.device)
    src, dst, weights = [result.cam2world[local, :3, 3].double()], [stitched.cam2world[g, :3, 3].double()], []
    centre_weights = []
    for k in range(len(shared)):
        # confident static pixels; fall back to every static pixel, then to every pixel, so a frame always
        # contributes points (a Sim(3) from a single camera centre is undetermined)
        for valid in (static[k] & (conf[k] > conf_threshold), static[k], torch.ones_like(static[k])):
            sel = _select_pixels(valid, points_per_frame)
            if sel.numel():
                break
        src.append(win_pts[k].reshape(-1, 3)[sel])
        dst.append(ref_pts[k].reshape(-1, 3)[sel])
        weights.append(torch.ones(sel.numel(), dtype=torch.float64, device=sel.device))
        centre_weights.append(float(sel.numel()))
    w = torch.cat([torch.tensor(centre_weights, dtype=torch.float64, device=g.device), *weights])
    x, y, w = torch.cat(src), torch.cat(dst), w.to(src[0].device)
    if with_scale:
        rot, trans, scale = roma.rigid_points_registration(x, y, weights=w, compute_scaling=True)
    else:
        rot, trans = roma.rigid_points_registration(x, y, weights=w, compute_scaling=False)
        scale = x.new_ones(())
    if not (bool(torch.isfinite(rot).all()) and bool(torch.isfinite(trans).all()) and float(scale) > 0):
        raise Easi3RRuntimeError(f"window {frames.start}-{frames.stop - 1}: degenerate Sim(3) on the overlap frames")
    return scale, rot, trans


def _moved(item: tuple[Tensor, Alignment], device: torch.device) -> tuple[Tensor, Alignment]:
    idx, result = item
    tensors = {f.name: getattr(result, f.name).to(device) for f in dataclasses.fields(result)
               if isinstance(getattr(result, f.name), Tensor)}  # fmt: skip
    return idx.to(device), dataclasses.replace(result, **tensors)


def _check_window_edges(local_edges: Tensor, frames: range) -> None:
    """Every frame of a window must be in one of its edges (else global_align cannot place it)."""
    seen = torch.zeros(len(frames), dtype=torch.bool, device=local_edges.device)
    seen[local_edges.reshape(-1)] = True
    if not bool(seen.all()):
        missing = [frames.start + int(f) for f in torch.nonzero(~seen).flatten().tolist()]
        raise Easi3RInputError(
            f"frames {missing[:5]} are in no edge of window {frames.start}-{frames.stop - 1}: use a denser pair "
            "graph or larger windows"
        )


def window_align(
    edges: Tensor,
    source: PointmapSource,
    n_frames: int,
    *,
    window: int,
    overlap: float,
    config: AlignConfig | None = None,
    metric: bool = False,
    images: NDArray[Any] | Tensor | None = None,
    masks: Tensor | None = None,
    flow_provider: FlowProvider | None = None,
    known_mode: KnownMode = "pin",
    known_focal: float | Tensor | None = None,
    known_poses: Tensor | None = None,
    progress: bool = True,
    conf_threshold: float | None = None,
    points_per_frame: int = 2048,
    dist: DistContext | None = None,
) -> Alignment:
    """Global alignment window by window, chained into one world by a Sim(3) per window (MonST3R's window mode).

    The frames are split by :func:`plan_windows`. For each window in order: its edges (both frames inside,
    :func:`window_edge_indices`) are renumbered to local frames ``0 .. n-1``, their pointmaps are fetched from
    ``source`` (one call per window), and :func:`~easi3r.align.optimize.global_align` aligns them with
    ``images[frames]`` / ``masks[frames]``; only the per-frame results are kept, so one window's pointmaps are
    resident at a time. With a single window this is exactly ``global_align`` on all pairs.

    Stitching: window ``k``'s world is mapped into the first window's world by the similarity
    ``x -> s R x + t`` minimising ``sum_i w_i ||s R x_i + t - y_i||^2`` (``roma.rigid_points_registration``),
    where ``(x_i, y_i)`` are corresponding points of the frames window ``k`` shares with earlier windows, in
    window ``k``'s world and in the reference world: each shared frame's camera centre, and the world points of
    up to ``points_per_frame`` of its pixels (a fixed stride over the static pixels, ``masks`` False, whose
    confidence exceeds ``conf_threshold`` in both results; all static pixels if none does, all pixels if the frame
    is all dynamic). Points weigh 1 and a
    camera centre weighs as much as its frame's points together, so trajectory and scene count equally. The
    window's poses become ``R_k -> R R_k``, ``c_k -> s R c_k + t`` and its depths ``s d_k`` (focals and principal
    points unchanged). A frame shared by two windows keeps the values of the earlier window (already in the
    reference world); the later window only uses it to fit its similarity.

    Args:
        edges: ``(P, 2)`` integer frame pairs ``(view 1, view 2)`` of the whole video.
        source: the pointmaps of a list of edges (:class:`PointmapSource`, e.g. :class:`InMemoryPointmaps`).
        n_frames: ``T``; every frame must be in an edge of its windows.
        window: frames per window (>= 2); ``window >= T`` is the global mode.
        overlap: fraction of a window shared with the next one, in ``[0, 1)`` (see :func:`plan_windows`).
        config: alignment settings of every window (defaults: the official demo's pass 2).
        images: ``(T, H, W, 3)`` uint8 RGB frames; needed only by the flow term.
        masks: ``(T, H, W)`` bool dynamic masks (excluded from the flow term and from the stitching points).
        flow_provider: observed-flow source of the flow term (default DIS).
        known_focal: known focal(s) in pixels, scalar or ``(T,)``; each window gets the values of its frames.
        known_poses: ``(T, 4, 4)`` known cam-to-world; each window gets those of its frames, so every window is
            already in the known world and is taken as is (no stitching similarity; pinned poses come back exactly).
        known_mode: ``"pin"`` or ``"init"``, per window as in :func:`~easi3r.align.optimize.global_align`.
        metric: metric pointmaps: every window keeps the network's units (``global_align(metric=True)``) and the
            windows are stitched by a rigid motion (``s = 1``) instead of a Sim(3).
        progress: tqdm bars over the windows and the iterations.
        conf_threshold: raw confidence above which a pixel may be a stitching point (default
            ``config.min_conf_thr``, the PnP threshold of the MST initialisation).
        points_per_frame: at most this many stitching points per shared frame.
        dist: with several processes (:class:`~easi3r.distributed.DistContext`), the windows are divided among
            the ranks (rank ``r`` aligns windows ``r, r + N, ...``, fetching their pointmaps from its own
            ``source``) and every rank stitches all of them: the result is the same on every rank.

    Returns:
        :class:`~easi3r.align.optimize.Alignment` of all ``T`` frames in the first window's world. Per frame
        (``cam2world``, ``focals``, ``principal_points``, ``intrinsics``, ``depths``, ``confidence``): from the
        first window containing the frame (``confidence`` is its max over that window's edges only); ``points``
        back-projects the stitched depths. ``pw_poses`` / ``pw_scale``: from the first window that aligned the
        edge, moved into the reference world (``S @ pw_pose``, scale ``s * sigma``); NaN for an edge in no
        window. ``loss`` and ``init_loss``: sums over the windows. ``mst_log`` / ``pnp_frames``: the windows'
        concatenated, with global frame ids.

    Raises:
        Easi3RInputError: bad ``edges`` / ``window`` / ``overlap`` / ``n_frames``, a window frame in none of the
            window's edges, or anything :func:`~easi3r.align.optimize.global_align` rejects.
        Easi3RRuntimeError: a degenerate stitching similarity.
    """
    cfg = AlignConfig() if config is None else config
    if not isinstance(cfg, AlignConfig):
        raise Easi3RInputError(f"config must be an AlignConfig, got {type(cfg).__name__}")
    windows = plan_windows(n_frames, window, overlap)
    n_edges = check_shape(edges, "P 2", "edges")["P"]
    check_dtype(edges, _INT_DTYPES, "edges")
    if n_edges == 0 or int(edges.min()) < 0 or int(edges.max()) >= n_frames:
        raise Easi3RInputError(f"edges must be non-empty with frame indices in [0, {n_frames}), got {n_edges} edges")
    if images is not None:
        check_shape(images, "T _ _ 3", "images", dims={"T": n_frames})
    if masks is not None:
        check_shape(masks, "T _ _", "masks", dims={"T": n_frames})
    if not _is_int(points_per_frame) or points_per_frame < 1:
        raise Easi3RInputError(f"points_per_frame must be an integer >= 1, got {points_per_frame!r}")
    threshold = cfg.min_conf_thr if conf_threshold is None else float(conf_threshold)
    focal_all = None if known_focal is None else torch.as_tensor(known_focal).reshape(-1)
    if focal_all is not None and focal_all.numel() not in (1, n_frames):
        raise Easi3RInputError(f"known_focal must be a scalar or have shape ({n_frames},), got {focal_all.numel()}")
    if known_poses is not None:
        check_shape(known_poses, "T 4 4", "known_poses", dims={"T": n_frames})

    def align(frames: range) -> tuple[Tensor, Alignment]:
        idx = window_edge_indices(edges, frames)
        local_edges = edges[idx] - frames.start
        _check_window_edges(local_edges, frames)
        sl = slice(frames.start, frames.stop)
        result = global_align(
            local_edges,
            *source(idx),  # not bound to a name: the window's pointmaps are freed once global_align returns
            config=cfg,
            images=None if images is None else images[sl],
            masks=None if masks is None else masks[sl],
            flow_provider=flow_provider,
            known_focal=None if focal_all is None else (focal_all if focal_all.numel() == 1 else focal_all[sl]),
            known_poses=None if known_poses is None else known_poses[sl],
            known_mode=known_mode,
            metric=metric,
            progress=progress,
            n_frames=len(frames),
        )
        return idx, result

    def in_order() -> Iterator[tuple[Tensor, Alignment]]:
        if dist is None or not dist.distributed:
            yield from (align(frames) for frames in windows)  # lazily: one window's pointmaps at a time
            return
        # Several processes: rank r aligns windows r, r + N, ...; every rank then stitches all of them in order
        # (cheap and deterministic), so all ranks return the same result.
        mine = {
            k: _moved(align(windows[k]), torch.device("cpu")) for k in range(dist.rank, len(windows), dist.world_size)
        }
        done: dict[int, tuple[Tensor, Alignment]] = {}
        for shard in all_gather_objects(dist, mine):
            done.update(shard)
        device = edges.device
        yield from (_moved(done[k], device) for k in range(len(windows)))

    with tqdm(total=len(windows), desc="window alignment", disable=not progress, leave=False) as bar:
        results = in_order()
        # one window: the edges, images and masks passed are all of them (the global mode, bit for bit)
        idx, result = next(results)
        bar.update()
        if len(windows) == 1:
            return result
        stitched = _Stitched.empty(n_frames, n_edges, result)
        stitched.add(windows[0], idx, result, None)
        for frames, (idx, result) in zip(windows[1:], results):
            # with known poses every window is already in the known world: no stitching motion
            sim3 = (
                None
                if known_poses is not None
                else _overlap_sim3(stitched, result, frames, masks, threshold, points_per_frame, with_scale=not metric)
            )
            stitched.add(frames, idx, result, sim3)
            bar.update()
    return stitched.alignment()
