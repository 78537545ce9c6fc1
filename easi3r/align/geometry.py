"""Pure geometry helpers of the global alignment (tensors in, tensors out, no state).

Conventions: poses are 4x4 homogeneous **camera-to-world** matrices (OpenCV camera: x right, y down, z forward);
quaternions are XYZW (roma); pixel coordinates are the integer grid ``x in [0, W)``, ``y in [0, H)`` without a
half-pixel offset, as in the official code.
"""

from __future__ import annotations

import math

import roma
import torch
from torch import Tensor

from ..errors import Easi3RRuntimeError

__all__ = [
    "FOCAL_RANGE",
    "align_poses_sim3",
    "decode_poses",
    "default_focal",
    "depth_to_camera_points",
    "encode_rotation_translation",
    "estimate_focal",
    "intrinsics_inverse",
    "is_plausible_focal",
    "pixel_grid",
    "procrustes",
    "signed_expm1",
    "signed_log1p",
    "sim3_matrix",
    "transform_points",
]


def signed_log1p(x: Tensor) -> Tensor:
    """``sign(x) * log(1 + |x|)``: the translation parametrisation (compresses large translations)."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def signed_expm1(x: Tensor) -> Tensor:
    """Inverse of :func:`signed_log1p`: ``sign(x) * (exp(|x|) - 1)``."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def pixel_grid(
    height: int, width: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.int64
) -> Tensor:
    """The integer pixel grid, the one pixel-coordinate layout of the alignment.

    Pixel ``(x, y)`` is column ``x`` and row ``y`` of the image, without a half-pixel offset (official
    ``dust3r/utils/geometry.py`` ``xy_grid``): ``grid[y, x] = (x, y)``. Channel-first or flattened layouts are views
    of it (``grid.reshape(-1, 2)`` lists the pixels in row-major order; ``.T`` makes it ``(2, H*W)``).

    Args:
        height, width: image size ``H, W`` in pixels.
        device, dtype: of the result (the values are exact in any float dtype for images under 2^24 pixels a side).

    Returns:
        ``(H, W, 2)`` with ``[..., 0] = x`` (column) and ``[..., 1] = y`` (row).

    Example:
        >>> pixel_grid(2, 3)[1, 2].tolist()
        [2, 1]
    """
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype), torch.arange(width, device=device, dtype=dtype), indexing="ij"
    )
    return torch.stack((xs, ys), dim=-1)


def decode_poses(params: Tensor) -> Tensor:
    """Pose parameters ``(..., 7+)`` (unnormalised quaternion XYZW, ``signed_log1p`` translation) -> ``(..., 4, 4)``.

    The quaternion is normalised (``roma.RigidUnitQuat(q, signed_expm1(t)).normalize().to_homogeneous()``);
    extra trailing entries (the log-scale of pairwise poses) are ignored.
    """
    quat = params[..., :4]
    trans = signed_expm1(params[..., 4:7])
    pose: Tensor = roma.RigidUnitQuat(quat, trans).normalize().to_homogeneous()
    return pose


def encode_rotation_translation(rotation: Tensor, translation: Tensor) -> Tensor:
    """Inverse of :func:`decode_poses`: ``(..., 3, 3)`` rotation and ``(..., 3)`` translation -> ``(..., 7)``."""
    return torch.cat((roma.rotmat_to_unitquat(rotation), signed_log1p(translation)), dim=-1)


def transform_points(transform: Tensor, points: Tensor) -> Tensor:
    """Apply ``(B, 4, 4)`` (or ``(4, 4)``) affine transforms to ``(B, ..., 3)`` points (per batch element).

    Written as ``p @ M[:3, :3]^T + M[:3, 3]`` (one batched matmul), the form the official ``geotrf`` uses, so the
    float32 rounding matches it.
    """
    if transform.ndim == 2:
        return points @ transform[:3, :3].transpose(-1, -2) + transform[:3, 3]
    batch = transform.shape[0]
    flat = points.reshape(batch, -1, 3)
    out = flat @ transform[:, :3, :3].transpose(-1, -2) + transform[:, None, :3, 3]
    return out.reshape(points.shape)


def depth_to_camera_points(depth: Tensor, focal: Tensor, principal_point: Tensor, grid: Tensor) -> Tensor:
    """Back-project z-depth to camera-frame points.

    Args:
        depth: ``(B, N)`` z-depth of the ``N`` pixels listed in ``grid``.
        focal: ``(B,)`` focal lengths in pixels (``fx = fy``).
        principal_point: ``(B, 2)`` ``(cx, cy)`` in pixels.
        grid: ``(N, 2)`` pixel coordinates ``(x, y)``.

    Returns:
        ``(B, N, 3)`` points ``(d (x - cx) / f, d (y - cy) / f, d)`` (same evaluation order as the official code).
    """
    centred = grid[None].to(depth.dtype) - principal_point[:, None, :]
    d = depth[..., None]
    return torch.cat((d * centred / focal[:, None, None], d), dim=-1)


#: Relative spread below which a point set counts as collinear for :func:`procrustes`: the second largest eigenvalue
#: of its weighted covariance over the largest (float64).
RANK_TOLERANCE = 1e-10
#: Spread below which a point set counts as coincident for :func:`procrustes`: a weighted standard deviation of at
#: most this many ulps (of the points' own dtype) of its largest coordinate; a smaller spread is representation
#: noise. Relative to the coordinates' precision, not to their magnitude: an MST chain whose scale drifted
#: (untrained weights, long windows) places a frame's float64 points in a tiny cloud far from the origin that still
#: registers.
COINCIDENT_ULPS = 8.0


def _spread_degeneracy(points: Tensor, weights: Tensor, eps: float) -> str | None:
    """Why ``(B, N, 3)`` weighted points cannot pin a similarity (None when they can): every point equal (to
    :data:`COINCIDENT_ULPS` x ``eps`` relative), or all on one line (the rotation about that line is then
    undetermined)."""
    w = weights / weights.sum(dim=-1, keepdim=True)
    centred = points - (w[..., None] * points).sum(dim=-2, keepdim=True)
    cov = torch.einsum("bn,bni,bnj->bij", w, centred, centred)
    eig = torch.linalg.eigvalsh(cov)  # ascending
    floor = (COINCIDENT_ULPS * eps * points.abs().amax(dim=(-2, -1))).clamp(min=1e-30)
    if bool((eig[:, 2] <= floor**2).any()):
        return "all points coincide"
    if bool((eig[:, 1] <= RANK_TOLERANCE * eig[:, 2]).any()):
        return "the points are collinear"
    return None


def procrustes(
    source: Tensor, target: Tensor, weights: Tensor, *, batched: bool = False, what: str = "the points"
) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted similarity registration ``target ~ s R source + t`` (Umeyama, via roma).

    Args:
        source, target: ``(..., 3)`` corresponding points; every leading dim is flattened into the point list
            (pass an ``(H, W, 3)`` pointmap as is), except the first one when ``batched``.
        weights: non-negative weights of shape ``source.shape[:-1]``.
        batched: solve one registration per entry of the first dim.
        what: names the registration in the error message (e.g. ``"edge (0, 1): view-1 points onto frame 0"``).

    Returns:
        ``(s, R, t)``: scale ``()``, rotation ``(3, 3)`` and translation ``(3,)``, each with a leading ``(B,)``
        when ``batched``.

    Raises:
        Easi3RRuntimeError: the registration is undetermined (rank-deficient): zero total weight, source or target
            points all equal (spread within :data:`COINCIDENT_ULPS` ulps of their dtype) or collinear (weighted
            covariance eigenvalues ``l_2 <= 1e-10 l_1``), or a non-finite or non-positive scale.
    """
    if batched:
        b = source.shape[0]
        x, y, w = source.reshape(b, -1, 3), target.reshape(b, -1, 3), weights.reshape(b, -1)
    else:
        x, y, w = source.reshape(-1, 3), target.reshape(-1, 3), weights.reshape(-1)
    # Accumulated in float64: in float32 the ~2e5-term sums land on BLAS SGEMM, whose rounding depends on the code
    # path (ISA dispatch, thread count) by up to 1e-4 relative in the scale (measured on MKL: AVX-512 vs
    # MKL_CBWR=COMPATIBLE, 1 vs 2 threads), which then moves every chained pose.
    eps = {"source": torch.finfo(x.dtype).eps, "target": torch.finfo(y.dtype).eps}
    x, y, w = x.double(), y.double(), w.double()
    if bool((w.sum(dim=-1) <= 0).any()):
        raise Easi3RRuntimeError(f"degenerate registration of {what}: zero total weight (no confident points)")
    for name, pts in (("source", x), ("target", y)):
        why = _spread_degeneracy(pts.reshape(-1, *pts.shape[-2:]), w.reshape(-1, w.shape[-1]), eps[name])
        if why is not None:
            raise Easi3RRuntimeError(f"degenerate registration of {what}: {why} ({name} side)")
    rot, trans, scale = roma.rigid_points_registration(x, y, weights=w, compute_scaling=True)
    if not (bool(torch.isfinite(scale).all()) and bool((scale > 0).all()) and bool(torch.isfinite(rot).all())):
        raise Easi3RRuntimeError(f"degenerate registration of {what}: scale {scale.flatten()[:3].tolist()}")
    return scale.to(source.dtype), rot.to(source.dtype), trans.to(source.dtype)


def sim3_matrix(scale: Tensor | float, rotation: Tensor, translation: Tensor) -> Tensor:
    """``[s R | t]`` as a ``(..., 4, 4)`` matrix (the translation is not multiplied by ``s``)."""
    rotation = torch.as_tensor(rotation)
    scale = torch.as_tensor(scale, dtype=rotation.dtype, device=rotation.device)
    out = torch.zeros(rotation.shape[:-2] + (4, 4), dtype=rotation.dtype, device=rotation.device)
    out[..., :3, :3] = rotation * scale[..., None, None]
    out[..., :3, 3] = translation
    out[..., 3, 3] = 1
    return out


#: Plausible focal lengths, in units of the image's long side ``S = max(H, W)``: ``[0.05 S, 50 S]``, i.e. fields
#: of view between ~169 and ~1.1 degrees. An estimate outside (or non-finite) is treated as degenerate.
FOCAL_RANGE = (0.05, 50.0)


def default_focal(height: int, width: int) -> float:
    """The fallback focal in pixels, ``max(H, W)`` (a ~53 degree field of view on the long side): the value the
    official ``PointCloudOptimizer`` initialises its focal parameters with (``focal_break * log(max(H, W))``,
    official ``dust3r/cloud_opt/optimizer.py``)."""
    return float(max(height, width))


def is_plausible_focal(focal: float, height: int, width: int) -> bool:
    """Whether a focal estimate (px) is finite and inside :data:`FOCAL_RANGE` for an ``H x W`` image.

    Example:
        >>> is_plausible_focal(355.2, 384, 512), is_plausible_focal(0.0, 48, 64), is_plausible_focal(0.33, 48, 64)
        (True, False, False)
    """
    side = max(height, width)
    return math.isfinite(focal) and FOCAL_RANGE[0] * side <= focal <= FOCAL_RANGE[1] * side


def intrinsics_inverse(K: Tensor) -> Tensor:
    """Closed-form inverse of ``(..., 3, 3)`` pinhole intrinsics ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``:
    ``[[1/fx, 0, -cx/fx], [0, 1/fy, -cy/fy], [0, 0, 1]]`` (no LU factorisation; a zero focal gives inf, never a
    linear-algebra error)."""
    inv = torch.zeros_like(K)
    fx, fy = K[..., 0, 0], K[..., 1, 1]
    inv[..., 0, 0] = 1 / fx
    inv[..., 1, 1] = 1 / fy
    inv[..., 0, 2] = -K[..., 0, 2] / fx
    inv[..., 1, 2] = -K[..., 1, 2] / fy
    inv[..., 2, 2] = 1
    return inv


def estimate_focal(points: Tensor, principal_point: Tensor | None = None, iterations: int = 10) -> Tensor:
    """Focal length (px) that best explains camera-frame points, by Weiszfeld (robust L1) iterations.

    Minimises ``sum_p || p~ - f (x/z, y/z) ||`` over ``f``, where ``p~`` is the pixel minus the principal point:
    starts from the L2 closed form ``mean(<p~, u>) / mean(|u|^2)`` and runs ``iterations`` re-weighted steps with
    weights ``1 / max(residual, 1e-8)``; the result is clipped below at 0.

    Args:
        points: ``(H, W, 3)`` or ``(B, H, W, 3)`` points in the camera frame (float32).
        principal_point: ``(2,)`` or ``(B, 2)``; default ``(W/2, H/2)``.
        iterations: number of re-weighted iterations (official: 10).

    Returns:
        ``()`` or ``(B,)`` focal lengths, same dtype as ``points``.
    """
    single = points.ndim == 3
    if single:
        points = points[None]
    b, h, w, _ = points.shape
    if principal_point is None:
        principal_point = torch.tensor((w / 2, h / 2), device=points.device)
    pp = principal_point.reshape(-1, 1, 2).to(points.dtype)
    pixels = pixel_grid(h, w, device=points.device).reshape(1, -1, 2) - pp  # (B|1, HW, 2)
    flat = points.reshape(b, -1, 3)
    # points at z = 0 or with NaN give non-finite projections; the official code zeroes them out of both sums.
    uv = (flat[..., :2] / flat[..., 2:3]).nan_to_num(posinf=0.0, neginf=0.0)
    dot_uv_px = (uv * pixels).sum(dim=-1)
    dot_uv_uv = uv.square().sum(dim=-1)
    focal = dot_uv_px.mean(dim=1) / dot_uv_uv.mean(dim=1)
    for _ in range(iterations):
        residual = (pixels - focal.view(-1, 1, 1) * uv).norm(dim=-1)
        weight = residual.clip(min=1e-8).reciprocal()
        focal = (weight * dot_uv_px).mean(dim=1) / (weight * dot_uv_uv).mean(dim=1)
    focal = focal.clip(min=0.0)
    return focal[0] if single else focal


def align_poses_sim3(source: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Similarity ``(s, R, t)`` mapping the camera trajectory ``source`` onto ``target`` (both ``(T, 4, 4)``
    cam-to-world): ``s R c_src + t ~ c_tgt`` for the camera centres and ``R R_src ~ R_tgt`` for the orientations.

    The rotation is the chordal mean of ``R_tgt R_src^T`` (``roma.special_procrustes``): camera orientations pin it
    even when the centres are few, collinear or noisy relative to a short baseline, where a centre-only Umeyama
    fit is ill-conditioned. Scale and translation then solve least squares on the centres; the scale falls back
    to 1 when the source centres do not spread (pure rotation).

    Returns:
        ``s ()``, ``R (3, 3)``, ``t (3,)`` in the dtype of ``source``.
    """
    rot = roma.special_procrustes((target[:, :3, :3] @ source[:, :3, :3].transpose(1, 2)).sum(dim=0))
    c_src, c_tgt = source[:, :3, 3], target[:, :3, 3]
    d_src = (c_src - c_src.mean(dim=0)) @ rot.T
    d_tgt = c_tgt - c_tgt.mean(dim=0)
    spread = d_src.square().sum()
    scale = (d_src * d_tgt).sum() / spread if float(spread) > 1e-12 else spread.new_tensor(1.0)
    trans = c_tgt.mean(dim=0) - scale * c_src.mean(dim=0) @ rot.T
    return scale, rot, trans
