"""Synthetic scenes with known ground truth for the alignment tests (test tooling, not part of the package).

:func:`box_room_sequence` renders a textured box room seen by a camera moving along a smooth path (translations
and rotations of a few degrees) with one independently moving textured panel. Depth is ray-cast per frame; the
pairwise "network" predictions are built from the true depth and relative poses (view-2 points in view-1's
camera frame), with noise, an unknown scale per edge, and inconsistent points on the moving panel. It is the
generator of ``tests/test_align_synthetic.py`` made reusable: any length, resolution and pair graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import roma
import torch
from numpy.typing import NDArray
from torch import Tensor

from easi3r.pairs import make_pairs

__all__ = ["ROOM", "BoxRoomSequence", "box_room_sequence", "camera_path"]

#: The room's walls (camera looks along +z, y down); it is open behind the cameras (z = -2 is not drawn).
ROOM = {"x": (-3.0, 3.0), "y": (-1.6, 1.6), "z": (-2.0, 6.0)}

_TINT = np.array([[0.9, 0.8, 0.7], [0.6, 0.8, 0.9], [0.8, 0.9, 0.6], [0.9, 0.6, 0.8], [0.7, 0.7, 0.9], [1.0, 0.4, 0.2]])


def _rot(yaw_deg: float, pitch_deg: float, roll_deg: float) -> NDArray[np.float64]:
    angles = torch.tensor(np.deg2rad([pitch_deg, yaw_deg, roll_deg]))
    return np.asarray(roma.rotvec_to_rotmat(angles).numpy(), dtype=np.float64)


def camera_path(n_frames: int) -> NDArray[np.float64]:
    """``(T, 4, 4)`` camera-to-world poses along a smooth path through the room.

    The path's length grows with ``n_frames`` (about 0.05 per frame, capped so the camera stays well inside the
    room), so consecutive frames keep a similar baseline for short and long sequences; the camera yaws by up to
    ~12 degrees, pitches by ~3 and rolls by ~2.
    """
    span = min(1.0, 0.05 * n_frames)
    poses = np.tile(np.eye(4), (n_frames, 1, 1))
    for t in range(n_frames):
        s = t / max(n_frames - 1, 1)
        poses[t, :3, :3] = _rot(12 * span * math.sin(2.2 * s) - 1.5, 3 * span * math.sin(3 * s), 2 * span * s)
        poses[t, :3, 3] = (span * (-0.8 + 1.6 * s), 0.1 * span * math.sin(4 * s), 1.2 * span * s)
    return poses


def _panel_x(t: int) -> float:
    """x-centre of the moving panel (plane z = 3.2) at frame ``t``: it sways independently of the camera."""
    return 1.2 * math.sin(0.35 * t + 0.8)


def _texture(p: NDArray[np.float64], plane: NDArray[np.int64]) -> NDArray[np.float64]:
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    a = np.sin(3.1 * x + 1.7 * y) + np.sin(2.3 * z - 2.9 * y) + 0.8 * np.sin(5.3 * (x + z)) * np.cos(4.1 * y)
    base = 0.5 + 0.17 * a
    return np.asarray(base[..., None] * _TINT[plane], dtype=np.float64)


def _render(
    cam2world: NDArray[np.float64], t: int, h: int, w: int, focal: float
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
    """Ray-cast frame ``t``: z-depth ``(h, w)``, colour ``(h, w, 3)`` in [0, 1], dynamic mask ``(h, w)``."""
    ys, xs = np.mgrid[:h, :w].astype(np.float64)
    d_cam = np.stack(((xs - w / 2) / focal, (ys - h / 2) / focal, np.ones_like(xs)), -1)
    R, C = cam2world[:3, :3], cam2world[:3, 3]
    d = d_cam @ R.T
    best = np.full((h, w), np.inf)
    plane_id = np.zeros((h, w), np.int64)
    for k, (axis, bounds) in enumerate(ROOM.items()):
        ax = "xyz".index(axis)
        for side, c in enumerate(bounds):
            if axis == "z" and side == 0:
                continue
            with np.errstate(divide="ignore", invalid="ignore"):
                lam = (c - C[ax]) / d[..., ax]
            ok = (lam > 0) & (lam < best)
            best = np.where(ok, lam, best)
            plane_id = np.where(ok, min(2 * k + side, 4), plane_id)
    z_obj, x_obj = 3.2, _panel_x(t)
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = (z_obj - C[2]) / d[..., 2]
    hit = C + lam[..., None] * d
    on = (lam > 0) & (lam < best) & (np.abs(hit[..., 0] - x_obj) < 0.55) & (hit[..., 1] > -0.5) & (hit[..., 1] < 0.7)
    best = np.where(on, lam, best)
    plane_id = np.where(on, 5, plane_id)
    world = C + best[..., None] * d
    # the panel's texture moves with it
    tex_pts = np.where(on[..., None], world - np.array([x_obj, 0.0, 0.0]), world)
    return best, _texture(tex_pts, plane_id), on


@dataclass
class BoxRoomSequence:
    """A rendered sequence and its noisy pairwise pointmaps (float32 tensors on the CPU).

    Attributes:
        cam2world: ``(T, 4, 4)`` ground-truth camera-to-world poses (OpenCV axes).
        depth: ``(T, H, W)`` ground-truth z-depth. ``focal``: the true focal in pixels (principal point at
            ``(W/2, H/2)``).
        images: ``(T, H, W, 3)`` uint8 frames (3x supersampled, box-filtered). ``masks``: ``(T, H, W)`` bool,
            the moving panel.
        edges: ``(P, 2)`` int64 pairs ``(view 1, view 2)``.
        pts_1, pts_2: ``(P, H, W, 3)`` view-1 / view-2 points in view 1's camera frame, times an unknown
            per-edge scale in ``[e^-0.7, e^0.7]``. conf_1, conf_2: ``(P, H, W)`` raw confidences (>= 1; 1.3 on
            the panel).
        extent: diagonal of the room (scene extent, length unit of the poses).
    """

    cam2world: Tensor
    depth: Tensor
    images: NDArray[np.uint8]
    masks: Tensor
    edges: Tensor
    pts_1: Tensor
    pts_2: Tensor
    conf_1: Tensor
    conf_2: Tensor
    focal: float
    extent: float


def box_room_sequence(
    n_frames: int,
    width: int = 64,
    height: int = 48,
    *,
    edges: NDArray[np.int64] | Tensor | None = None,
    seed: int = 0,
    noise: float = 0.004,
    focal: float | None = None,
    supersample: int = 3,
) -> BoxRoomSequence:
    """Render ``n_frames`` of the box room at ``width x height`` and build noisy pairwise pointmaps.

    Args:
        n_frames: ``T``.
        width, height: resolution in pixels.
        edges: ``(P, 2)`` pair graph; default ``make_pairs(T, "swinstride", 5, cyclic=False)``.
        seed: seed of the noise, per-edge scales and confidences.
        noise: relative noise of the predicted points.
        focal: focal in pixels (default ``width / 1.2``, a ~62 degree horizontal field of view).
        supersample: supersampling factor of the colour images (1 = none).
    """
    f = width / 1.2 if focal is None else float(focal)
    pairs = make_pairs(n_frames, "swinstride", 5, cyclic=False) if edges is None else np.asarray(edges)
    rng = np.random.default_rng(seed)
    poses = camera_path(n_frames)
    depths, images, masks = [], [], []
    for t in range(n_frames):
        d, col, m = _render(poses[t], t, height, width, f)
        if supersample > 1:
            _, col_hr, _ = _render(poses[t], t, supersample * height, supersample * width, supersample * f)
            col = col_hr.reshape(height, supersample, width, supersample, 3).mean(axis=(1, 3))
        depths.append(d)
        images.append(np.clip(np.round(col * 255), 0, 255).astype(np.uint8))
        masks.append(m)
    depth = np.stack(depths)
    ys, xs = np.mgrid[:height, :width].astype(np.float64)
    rays = np.stack(((xs - width / 2) / f, (ys - height / 2) / f, np.ones_like(xs)), -1)
    cam = rays[None] * depth[..., None]
    pts_1, pts_2, conf_1, conf_2 = [], [], [], []
    shape = (height, width)
    for i, j in pairs.tolist():
        rel = np.linalg.inv(poses[i]) @ poses[j]  # camera j -> camera i
        scale = math.exp(rng.uniform(-0.7, 0.7))
        p1 = cam[i].copy()
        p2 = cam[j] @ rel[:3, :3].T + rel[:3, 3]
        # network-like errors: relative depth noise, and a per-pair offset on the moving panel
        p1 *= 1 + noise * rng.standard_normal((*shape, 1))
        p2 = p2 + noise * np.linalg.norm(p2, axis=-1, keepdims=True) * rng.standard_normal((*shape, 3))
        p1[masks[i]] += rng.normal(0, 0.15, 3)
        p2[masks[j]] += rng.normal(0, 0.15, 3)
        c1 = 1 + np.exp(rng.normal(1.0, 0.3, shape))
        c2 = 1 + np.exp(rng.normal(0.8, 0.3, shape))
        c1[masks[i]] = 1.3
        c2[masks[j]] = 1.3
        pts_1.append(p1 * scale)
        pts_2.append(p2 * scale)
        conf_1.append(c1)
        conf_2.append(c2)

    def f32(arrays: list[NDArray[np.float64]]) -> Tensor:
        return torch.tensor(np.stack(arrays), dtype=torch.float32)

    extent = float(np.linalg.norm([hi - lo for lo, hi in ROOM.values()]))
    return BoxRoomSequence(
        cam2world=torch.tensor(poses, dtype=torch.float32),
        depth=torch.tensor(depth, dtype=torch.float32),
        images=np.stack(images),
        masks=torch.tensor(np.stack(masks)),
        edges=torch.as_tensor(pairs, dtype=torch.int64),
        pts_1=f32(pts_1),
        pts_2=f32(pts_2),
        conf_1=f32(conf_1),
        conf_2=f32(conf_2),
        focal=f,
        extent=extent,
    )
