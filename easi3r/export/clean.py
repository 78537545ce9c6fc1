"""Confidence filters of the official GLB export: multi-view depth cleaning and the HSV sky heuristic.

Both only lower confidences (a pixel whose confidence drops to 0 falls below any export threshold); no depth
or point is changed.

- :func:`clean_pointcloud`: official ``dust3r/cloud_opt/base_opt.py::clean_pointcloud`` (called by
  ``BasePCOptimizer.clean_pointcloud`` with ``cams = inv(get_im_poses())``, ``K = get_intrinsics()``).
- :func:`segment_sky`: official ``dust3r/viz.py::segment_sky`` (no network weights).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from scipy import ndimage
from torch import Tensor
from tqdm.auto import tqdm

from .._checks import check_dtype, check_shape
from ..errors import Easi3RInputError

__all__ = ["clean_pointcloud", "depths_to_world", "segment_sky"]


def depths_to_world(K: Tensor, cam2world: Tensor, depths: Tensor) -> Tensor:
    """World points of z-depth maps: pixel ``(u, v)`` -> ``cam2world · (depth · K⁻¹ [u, v, 1])``.

    Args:
        K: ``(T, 3, 3)`` intrinsics in pixels (OpenCV: integer coordinates are pixel centres).
        cam2world: ``(T, 4, 4)`` camera-to-world.
        depths: ``(T, H, W)`` z-depth.

    Returns:
        ``(T, H, W, 3)`` world points, dtype and device of ``depths``.
    """
    T, H, W = depths.shape
    dt, dev = depths.dtype, depths.device
    vs, us = torch.meshgrid(torch.arange(H, device=dev, dtype=dt), torch.arange(W, device=dev, dtype=dt), indexing="ij")
    pix = torch.stack([us, vs, torch.ones_like(us)], dim=-1)  # (H, W, 3)
    rays = torch.einsum("tij,hwj->thwi", torch.linalg.inv(K.to(dt)), pix)
    cam = rays * depths[..., None]
    c2w = cam2world.to(dt)
    return torch.einsum("tij,thwj->thwi", c2w[:, :3, :3], cam) + c2w[:, None, None, :3, 3]


@torch.no_grad()
def clean_pointcloud(
    conf: Tensor,
    K: Tensor,
    cam2world: Tensor,
    depths: Tensor,
    tol: float = 0.001,
    *,
    bad_conf: float = 0.0,
    progress: bool = False,
) -> Tensor:
    """Lower the confidence of points that lie in front of what another camera sees (official ``clean_pointcloud``).

    For every ordered pair ``(i, j)``, ``i != j``, in that order: the world points of frame ``i`` (its depth
    back-projected, :func:`depths_to_world`) are projected into camera ``j``, pixel ``(u, v) = round(K_j x / z)``;
    a point is visible if ``z > 0`` and ``(u, v)`` lies in the image. A visible point is *bad* if
    ``z < (1 - tol) · depth_j[v, u]`` (it floats in front of camera ``j``'s surface) and
    ``conf_i < conf_j[v, u]``; bad confidences are clipped to at most ``bad_conf``. As in the official code the
    comparison uses the confidences updated so far, so the result depends on the frame order.

    Args:
        conf: ``(T, H, W)`` raw confidences (>= 1 for network confidences).
        K: ``(T, 3, 3)`` intrinsics in pixels.
        cam2world: ``(T, 4, 4)`` camera-to-world.
        depths: ``(T, H, W)`` z-depth, same units as the translations.
        tol: relative depth margin in [0, 1).
        bad_conf: the confidence given to bad points (official 0).
        progress: tqdm bar over the frames ``i``.

    Returns:
        ``(T, H, W)`` cleaned confidences (a new tensor, dtype/device of ``conf``).

    Raises:
        Easi3RInputError: inconsistent shapes or ``tol`` outside [0, 1).

    Example:
        >>> K = torch.tensor([[2.0, 0, 1], [0, 2, 1], [0, 0, 1]]).expand(2, 3, 3)
        >>> c2w = torch.eye(4).expand(2, 4, 4)
        >>> depths = torch.stack([torch.full((3, 3), 1.0), torch.full((3, 3), 2.0)])
        >>> conf = torch.stack([torch.full((3, 3), 1.5), torch.full((3, 3), 3.0)])
        >>> clean_pointcloud(conf, K, c2w, depths)[:, 1, 1].tolist()  # frame 0 floats in front of frame 1
        [0.0, 3.0]
    """
    dims = check_shape(conf, "T H W", "conf")
    check_shape(depths, "T H W", "depths", dims=dims)
    check_shape(K, "T 3 3", "K", dims=dims)
    check_shape(cam2world, "T 4 4", "cam2world", dims=dims)
    if not 0.0 <= tol < 1.0:
        raise Easi3RInputError(f"tol must be in [0, 1), got {tol}")
    T, H, W = dims["T"], dims["H"], dims["W"]
    dt = torch.float64 if depths.dtype == torch.float64 else torch.float32
    d = depths.to(dt)
    Kd = K.to(device=d.device, dtype=dt)
    c2w = cam2world.to(device=d.device, dtype=dt)
    world = depths_to_world(Kd, c2w, d)  # (T, H, W, 3)
    w2c = torch.linalg.inv(c2w)
    res = conf.clone()
    for i in tqdm(range(T), disable=not progress, desc="clean depth", unit="frame"):
        for j in range(T):
            if i == j:
                continue
            cam = world[i] @ w2c[j, :3, :3].T + w2c[j, :3, 3]  # (H, W, 3) in camera j
            z = cam[..., 2]
            pix = cam @ Kd[j].T
            uv = (pix[..., :2] / pix[..., 2:3]).round()
            # Out-of-range and non-finite projections are masked before the integer cast is used.
            u = torch.nan_to_num(uv[..., 0], nan=-1.0, posinf=-1.0, neginf=-1.0).clamp(-1, W).long()
            v = torch.nan_to_num(uv[..., 1], nan=-1.0, posinf=-1.0, neginf=-1.0).clamp(-1, H).long()
            visible = (z > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
            vu = v[visible], u[visible]
            bad = (z[visible] < (1.0 - tol) * d[j][vu]) & (res[i][visible] < res[j][vu])
            bad_mask = visible.clone()
            bad_mask[visible] = bad
            res[i][bad_mask] = res[i][bad_mask].clamp(max=bad_conf)
    return res


def segment_sky(image: np.ndarray) -> NDArray[np.bool_]:
    """Sky pixels of one RGB frame by the official HSV heuristic (``dust3r/viz.py::segment_sky``, no weights).

    Steps: ``hsv = cv2.cvtColor(rgb, COLOR_BGR2HSV)`` (the RGB frame is read *as BGR*, as the official code
    does, so a blue sky gets an OpenCV hue in [0, 30]); candidates are ``inRange(hsv, (0, 0, 100),
    (30, 255, 255))`` or luminous grey (``S < 10 & V > 150``, ``S < 30 & V > 180``, ``S < 50 & V > 220``);
    then a 5x5 binary opening (scipy); finally the 8-connected components whose area exceeds half the largest
    one's are kept (the largest always is).

    Args:
        image: ``(H, W, 3)`` uint8 RGB frame (the processed frame; the official code converts its float
            frame with ``uint8(255 · x)``).

    Returns:
        ``(H, W)`` bool sky mask.
    """
    img = np.asarray(image)
    check_shape(img, "H W 3", "image")
    check_dtype(img, (np.uint8,), "image")
    hsv = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2HSV)
    sat, val = hsv[..., 1], hsv[..., 2]
    mask = cv2.inRange(hsv, np.array([0, 0, 100]), np.array([30, 255, 255])) > 0
    mask |= (sat < 10) & (val > 150)
    mask |= (sat < 30) & (val > 180)
    mask |= (sat < 50) & (val > 220)
    opened = ndimage.binary_opening(mask, structure=np.ones((5, 5), bool))
    _, labels, stats, _ = cv2.connectedComponentsWithStats(opened.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    if len(areas) == 0:
        return np.zeros(img.shape[:2], dtype=bool)
    keep = 1 + np.flatnonzero(areas > areas.max() / 2)
    out: NDArray[np.bool_] = np.isin(labels, keep)
    return out
