"""Minimum-spanning-tree initialisation of the global alignment (DUSt3R / MonST3R ``init='mst'``).

Official counterpart: ``dust3r/cloud_opt/init_im_poses.py``, ``init_minimum_spanning_tree`` and
``minimum_spanning_tree`` (with ``fast_pnp`` and ``dust3r/post_process.py`` ``estimate_focal_knowing_depth``).
Edges ``(i, j)`` follow the package convention: frame ``i`` is view 1 (the reference, whose camera frame both
pointmaps of the pair are expressed in) and frame ``j`` is view 2.

The pairwise pointmaps are chained along the maximum-confidence spanning tree of the pair graph: starting from the
strongest pair, every tree edge registers (weighted Procrustes with scale) the new frame's pointmap onto the
already placed one. This module reproduces the official algorithm **including its quirks**, because they decide the
initial state and hence the optimised result:

* the focal of a frame met for the first time as view 1 of a tree edge is estimated from the view-1 pointmap of the
  *previously processed* edge (a stale loop variable in the reference code);
* only the first image of each tree edge (its view 1) receives a pose from the tree; every frame left without one
  is posed by RANSAC-PnP on its chained points (``cv2.solvePnPRansac`` with SQPnP), identity when that fails;
* frames never met as view 1 of a tree edge get their focal from the best-scoring edge where they are view 1.

Everything here runs under ``torch.no_grad``; the tensors stay on the inputs' device except for the scipy graph
step (scalars) and OpenCV's PnP (one frame's points, copied to host).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import cv2
import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree
from torch import Tensor

from ..errors import Easi3RInputError, Easi3RRuntimeError
from .geometry import (
    FOCAL_RANGE,
    default_focal,
    estimate_focal,
    is_plausible_focal,
    pixel_grid,
    procrustes,
    sim3_matrix,
    transform_points,
)

__all__ = [
    "ROBUST_PNP_ITERATIONS",
    "MSTEdge",
    "MSTInit",
    "edge_scores",
    "image_confidence",
    "mst_initialisation",
    "ransac_pnp",
]

#: RANSAC iterations of the robust initialisation (``AlignConfig.robust_init``); the official code uses 10.
ROBUST_PNP_ITERATIONS = 1000


@dataclass(frozen=True)
class MSTEdge:
    """One step of the tree walk, as the official verbose log prints it (``*`` marks a frame placed by this step).

    Attributes:
        i, j: frames of the directed edge (view 1, view 2).
        score: ``mean(conf_1) * mean(conf_2)`` of that edge.
        placed_1, placed_2: whether this step placed frame ``i`` (view 1) / ``j`` (view 2); both for the root edge.
    """

    i: int
    j: int
    score: float
    placed_1: bool
    placed_2: bool

    def __str__(self) -> str:
        return f"({self.i}{'*' if self.placed_1 else ''},{self.j}{'*' if self.placed_2 else ''}) {self.score:.3f}"


@dataclass
class MSTInit:
    """Result of :func:`mst_initialisation` (before the pairwise-pose fit and the scale normalisation).

    Attributes:
        points: ``(T, H, W, 3)`` float64 chained world points of every frame (the root frame's camera is the world).
        focals: ``T`` focal lengths in pixels (Python floats, as the reference keeps them).
        cam2world: ``(T, 4, 4)`` float64 initial camera-to-world poses (rotation + translation, no scale).
        log: the tree walk in processing order (root first).
        pnp_frames: frames whose pose came from RANSAC-PnP (or a test's override of it), in frame order.
        pnp_results: the cam-to-world returned for each of ``pnp_frames`` (None where PnP failed).
        fallback_focal_frames: frames whose focal estimate was degenerate (zero, non-finite or outside
            :data:`~easi3r.align.geometry.FOCAL_RANGE`) and was replaced by
            :func:`~easi3r.align.geometry.default_focal` (a warning names them).
        failed_pnp_frames: frames where PnP found no pose (fewer than 4 confident points or no solution): posed at
            the identity, as the official code does (a warning names them).
    """

    points: Tensor
    focals: list[float]
    cam2world: Tensor
    log: list[MSTEdge] = field(default_factory=list)
    pnp_frames: list[int] = field(default_factory=list)
    pnp_results: dict[int, Tensor | None] = field(default_factory=dict)
    fallback_focal_frames: list[int] = field(default_factory=list)
    failed_pnp_frames: list[int] = field(default_factory=list)


def image_confidence(edges: Tensor, conf_1: Tensor, conf_2: Tensor, n_frames: int) -> Tensor:
    """Per-frame confidence ``im_conf``: elementwise max of every raw confidence map of the frame (both roles).

    Official ``dust3r/cloud_opt/base_opt.py``, ``BasePCOptimizer._compute_img_conf``.

    Args:
        edges: ``(P, 2)`` int64 ``(i, j)``: frame of view 1 and of view 2.
        conf_1, conf_2: ``(P, H, W)`` raw confidences of view 1 / view 2.
        n_frames: ``T``.

    Returns:
        ``(T, H, W)``; zeros for a frame that appears in no edge.
    """
    out = conf_1.new_zeros((n_frames,) + tuple(conf_1.shape[1:]))
    flat = out.reshape(n_frames, -1)
    for idx, conf in ((edges[:, 0], conf_1), (edges[:, 1], conf_2)):
        flat.scatter_reduce_(0, idx[:, None].expand(-1, flat.shape[1]), conf.reshape(len(idx), -1), "amax")
    return out


def edge_scores(conf_1: Tensor, conf_2: Tensor) -> Tensor:
    """Pair score ``mean(conf_1) * mean(conf_2)`` per edge (official ``init_im_poses.py`` ``compute_edge_scores``
    with ``conf='mean'``).

    Args:
        conf_1, conf_2: ``(P, H, W)`` raw confidences of view 1 / view 2.

    Returns:
        ``(P,)`` in the inputs' dtype.
    """
    return conf_1.flatten(1).mean(dim=1) * conf_2.flatten(1).mean(dim=1)


def ransac_pnp(
    points: Tensor,
    focal: float | None,
    mask: Tensor,
    *,
    iterations: int = 10,
    reprojection_error: float = 5.0,
    refine: bool = False,
) -> tuple[float, Tensor] | None:
    """Camera pose of a frame from its world pointmap, by RANSAC-PnP (OpenCV SQPnP; official ``init_im_poses.py``
    ``fast_pnp``).

    Pixel ``(x, y)`` of :func:`~easi3r.align.geometry.pixel_grid` is assumed to see ``points[y, x]``; the principal
    point is ``(W/2, H/2)``.

    Args:
        points: ``(H, W, 3)`` world points of the frame.
        focal: focal length in pixels; None tries 21 focals geometrically spaced in ``[S/2, 3S]``
            (``S = max(H, W)``) and keeps the one with most inliers.
        mask: ``(H, W)`` bool, the points to use.
        iterations: RANSAC iterations. ``reprojection_error``: inlier threshold in pixels.
        refine: polish the RANSAC pose by Levenberg-Marquardt on its inliers (``cv2.solvePnPRefineLM``; not in
            the official code). RANSAC's minimal-sample solutions jump between nearby optima under float noise in
            the points; the refined pose is the inliers' least-squares optimum, which moves continuously.

    Returns:
        ``(focal, cam2world (4, 4))`` in the dtype and device of ``points``, or None with fewer than 4 points or
        when OpenCV finds no solution.
    """
    if int(mask.sum()) < 4:
        return None
    pts = points.detach().cpu().numpy().astype(np.float32, copy=False)
    msk = mask.detach().cpu().numpy().astype(bool)
    h, w, _ = pts.shape
    pixels = pixel_grid(h, w, dtype=torch.float32).numpy()
    candidates: list[float] = (
        [float(focal)] if focal is not None else np.geomspace(max(w, h) / 2, max(w, h) * 3, 21).tolist()
    )
    best: tuple[np.ndarray, np.ndarray, np.ndarray, float] | None = None
    obj, img = pts[msk], pixels[msk]
    for f in candidates:
        K = np.array([(f, 0, w / 2), (0, f, h / 2), (0, 0, 1)], dtype=np.float32)
        try:
            ok, rvec, tvec, inliers = cv2.solvePnPRansac(
                obj,
                img,
                K,
                None,
                iterationsCount=iterations,
                reprojectionError=reprojection_error,
                flags=cv2.SOLVEPNP_SQPNP,
            )
        except cv2.error:
            # SQPnP asserts on points it cannot condition (e.g. a cloud collapsed to a few ulps): no solution at
            # this focal, like a failed RANSAC, rather than a raw OpenCV error.
            continue
        if not ok or inliers is None:
            continue
        if best is None or len(inliers) > best[0].size:
            best = (inliers.reshape(-1), rvec, tvec, f)
    if best is None or best[0].size == 0:
        return None
    inl, rvec, tvec, f = best
    if refine and inl.size >= 4:
        K = np.array([(f, 0, w / 2), (0, f, h / 2), (0, 0, 1)], dtype=np.float64)
        rvec, tvec = cv2.solvePnPRefineLM(
            obj[inl].astype(np.float64), img[inl].astype(np.float64), K, None, rvec.copy(), tvec.copy()
        )
    world2cam = torch.eye(4, dtype=points.dtype, device=points.device)
    world2cam[:3, :3] = torch.from_numpy(cv2.Rodrigues(rvec)[0])
    world2cam[:3, 3] = torch.from_numpy(tvec.ravel())
    return f, torch.linalg.inv(world2cam)


def _sparse_graph(edges: list[tuple[int, int]], scores: list[float], n_frames: int) -> sp.dok_array:
    # The official code keys a dict by edge and fills a dok_array in edge order, then negates it; keeping the same
    # container keeps the same key order (which decides ties in the focal fallback below).
    graph = sp.dok_array((n_frames, n_frames))
    for (i, j), s in zip(edges, scores):
        graph[i, j] = s
    return -graph


@torch.no_grad()
def mst_initialisation(
    edges: Tensor,
    pts_1: Tensor,
    pts_2: Tensor,
    conf_1: Tensor,
    conf_2: Tensor,
    im_conf: Tensor,
    *,
    min_conf_thr: float = 2.5,
    pnp_iterations: int = 10,
    pnp_reprojection_error: float = 5.0,
    known_focals: list[float] | None = None,
    robust_pnp: bool = False,
    _pnp_override: dict[int, Tensor] | None = None,
) -> MSTInit:
    """Chain the pairwise pointmaps along the maximum-confidence spanning tree (official ``init='mst'``,
    ``init_im_poses.py`` ``minimum_spanning_tree``).

    Args:
        edges: ``(P, 2)`` int64 directed edges ``(i, j)``: frame of view 1 and of view 2.
        pts_1, pts_2: ``(P, H, W, 3)`` view-1 / view-2 points in view 1's camera frame.
        conf_1, conf_2: ``(P, H, W)`` raw confidences (>= 1) of view 1 / view 2.
        im_conf: ``(T, H, W)`` per-frame max confidence (:func:`image_confidence`); masks the PnP points.
        min_conf_thr: PnP uses the pixels with ``im_conf > min_conf_thr``.
        pnp_iterations, pnp_reprojection_error: RANSAC settings (iterations; inlier threshold in pixels).
        known_focals: ``T`` focals in pixels replacing every estimate (pinned intrinsics).
        robust_pnp: the robust variant of the PnP step (not official): at least :data:`ROBUST_PNP_ITERATIONS`
            RANSAC iterations, then Levenberg-Marquardt on the inliers (:func:`ransac_pnp` ``refine``).
        _pnp_override: private testing seam: frame -> ``(4, 4)`` cam-to-world used instead of PnP's result for
            that frame (RANSAC with 10 iterations is chaotic under 1e-5 input changes, so a golden comparison pins
            it to the official result).

    Returns:
        :class:`MSTInit`.

    Degenerate estimates are caught here: a focal estimate that is zero, non-finite or implausible
    (:func:`~easi3r.align.geometry.is_plausible_focal`) is replaced by
    :func:`~easi3r.align.geometry.default_focal` before it is used (PnP, the aligner's focal), and a frame PnP
    cannot pose keeps the identity; both emit one ``RuntimeWarning`` naming the frames.

    Raises:
        Easi3RInputError: the pair graph does not connect all frames.
        Easi3RRuntimeError: a tree registration is undetermined (pointmap points all equal or collinear; see
            :func:`~easi3r.align.geometry.procrustes`).
    """
    n_frames = im_conf.shape[0]
    # The chain is walked in float64: each edge multiplies in its scale, and where the scales drift (untrained
    # weights, long windows) float32 world points of a far frame would collapse into a cloud a few ulps wide.
    device, dtype = pts_1.device, torch.float64
    edge_list = [(int(i), int(j)) for i, j in edges.tolist()]
    # A repeated edge keeps its last occurrence, as the official dict keyed by "i_j" does.
    index = {e: k for k, e in enumerate(edge_list)}
    scores_t = edge_scores(conf_1, conf_2)
    unique = list(index)
    scores = [float(scores_t[index[e]]) for e in unique]

    graph = _sparse_graph(unique, scores, n_frames)
    n_comp, _ = connected_components(graph.tocsr(), directed=False)
    if n_comp != 1:
        raise Easi3RInputError(f"edges must connect all {n_frames} frames, got {n_comp} separate groups")
    tree = minimum_spanning_tree(graph).tocoo()
    todo = sorted(zip((-tree.data).tolist(), tree.row.tolist(), tree.col.tolist()))

    h, w = pts_1.shape[1:3]
    fallback_frames: list[int] = []

    def focal_of(frame: int, key: tuple[int, int]) -> float:
        if known_focals is not None:
            return float(known_focals[frame])
        f = float(estimate_focal(pts_1[index[key]]))
        if not is_plausible_focal(f, h, w):
            fallback_frames.append(frame)
            f = default_focal(h, w)
        return f

    points: list[Tensor | None] = [None] * n_frames
    poses: list[Tensor | None] = [None] * n_frames
    focals: list[float | None] = [None] * n_frames
    log: list[MSTEdge] = []

    score, i, j = todo.pop()
    key = (i, j)
    points[i] = pts_1[index[key]].to(dtype)
    points[j] = pts_2[index[key]].to(dtype)
    poses[i] = torch.eye(4, dtype=dtype, device=device)
    focals[i] = focal_of(i, key)
    done = {i, j}
    log.append(MSTEdge(i, j, score, True, True))

    while todo:
        score, i, j = todo.pop()
        if focals[i] is None:
            # Quirk kept on purpose: `key` is still the previous edge here (stale variable in the reference).
            focals[i] = focal_of(i, key)
        if i in done or j in done:
            key = (i, j)
            e = index[key]
            if i in done:
                s, R, T = procrustes(pts_1[e].to(dtype), _placed(points, i), conf_1[e], what=f"tree edge ({i}, {j})")
                points[j] = transform_points(sim3_matrix(s, R, T), pts_2[e].to(dtype))
                done.add(j)
                log.append(MSTEdge(i, j, score, placed_1=False, placed_2=True))
            else:
                s, R, T = procrustes(pts_2[e].to(dtype), _placed(points, j), conf_2[e], what=f"tree edge ({i}, {j})")
                points[i] = transform_points(sim3_matrix(s, R, T), pts_1[e].to(dtype))
                done.add(i)
                log.append(MSTEdge(i, j, score, placed_1=True, placed_2=False))
            # Both branches give view 1's camera-to-world: pts_1 and pts_2 live in camera i's frame.
            if poses[i] is None:
                poses[i] = sim3_matrix(1.0, R, T)
        else:
            todo.insert(0, (score, i, j))

    # Frames never met as view 1 of a tree edge: focal from their best-scoring edge as view 1.
    neg = list(graph.values())
    keys = np.array(list(graph.keys()))[np.argsort(neg)]
    for i, j in keys.tolist():
        if focals[i] is None:
            focals[i] = focal_of(i, (i, j))

    pnp_frames: list[int] = []
    pnp_results: dict[int, Tensor | None] = {}
    failed: list[int] = []
    override = _pnp_override or {}
    for t in range(n_frames):
        if poses[t] is not None:
            continue
        pnp_frames.append(t)
        if t in override:
            pose = torch.as_tensor(override[t]).to(device=device, dtype=dtype)
            pnp_results[t] = pose
            poses[t] = pose
            continue
        res = ransac_pnp(
            _placed(points, t),
            focals[t],
            im_conf[t] > min_conf_thr,
            iterations=max(pnp_iterations, ROBUST_PNP_ITERATIONS) if robust_pnp else pnp_iterations,
            reprojection_error=pnp_reprojection_error,
            refine=robust_pnp,
        )
        pnp_results[t] = None if res is None else res[1]
        if res is not None:
            focals[t], poses[t] = res
        else:
            failed.append(t)
            poses[t] = torch.eye(4, dtype=dtype, device=device)

    # A frame that is view 2 only and whose PnP sweep failed has no focal: fall back to the default init value.
    final_focals = [default_focal(h, w) if f is None else float(f) for f in focals]
    fallback = sorted(set(fallback_frames))
    if fallback:
        lo, hi = FOCAL_RANGE
        warnings.warn(
            f"degenerate focal estimate for frame(s) {fallback} (zero, non-finite or outside [{lo}, {hi}] x "
            f"max(H, W)): using the default focal max(H, W) = {default_focal(h, w):g} px",
            RuntimeWarning,
            stacklevel=2,
        )
    if failed:
        warnings.warn(
            f"PnP found no pose for frame(s) {failed} (fewer than 4 points with im_conf > {min_conf_thr:g}, or no "
            "solution): initialised at the identity pose",
            RuntimeWarning,
            stacklevel=2,
        )
    placed_points = [_placed(points, t) for t in range(n_frames)]
    placed_poses = [_placed(poses, t) for t in range(n_frames)]
    return MSTInit(
        torch.stack(placed_points),
        final_focals,
        torch.stack(placed_poses),
        log,
        pnp_frames,
        pnp_results,
        fallback,
        failed,
    )


def _placed(items: list[Tensor | None], frame: int) -> Tensor:
    """``items[frame]``, which the tree walk has set by now (the graph is connected, checked up front)."""
    item = items[frame]
    if item is None:
        raise Easi3RRuntimeError(f"the spanning-tree walk left frame {frame} unplaced")
    return item
