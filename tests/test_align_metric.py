"""Metric backbones: with ``metric=True`` the aligned world keeps the pointmaps' units.

A stub metric backbone is emulated by exact pairwise pointmaps of the box room in metres: for every edge, the true
points of both frames (ray-cast depth) expressed in the first frame's camera. Camera-centre
distances and point distances must then come out within 1 % of the truth; without ``metric`` the official
normalisation (geometric mean of the pairwise scales = ``base_scale``) is unchanged.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers.scenes import BoxRoomSequence, box_room_sequence

from easi3r.align import InMemoryPointmaps, global_align, window_align
from easi3r.config import AlignConfig

# The official 300 iterations. From the (exact) MST state Adam's normalised steps chase float noise by ~lr, which
# moves 12 cm camera baselines by ~1 mm: measured errors 0.72 % (camera distances) and 0.23 % (point distances).
CFG = AlignConfig(iterations=300, flow_weight=0.0)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _true_points(sc: BoxRoomSequence) -> torch.Tensor:
    """``(T, H, W, 3)`` world points of the rendered depth (the helper's pinhole, principal point ``(W/2, H/2)``)."""
    t, h, w = sc.depth.shape
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    rays = torch.stack(((xs - w / 2) / sc.focal, (ys - h / 2) / sc.focal, torch.ones(h, w)), -1)
    cam = rays * sc.depth[..., None]
    return cam @ sc.cam2world[:, None, :3, :3].transpose(-1, -2) + sc.cam2world[:, None, None, :3, 3]


@pytest.fixture(scope="module")
def metric_room() -> BoxRoomSequence:
    """Box room, 6 frames at 48x36, with the pointmaps of a perfect metric network: for edge ``(i, j)``, frame
    ``i``'s and frame ``j``'s true points (the moving panel where it is at each frame's time) in camera ``i``'s
    frame, in metres."""
    sc = box_room_sequence(6, 48, 36, noise=0.0, supersample=1)
    world = _true_points(sc)
    c2w = sc.cam2world
    i, j = sc.edges[:, 0], sc.edges[:, 1]
    rot, centre = c2w[i, :3, :3], c2w[i, :3, 3]
    sc.pts_1 = (world[i] - centre[:, None, None]) @ rot[:, None]  # R^T (X - c), row-vector form
    sc.pts_2 = (world[j] - centre[:, None, None]) @ rot[:, None]
    return sc


def _distance_errors(sc: BoxRoomSequence, cam2world: torch.Tensor, points: torch.Tensor) -> tuple[float, float]:
    """Largest relative error of all camera-centre distances, and of the distances between 500 fixed pairs of
    static pixels (any frames)."""
    c_est, c_true = cam2world[:, :3, 3].double(), sc.cam2world[:, :3, 3].double()
    iu = torch.triu_indices(len(c_true), len(c_true), 1)
    d_est = (c_est[iu[0]] - c_est[iu[1]]).norm(dim=-1)
    d_true = (c_true[iu[0]] - c_true[iu[1]]).norm(dim=-1)
    cam_err = float(((d_est - d_true).abs() / d_true).max())
    static = (~sc.masks).flatten()
    est, true = points.double().reshape(-1, 3)[static], _true_points(sc).double().reshape(-1, 3)[static]
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, len(est), (2, 500), generator=g)
    keep = (true[a] - true[b]).norm(dim=-1) > 0.5  # pairs at least 0.5 m apart
    p_est = (est[a] - est[b]).norm(dim=-1)[keep]
    p_true = (true[a] - true[b]).norm(dim=-1)[keep]
    return cam_err, float(((p_est - p_true).abs() / p_true).max())


def test_metric_pointmaps_keep_metric_distances(metric_room: BoxRoomSequence) -> None:
    sc = metric_room
    init = global_align(
        sc.edges,
        sc.pts_1,
        sc.pts_2,
        sc.conf_1,
        sc.conf_2,
        config=AlignConfig(iterations=0, flow_weight=0.0),
        metric=True,
        progress=False,
    )
    assert max(_distance_errors(sc, init.cam2world, init.points)) < 1e-4  # the MST state is the metric truth
    result = global_align(sc.edges, sc.pts_1, sc.pts_2, sc.conf_1, sc.conf_2, config=CFG, metric=True, progress=False)
    cam_err, pts_err = _distance_errors(sc, result.cam2world, result.points)
    assert cam_err < 0.01 and pts_err < 0.01, (cam_err, pts_err)
    # the pairwise scales of exact metric pointmaps come out ~1
    assert float((result.pw_scale.log()).abs().max()) < 0.01


def test_non_metric_normalisation_is_unchanged(metric_room: BoxRoomSequence) -> None:
    sc = metric_room
    cfg = AlignConfig(iterations=0, flow_weight=0.0)
    default = global_align(sc.edges, sc.pts_1, sc.pts_2, sc.conf_1, sc.conf_2, config=cfg, progress=False)
    explicit = global_align(
        sc.edges, sc.pts_1, sc.pts_2, sc.conf_1, sc.conf_2, config=cfg, metric=False, progress=False
    )
    torch.testing.assert_close(default.cam2world, explicit.cam2world, rtol=0, atol=0)
    # the official arbitrary scale: geometric mean of the pairwise scales = base_scale = 0.5, so the world is
    # about half the metric one
    assert abs(float(default.pw_scale.log().mean()) - math.log(0.5)) < 1e-5
    metric = global_align(sc.edges, sc.pts_1, sc.pts_2, sc.conf_1, sc.conf_2, config=cfg, metric=True, progress=False)
    ratio = default.cam2world[1:, :3, 3].norm(dim=-1) / metric.cam2world[1:, :3, 3].norm(dim=-1)
    torch.testing.assert_close(ratio, torch.full_like(ratio, 0.5), rtol=1e-4, atol=0)


def test_window_align_metric_keeps_metric_distances(metric_room: BoxRoomSequence) -> None:
    sc = metric_room
    source = InMemoryPointmaps(sc.pts_1, sc.pts_2, sc.conf_1, sc.conf_2)
    result = window_align(sc.edges, source, 6, window=4, overlap=0.5, config=CFG, metric=True, progress=False)
    cam_err, pts_err = _distance_errors(sc, result.cam2world, result.points)
    assert cam_err < 0.01 and pts_err < 0.01, (cam_err, pts_err)
