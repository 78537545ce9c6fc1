"""4D point metrics: accuracy / completeness / distance, unprojection and the DyCheck protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from easi3r.errors import Easi3RInputError
from easi3r.eval import accuracy_completeness, distance, dycheck_point_metrics, point_metrics, unproject_depth


def _grid(spacing: float = 1.0, n: int = 6) -> np.ndarray:
    ax = spacing * np.arange(n, dtype=np.float64)
    return np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), axis=-1).reshape(-1, 3)


def test_known_offset(device):
    # Spacing 1 >> d: every point's nearest neighbour in the other cloud is its own correspondent.
    d = 0.05
    pred = _grid()
    gt = pred + np.array([0.0, 0.0, d])
    m = point_metrics(torch.from_numpy(pred).to(device), torch.from_numpy(gt).to(device))
    for key in ("accuracy", "completeness", "distance", "accuracy_median", "completeness_median"):
        assert m[key] == pytest.approx(d, abs=1e-12), key
    assert accuracy_completeness(pred, gt) == pytest.approx((d, d), abs=1e-12)
    assert distance(pred, gt, reduction="median") == pytest.approx(d, abs=1e-12)


def test_hand_computed_asymmetric_clouds():
    pred = np.array([[0.0, 0.0, 0.0]])
    gt = np.array([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
    acc, comp = accuracy_completeness(pred, gt)
    assert acc == 0.0 and comp == pytest.approx(2.5)  # gt point (3, 4, 0) is 5 away from the only pred
    assert accuracy_completeness(pred, gt, reduction="median") == pytest.approx((0.0, 2.5))
    m = point_metrics(pred, gt, corresponding=False)
    assert "distance" not in m and m["completeness"] == pytest.approx(2.5)
    with pytest.raises(Easi3RInputError, match="differ in size"):
        distance(pred, gt)
    with pytest.raises(Easi3RInputError, match="no point"):
        accuracy_completeness(np.zeros((0, 3)), gt)
    with pytest.raises(Easi3RInputError, match="must be finite"):
        accuracy_completeness(np.array([[np.nan, 0.0, 0.0]]), gt)
    with pytest.raises(Easi3RInputError, match="reduction"):
        accuracy_completeness(pred, gt, reduction="max")


def test_unproject_depth_hand_computed():
    K = np.array([[100.0, 0.0, 2.0], [0.0, 50.0, 1.0], [0.0, 0.0, 1.0]])
    c2w = np.eye(4)
    c2w[:3, :3] = Rotation.from_rotvec([0.0, 0.0, np.pi / 2]).as_matrix()
    c2w[:3, 3] = [10.0, 20.0, 30.0]
    depth = np.zeros((3, 4))
    depth[2, 3] = 2.0  # pixel (u=3, v=2)
    pts = unproject_depth(depth, K, c2w, depth > 0)
    cam = np.array([(3 - 2) * 2 / 100, (2 - 1) * 2 / 50, 2.0])  # (0.02, 0.04, 2)
    expected = np.array([-cam[1], cam[0], cam[2]]) + [10.0, 20.0, 30.0]  # rot z 90: (x, y) -> (-y, x)
    np.testing.assert_allclose(pts, expected[None], atol=1e-12)
    assert unproject_depth(depth, K, c2w).shape == (12, 3)
    with pytest.raises(Easi3RInputError, match="mask"):
        unproject_depth(depth, K, c2w, np.ones((4, 3), bool))


def _scene(t: int, h: int, w: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    depth = rng.uniform(1.0, 3.0, size=(t, h, w))
    K = np.tile(np.array([[20.0, 0.0, w / 2], [0.0, 20.0, h / 2], [0.0, 0.0, 1.0]]), (t, 1, 1))
    c2w = np.tile(np.eye(4), (t, 1, 1))
    c2w[:, :3, :3] = Rotation.random(t, random_state=seed).as_matrix()
    c2w[:, :3, 3] = rng.normal(size=(t, 3))
    return depth, K, c2w


def _similarity(pose, s, R, t):
    out = pose.copy()
    out[:, :3, :3] = R @ pose[:, :3, :3]
    out[:, :3, 3] = s * pose[:, :3, 3] @ R.T + t
    return out


def test_dycheck_protocol_recovers_a_similarity_exactly():
    depth, K, gt_c2w = _scene(4, 6, 8)
    depth[1, 2, 3] = 0.0  # an invalid GT pixel is skipped in both clouds
    s, R, t = 0.4, Rotation.from_rotvec([0.2, 0.9, -0.3]).as_matrix(), np.array([1.0, -2.0, 0.5])
    pred_c2w = _similarity(gt_c2w, s, R, t)  # prediction lives in another frame, at scale s
    m = dycheck_point_metrics(depth * s, K, pred_c2w, depth, K, gt_c2w)
    assert m["scale"] == pytest.approx(1 / s, abs=1e-12)
    assert m["n_points"] == 4 * 6 * 8 - 1
    for key in ("accuracy", "completeness", "distance"):
        assert m[key] < 1e-12, key

    # A known depth error on one frame: corresponding distance = mean over points of |dz| * ||ray||.
    bad = depth * s
    bad[0] *= 1.1
    m = dycheck_point_metrics(bad, K, pred_c2w, depth, K, gt_c2w)
    valid = depth > 0
    v, u = np.mgrid[0:6, 0:8]
    ray = np.sqrt(((u - K[0, 0, 2]) / K[0, 0, 0]) ** 2 + ((v - K[0, 1, 2]) / K[0, 1, 1]) ** 2 + 1.0)
    expected = (0.1 * depth[0] * ray)[valid[0]].sum() / valid.sum()
    assert m["distance"] == pytest.approx(expected, rel=1e-9)


def test_dycheck_rescales_gt_depth_and_intrinsics():
    # GT at twice the prediction's resolution; a constant depth survives bicubic resizing unchanged, and the
    # GT intrinsics must be halved to describe the same rays as the prediction's intrinsics.
    depth, K, c2w = _scene(3, 6, 8, seed=2)
    depth[:] = 2.0
    K_gt = K.copy()
    K_gt[:, :2] *= 2.0
    m = dycheck_point_metrics(depth, K, c2w, np.full((3, 12, 16), 2.0), K_gt, c2w)
    assert m["distance"] < 1e-12 and m["scale"] == pytest.approx(1.0)
    with pytest.raises(Easi3RInputError, match="no valid"):
        dycheck_point_metrics(depth, K, c2w, np.zeros((3, 6, 8)), K, c2w)
