"""Camera-trajectory metrics: Sim(3) alignment, ATE, RTE and RRE.

Semantics follow the ``evo`` package as the official evaluation uses it (MonST3R / Easi3R
``dust3r/utils/vo_eval.py``, ``eval_metrics``: evo's APE and RPE with Sim(3) Umeyama alignment and scale
correction), re-implemented, not imported:

* the estimate is aligned to the ground truth with a Sim(3) Umeyama fit of the camera centres (rotation,
  translation and one global scale), and every metric is computed on the aligned, rescaled estimate;
* ATE = RMSE over frames of the distance between aligned estimated and ground-truth camera centres;
* RPE with ``delta = 1``: for consecutive frames ``E_i = (Q_i^-1 Q_{i+1})^-1 (P_i^-1 P_{i+1})`` with ``Q`` the
  ground truth and ``P`` the aligned estimate (camera-to-world); RTE = RMSE of ``||translation(E_i)||``,
  RRE = RMSE of the rotation angle of ``E_i`` in degrees.

All computations run in float64 on the CPU: the inputs are a few hundred poses, and the metrics must not
depend on the precision the poses were estimated in. Torch tensors on any device are accepted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import roma
import torch
from numpy.typing import NDArray

from .._checks import as_float64, check_finite, check_shape
from ..errors import Easi3RInputError
from ..geometry import rigid_inverse

__all__ = ["PoseMetrics", "align_trajectory", "apply_sim3", "pose_metrics", "umeyama_sim3"]

# Relative singular-value threshold below which the centre cross-covariance is treated as rank-deficient
# (collinear or coincident camera centres): the rotation about the common line is then undetermined, which
# evo reports as "Degenerate covariance rank". Well above float64 round-off, far below any real trajectory.
_RANK_RTOL = 1e-10


def _finite_float64(x: Any, name: str, spec: str | None = None) -> NDArray[np.float64]:
    """``x`` (array, tensor on any device, sequence) as a finite float64 array, of shape ``spec`` if given.

    Raises:
        Easi3RInputError: non-numeric or non-finite values, or a shape other than ``spec``.
    """
    arr = as_float64(x, name)
    if spec is not None:
        check_shape(arr, spec, name)
    check_finite(arr, name)
    return arr


def umeyama_sim3(src: Any, dst: Any) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity mapping ``src`` points onto ``dst`` points (Umeyama 1991).

    Minimises ``sum_i ||s R src_i + t - dst_i||^2`` via :func:`roma.rigid_points_registration` in float64.

    Args:
        src: ``(N, 3)`` points to be moved (e.g. estimated camera centres); array or tensor.
        dst: ``(N, 3)`` target points (e.g. ground-truth camera centres).

    Returns:
        ``(s, R, t)``: scale (float > 0), ``(3, 3)`` rotation and ``(3,)`` translation, float64 numpy.

    Raises:
        Easi3RInputError: shapes differ or are not ``(N, 3)``, ``N < 3``, non-finite values, all points of a
            set coincide, or the cross-covariance has rank < 2 (collinear points: rotation undetermined).
    """
    src_np = _finite_float64(src, "src", "N 3")
    dst_np = as_float64(dst, "dst")
    n = check_shape(dst_np, "N 3", "dst", dims={"N": src_np.shape[0]})["N"]
    check_finite(dst_np, "dst")
    if n < 3:
        raise Easi3RInputError(f"Sim(3) alignment needs at least 3 points, got {n}")
    # Work in units of each set's largest coordinate: the similarity is covariant under a scaling of either set,
    # and values near the float64 limit (1e308) would otherwise overflow in the sums and squares.
    a_src = float(np.abs(src_np).max()) or 1.0
    a_dst = float(np.abs(dst_np).max()) or 1.0
    src_u, dst_u = src_np / a_src, dst_np / a_dst
    src_c = src_u - src_u.mean(axis=0)
    dst_c = dst_u - dst_u.mean(axis=0)
    for name, centred in (("src", src_c), ("dst", dst_c)):
        spread = np.sqrt((centred**2).sum(axis=1).mean())
        if spread <= 1e-12:
            raise Easi3RInputError(f"degenerate alignment: all {name} positions are equal")
    sigma = np.linalg.svd(dst_c.T @ src_c / n, compute_uv=False)
    if sigma[1] <= _RANK_RTOL * sigma[0]:
        raise Easi3RInputError(
            "degenerate alignment: positions are collinear (covariance rank < 2), rotation is undetermined"
        )
    R, t_u, s_u = roma.rigid_points_registration(torch.from_numpy(src_u), torch.from_numpy(dst_u), compute_scaling=True)
    with np.errstate(over="ignore"):
        scale = float(s_u) * a_dst / a_src
        t = t_u.numpy() * a_dst
    if not (np.isfinite(scale) and np.isfinite(t).all()) or scale <= 0:
        raise Easi3RInputError(
            f"degenerate alignment: the similarity between the trajectories is not representable (scale {scale:g}; "
            f"coordinates up to {a_src:g} vs {a_dst:g})"
        )
    return scale, R.numpy(), t


def apply_sim3(cam2world: Any, s: float, R: Any, t: Any) -> np.ndarray:
    """Move camera-to-world poses by the similarity ``x -> s R x + t`` of the world frame.

    Args:
        cam2world: ``(T, 4, 4)`` camera-to-world poses.
        s: scale. R: ``(3, 3)`` rotation. t: ``(3,)`` translation.

    Returns:
        ``(T, 4, 4)`` float64 poses: orientations ``R @ R_i``, centres ``s R c_i + t`` (the rotation block
        stays orthonormal; the scale only acts on positions).
    """
    poses = _finite_float64(cam2world, "cam2world", "T 4 4")
    R_np, t_np = _finite_float64(R, "R", "3 3"), _finite_float64(t, "t", "3")
    out: NDArray[np.float64] = poses.copy()
    out[:, :3, :3] = R_np @ poses[:, :3, :3]
    out[:, :3, 3] = s * poses[:, :3, 3] @ R_np.T + t_np
    return out


def _paired(pred_c2w: Any, gt_c2w: Any) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = _finite_float64(pred_c2w, "pred_c2w", "T 4 4"), _finite_float64(gt_c2w, "gt_c2w", "T 4 4")
    if pred.shape[0] != gt.shape[0]:
        raise Easi3RInputError(
            f"pred_c2w and gt_c2w must hold the same number of poses, got {pred.shape[0]} and {gt.shape[0]}"
        )
    if pred.shape[0] < 3:
        raise Easi3RInputError(f"pose evaluation needs at least 3 poses, got {pred.shape[0]}")
    return pred, gt


def align_trajectory(pred_c2w: Any, gt_c2w: Any) -> np.ndarray:
    """Sim(3)-align an estimated trajectory to the ground truth using the camera centres only.

    Args:
        pred_c2w: ``(T, 4, 4)`` estimated camera-to-world poses.
        gt_c2w: ``(T, 4, 4)`` ground-truth camera-to-world poses, frame-matched with ``pred_c2w``.

    Returns:
        ``(T, 4, 4)`` float64 aligned estimate (see :func:`apply_sim3`).

    Raises:
        Easi3RInputError: length mismatch, fewer than 3 poses, or a degenerate fit (see :func:`umeyama_sim3`).
    """
    pred, gt = _paired(pred_c2w, gt_c2w)
    s, R, t = umeyama_sim3(pred[:, :3, 3], gt[:, :3, 3])
    return apply_sim3(pred, s, R, t)


@dataclass(frozen=True)
class PoseMetrics:
    """Trajectory errors of one sequence.

    Attributes:
        ate: absolute trajectory error, RMSE of centre distances (ground-truth length unit).
        rte: relative translation error, RMSE over consecutive pairs (ground-truth length unit).
        rre_deg: relative rotation error, RMSE over consecutive pairs (degrees).
        scale: the Sim(3) scale that mapped the estimate to the ground-truth unit.
    """

    ate: float
    rte: float
    rre_deg: float
    scale: float

    def as_dict(self) -> dict[str, float]:
        """The four numbers by field name (JSON-ready)."""
        return asdict(self)


def pose_metrics(pred_c2w: Any, gt_c2w: Any) -> PoseMetrics:
    """ATE, RTE and RRE of an estimated trajectory after Sim(3) alignment (evo semantics, delta = 1).

    Args:
        pred_c2w: ``(T, 4, 4)`` estimated camera-to-world poses (any scale and world frame).
        gt_c2w: ``(T, 4, 4)`` ground-truth camera-to-world poses, frame ``i`` matching estimate ``i``.

    Returns:
        :class:`PoseMetrics` (translations in ground-truth units, rotation in degrees).

    Raises:
        Easi3RInputError: length mismatch, fewer than 3 poses, non-finite values, coincident or collinear
            camera centres.
    """
    pred, gt = _paired(pred_c2w, gt_c2w)
    s, R, t = umeyama_sim3(pred[:, :3, 3], gt[:, :3, 3])
    aligned = apply_sim3(pred, s, R, t)
    ate = float(np.sqrt(np.mean(np.sum((aligned[:, :3, 3] - gt[:, :3, 3]) ** 2, axis=1))))

    rel_gt = rigid_inverse(gt[:-1]) @ gt[1:]
    rel_est = rigid_inverse(aligned[:-1]) @ aligned[1:]
    err = rigid_inverse(rel_gt) @ rel_est
    rte = float(np.sqrt(np.mean(np.sum(err[:, :3, 3] ** 2, axis=1))))
    # The rotation-vector norm is accurate for small angles, where arccos((trace - 1) / 2) loses digits.
    angles = roma.rotmat_to_rotvec(torch.from_numpy(np.ascontiguousarray(err[:, :3, :3]))).norm(dim=-1)
    rre = float(np.degrees(np.sqrt(np.mean(angles.numpy() ** 2))))
    return PoseMetrics(ate=ate, rte=rte, rre_deg=rre, scale=s)
