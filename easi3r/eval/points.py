"""4D reconstruction metrics: accuracy, completeness and corresponding-point distance.

The definitions of the Easi3R paper's DyCheck point-cloud table (Sec. 4, following MonST3R's 4D evaluation):

* **Accuracy**: distance from every predicted point to its nearest ground-truth point.
* **Completeness**: distance from every ground-truth point to its nearest predicted point.
* **Distance**: distance between corresponding points (same frame, same pixel), no search.

Means are the reported numbers; medians are provided alongside. Time is ignored: all frames of a sequence
are pooled into one cloud before the nearest-neighbour search. :func:`dycheck_point_metrics` runs the whole
DyCheck protocol (depth maps + cameras -> aligned clouds -> metrics). Everything is float64 numpy on the CPU;
torch tensors are accepted.
"""

from __future__ import annotations

from typing import Any, Literal

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from .._checks import check_shape
from ..errors import Easi3RInputError
from .poses import _finite_float64, apply_sim3, umeyama_sim3

__all__ = [
    "accuracy_completeness",
    "distance",
    "dycheck_point_metrics",
    "nearest_distances",
    "point_metrics",
    "unproject_depth",
]

Reduction = Literal["mean", "median"]


def _points(x: Any, name: str) -> NDArray[np.float64]:
    arr = _finite_float64(x, name, "* _ 3").reshape(-1, 3)
    if arr.shape[0] == 0:
        raise Easi3RInputError(f"{name} holds no point")
    return arr


def _reduce(values: np.ndarray, reduction: Reduction) -> float:
    if reduction == "mean":
        return float(values.mean())
    if reduction == "median":
        return float(np.median(values))
    raise Easi3RInputError(f"reduction must be 'mean' or 'median', got {reduction!r}")


def nearest_distances(query: Any, reference: Any) -> np.ndarray:
    """Euclidean distance from each query point to its nearest reference point.

    Args:
        query: ``(N, 3)`` points (any leading shape is flattened). reference: ``(M, 3)`` points.

    Returns:
        ``(N,)`` float64 distances (same unit as the inputs).
    """
    q, r = _points(query, "query"), _points(reference, "reference")
    dist: NDArray[np.float64] = cKDTree(r).query(q, k=1)[0]
    return dist


def accuracy_completeness(pred_pts: Any, gt_pts: Any, *, reduction: Reduction = "mean") -> tuple[float, float]:
    """Accuracy and completeness of a predicted cloud against a ground-truth cloud.

    Args:
        pred_pts: ``(N, 3)`` predicted points. gt_pts: ``(M, 3)`` ground-truth points (same unit and frame).
        reduction: ``"mean"`` (reported) or ``"median"``.

    Returns:
        ``(accuracy, completeness)`` in the ground-truth unit: pred -> nearest gt, and gt -> nearest pred.
    """
    pred, gt = _points(pred_pts, "pred_pts"), _points(gt_pts, "gt_pts")
    acc = _reduce(nearest_distances(pred, gt), reduction)
    comp = _reduce(nearest_distances(gt, pred), reduction)
    return acc, comp


def distance(pred_pts: Any, gt_pts: Any, *, reduction: Reduction = "mean") -> float:
    """Mean (or median) Euclidean distance between corresponding points.

    Args:
        pred_pts: ``(N, 3)`` predicted points.
        gt_pts: ``(N, 3)`` ground-truth points, row ``i`` corresponding to predicted row ``i``.

    Raises:
        Easi3RInputError: the two sets differ in size.
    """
    pred, gt = _points(pred_pts, "pred_pts"), _points(gt_pts, "gt_pts")
    if pred.shape != gt.shape:
        raise Easi3RInputError(f"corresponding point sets differ in size: {pred.shape}, {gt.shape}")
    return _reduce(np.linalg.norm(pred - gt, axis=1), reduction)


def point_metrics(pred_pts: Any, gt_pts: Any, *, corresponding: bool = True) -> dict[str, float]:
    """All point metrics of one sequence.

    Args:
        pred_pts: ``(N, 3)`` predicted points. gt_pts: ``(M, 3)`` ground-truth points.
        corresponding: also compute ``distance`` (requires ``N == M`` with rows in correspondence).

    Returns:
        ``{"accuracy", "accuracy_median", "completeness", "completeness_median"}`` plus ``"distance"`` and
        ``"distance_median"`` when ``corresponding``; ground-truth units.
    """
    pred, gt = _points(pred_pts, "pred_pts"), _points(gt_pts, "gt_pts")
    acc_d = nearest_distances(pred, gt)
    comp_d = nearest_distances(gt, pred)
    out = {
        "accuracy": float(acc_d.mean()),
        "accuracy_median": float(np.median(acc_d)),
        "completeness": float(comp_d.mean()),
        "completeness_median": float(np.median(comp_d)),
    }
    if corresponding:
        out["distance"] = distance(pred, gt)
        out["distance_median"] = distance(pred, gt, reduction="median")
    return out


def unproject_depth(depth: Any, intrinsics: Any, cam2world: Any, mask: Any = None) -> np.ndarray:
    """Lift z-depth maps to world points (OpenCV pinhole, pixel centres at integer coordinates).

    Args:
        depth: ``(T, H, W)`` or ``(H, W)`` z-depth.
        intrinsics: ``(T, 3, 3)`` or ``(3, 3)`` pixel intrinsics at the depth's resolution.
        cam2world: ``(T, 4, 4)`` or ``(4, 4)`` camera-to-world poses.
        mask: optional ``(T, H, W)`` / ``(H, W)`` bool; only these pixels are returned.

    Returns:
        ``(N, 3)`` float64 world points, frame-major then row-major order (so two calls with the same mask
        give clouds in pixel-wise correspondence).
    """
    d = _finite_float64(depth, "depth")
    K = _finite_float64(intrinsics, "intrinsics")
    c2w = _finite_float64(cam2world, "cam2world")
    d, K, c2w = (a[None] if a.ndim == 2 else a for a in (d, K, c2w))
    dims = check_shape(d, "T H W", "depth")
    check_shape(K, "T 3 3", "intrinsics", dims=dims)
    check_shape(c2w, "T 4 4", "cam2world", dims=dims)
    t, h, w = d.shape
    if mask is None:
        m = np.ones(d.shape, dtype=bool)
    else:
        m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask, dtype=bool)
        if m.ndim == 2:
            m = m[None]
        check_shape(m, "T H W", "mask", dims=dims)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    out = []
    for i in range(t):
        z = d[i][m[i]]
        x = (u[m[i]] - K[i, 0, 2]) * z / K[i, 0, 0]
        y = (v[m[i]] - K[i, 1, 2]) * z / K[i, 1, 1]
        cam = np.stack([x, y, z], axis=1)
        out.append(cam @ c2w[i, :3, :3].T + c2w[i, :3, 3])
    return np.concatenate(out) if out else np.zeros((0, 3))


def dycheck_point_metrics(
    pred_depths: Any,
    pred_intrinsics: Any,
    pred_cam2world: Any,
    gt_depths: Any,
    gt_intrinsics: Any,
    gt_cam2world: Any,
) -> dict[str, float]:
    """Point metrics of one sequence under the Easi3R DyCheck protocol.

    1. Ground-truth depth is resized to the prediction's resolution with bicubic interpolation (OpenCV) and
       its intrinsics scaled by ``(W_pred / W_gt, H_pred / H_gt)``; pixels with depth > 0 are valid.
    2. The predicted cameras are Sim(3)-aligned to the ground truth (Umeyama on camera centres) and the
       predicted depth is multiplied by the recovered scale.
    3. Both clouds are unprojected on the same valid pixels of all frames (pixel-wise correspondence) and
       pooled over time; :func:`point_metrics` is applied.

    Args:
        pred_depths: ``(T, H, W)`` predicted z-depth. pred_intrinsics: ``(T, 3, 3)`` pixel intrinsics.
        pred_cam2world: ``(T, 4, 4)`` predicted camera-to-world poses (any scale).
        gt_depths: ``(T, H', W')`` ground-truth depth (0 = invalid).
        gt_intrinsics: ``(T, 3, 3)`` at ``(H', W')``. gt_cam2world: ``(T, 4, 4)``.

    Returns:
        The dictionary of :func:`point_metrics` plus ``"scale"`` (the Sim(3) scale) and ``"n_points"``.
    """
    pd, gd = _finite_float64(pred_depths, "pred_depths"), _finite_float64(gt_depths, "gt_depths")
    check_shape(gd, "T _ _", "gt_depths", dims=check_shape(pd, "T H W", "pred_depths"))
    pred_c2w = _finite_float64(pred_cam2world, "pred_cam2world")
    gt_c2w = _finite_float64(gt_cam2world, "gt_cam2world")
    gt_K = _finite_float64(gt_intrinsics, "gt_intrinsics").copy()
    h, w = pd.shape[1:]
    gh, gw = gd.shape[1:]
    if (gh, gw) != (h, w):
        gd = np.stack([cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC) for g in gd])
        gt_K[..., 0, :] *= w / gw
        gt_K[..., 1, :] *= h / gh
    valid = gd > 0
    if not valid.any():
        raise Easi3RInputError("ground-truth depth has no valid (> 0) pixel")
    if pred_c2w.shape != gt_c2w.shape:
        raise Easi3RInputError(f"pred and gt cameras differ in shape: {pred_c2w.shape} and {gt_c2w.shape}")
    s, R, t = umeyama_sim3(pred_c2w[:, :3, 3], gt_c2w[:, :3, 3])
    aligned = apply_sim3(pred_c2w, s, R, t)
    gt_pts = unproject_depth(gd, gt_K, gt_c2w, valid)
    pred_pts = unproject_depth(pd * s, pred_intrinsics, aligned, valid)
    out = point_metrics(pred_pts, gt_pts)
    out["scale"] = s
    out["n_points"] = int(gt_pts.shape[0])
    return out
