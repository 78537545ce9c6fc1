"""ATE / RTE / RRE with Sim(3) alignment: exact invariance, analytic error cases, degenerate inputs, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from easi3r.errors import Easi3RInputError
from easi3r.eval import align_trajectory, pose_metrics, umeyama_sim3
from easi3r.eval.cli import main
from easi3r.export import write_tum


def _trajectory(n: int, seed: int = 0) -> np.ndarray:
    """A non-degenerate camera path: random orientations, centres on a noisy helix."""
    rng = np.random.default_rng(seed)
    a = np.linspace(0.0, 3.0, n)
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, :3, :3] = Rotation.random(n, random_state=seed).as_matrix()
    poses[:, :3, 3] = np.stack([np.cos(a), np.sin(a), 0.3 * a], axis=1) + 0.05 * rng.normal(size=(n, 3))
    return poses


def _similarity(pose: np.ndarray, s: float, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    out = pose.copy()
    out[:, :3, :3] = R @ pose[:, :3, :3]
    out[:, :3, 3] = s * pose[:, :3, 3] @ R.T + t
    return out


def test_similarity_transformed_trajectory_scores_zero(device):
    gt = _trajectory(20)
    R = Rotation.from_rotvec([0.3, -1.1, 0.7]).as_matrix()
    t = np.array([4.0, -2.0, 0.5])
    s = 3.7
    # pred = S^-1 * gt, i.e. gt = S * pred: the alignment must find s, R, t exactly.
    pred = _similarity(gt, 1.0 / s, R.T, -(R.T @ t) / s)

    s_hat, R_hat, t_hat = umeyama_sim3(pred[:, :3, 3], gt[:, :3, 3])
    assert s_hat == pytest.approx(s, abs=1e-12)
    np.testing.assert_allclose(R_hat, R, atol=1e-12)
    np.testing.assert_allclose(t_hat, t, atol=1e-12)
    np.testing.assert_allclose(align_trajectory(pred, gt), gt, atol=1e-12)

    m = pose_metrics(torch.from_numpy(pred).to(device), torch.from_numpy(gt).to(device))
    assert m.ate < 1e-9 and m.rte < 1e-9 and m.rre_deg < 1e-9
    assert m.scale == pytest.approx(s, abs=1e-12)


def test_rotation_error_of_one_frame():
    """Rotating camera k about its own centre leaves the alignment (positions only) untouched.

    With D = rot(theta) applied on the right of P_k, the two relative errors touching frame k are
    E_{k-1} = D and E_k = A^-1 D^-1 A with A = Q_k^-1 Q_{k+1}; both have angle theta, all others are I.
    So RRE = theta * sqrt(2 / (T - 1)); RTE comes only from E_k: ||(R_D^T - I) t_A|| / sqrt(T - 1).
    """
    n, k, theta = 11, 5, np.deg2rad(7.0)
    gt = _trajectory(n, seed=3)
    D = Rotation.from_rotvec(theta * np.array([1.0, 2.0, -2.0]) / 3.0).as_matrix()
    pred = gt.copy()
    pred[k, :3, :3] = gt[k, :3, :3] @ D
    m = pose_metrics(pred, gt)
    assert m.scale == pytest.approx(1.0, abs=1e-12)
    assert m.ate < 1e-12
    assert m.rre_deg == pytest.approx(np.rad2deg(theta) * np.sqrt(2.0 / (n - 1)), abs=1e-9)
    t_a = (np.linalg.inv(gt[k]) @ gt[k + 1])[:3, 3]
    assert m.rte == pytest.approx(np.linalg.norm((D.T - np.eye(3)) @ t_a) / np.sqrt(n - 1), abs=1e-9)


def test_translation_noise_gives_analytic_ate():
    """Alternating +-delta offsets along z on a regular polygon in the z = 0 plane.

    Centred GT positions g_i (radius r) and noise n_i = (-1)^i delta e_z have zero mean and
    sum_i g_i (-1)^i = 0 for an even number of vertices, so the cross-covariance is that of the GT alone:
    R = I, t keeps the centroid, and the Umeyama scale is s = r^2 / (r^2 + delta^2) (the noise inflates the
    source variance). Residual e_i = (s - 1) g_i + s n_i, whose components are orthogonal, hence
    ATE^2 = (1 - s)^2 r^2 + s^2 delta^2 = delta^2 r^2 / (r^2 + delta^2).
    """
    n, r, delta = 8, 2.0, 0.3
    ang = 2 * np.pi * np.arange(n) / n
    gt = np.tile(np.eye(4), (n, 1, 1))
    gt[:, :3, :3] = Rotation.random(n, random_state=7).as_matrix()
    gt[:, :3, 3] = np.stack([r * np.cos(ang) + 1.0, r * np.sin(ang) - 4.0, np.full(n, 2.5)], axis=1)
    pred = gt.copy()
    pred[:, 2, 3] += delta * (-1.0) ** np.arange(n)
    m = pose_metrics(pred, gt)
    assert m.scale == pytest.approx(r**2 / (r**2 + delta**2), abs=1e-12)
    assert m.ate == pytest.approx(delta * r / np.sqrt(r**2 + delta**2), abs=1e-9)
    assert m.rre_deg < 1e-9  # the fitted rotation is exactly the identity


def test_metrics_ignore_the_ground_truth_world_frame():
    gt = _trajectory(15, seed=1)
    pred = gt.copy()
    pred[:, :3, 3] += 0.02 * np.random.default_rng(0).normal(size=(15, 3))
    pred[3, :3, :3] = pred[3, :3, :3] @ Rotation.from_rotvec([0.0, 0.05, 0.0]).as_matrix()
    a = pose_metrics(pred, gt)
    rigid = Rotation.from_rotvec([1.0, 0.2, -0.4]).as_matrix()
    moved = _similarity(gt, 1.0, rigid, np.array([9.0, 1.0, -3.0]))
    b = pose_metrics(pred, moved)
    np.testing.assert_allclose([b.ate, b.rte, b.rre_deg], [a.ate, a.rte, a.rre_deg], rtol=1e-9)
    assert a.ate > 0.005 and a.rre_deg > 1.0


def test_degenerate_inputs_raise():
    gt = _trajectory(6)
    with pytest.raises(Easi3RInputError, match="same number"):
        pose_metrics(gt[:5], gt)
    with pytest.raises(Easi3RInputError, match="at least 3"):
        pose_metrics(gt[:2], gt[:2])
    same = gt.copy()
    same[:, :3, 3] = [1.0, 2.0, 3.0]
    with pytest.raises(Easi3RInputError, match="all src positions are equal"):
        pose_metrics(same, gt)
    line = gt.copy()
    line[:, :3, 3] = np.outer(np.arange(6.0), [1.0, 2.0, 0.5])
    with pytest.raises(Easi3RInputError, match="collinear"):
        pose_metrics(line, gt)
    with pytest.raises(Easi3RInputError, match="collinear"):
        pose_metrics(gt, line)
    nan = gt.copy()
    nan[2, 0, 3] = np.nan
    with pytest.raises(Easi3RInputError, match="must be finite"):
        pose_metrics(nan, gt)
    with pytest.raises(Easi3RInputError, match=r"\(T, 4, 4\)"):
        pose_metrics(gt[:, :3], gt[:, :3])
    with pytest.raises(Easi3RInputError, match=r"\(N, 3\)"):
        umeyama_sim3(np.zeros((5, 2)), np.zeros((5, 2)))


def test_cli_poses(tmp_path, capsys):
    gt = _trajectory(12, seed=5)
    D = Rotation.from_rotvec([0.0, 0.0, np.deg2rad(4.0)]).as_matrix()
    pred = _similarity(gt, 0.25, np.eye(3), np.array([1.0, 2.0, 3.0]))
    pred[6, :3, :3] = pred[6, :3, :3] @ D
    write_tum(tmp_path / "gt.tum", gt)
    # The estimate in the official scalar-first layout, as Easi3R writes pred_traj.txt.
    q = Rotation.from_matrix(pred[:, :3, :3]).as_quat(scalar_first=True)
    rows = np.concatenate([np.arange(12.0)[:, None], pred[:, :3, 3], q], axis=1)
    np.savetxt(tmp_path / "pred_traj.txt", rows, fmt="%.12f")

    out_json = tmp_path / "poses.json"
    argv = ["poses", "--pred", str(tmp_path / "pred_traj.txt"), "--gt", str(tmp_path / "gt.tum")]
    assert main([*argv, "--pred-scalar-first", "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    expected_rre = 4.0 * np.sqrt(2.0 / 11)
    assert "ATE" in printed and f"{expected_rre:.6f}" in printed
    data = json.loads(out_json.read_text())
    assert data["n_poses"] == 12
    assert data["ate"] < 1e-6 and data["rre_deg"] == pytest.approx(expected_rre, abs=1e-6)
    assert data["scale"] == pytest.approx(4.0, abs=1e-6)

    # Without the flag the quaternions are misread: a clearly different (wrong) rotation error.
    assert main(argv) == 0
    assert f"{expected_rre:.6f}" not in capsys.readouterr().out

    write_tum(tmp_path / "short.tum", gt[:5])
    assert main(["poses", "--pred", str(tmp_path / "short.tum"), "--gt", str(tmp_path / "gt.tum")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "5 poses" in err and "Traceback" not in err


def test_huge_coordinates_are_a_typed_error_or_exact() -> None:
    """Values near the float64 limit never escape as a raw LinAlgError (hardening: `eval poses` on 1e308)."""
    rng = np.random.default_rng(0)
    src = rng.normal(size=(8, 3))
    R = Rotation.from_rotvec([0.3, -0.2, 0.5]).as_matrix()
    for factor in (1e300, 1e-300):
        s, R_fit, t = umeyama_sim3(src, factor * (src @ R.T) + factor)
        assert abs(s / factor - 1) < 1e-9 and np.allclose(R_fit, R, atol=1e-9)
        assert np.allclose(t / factor, 1.0, atol=1e-9)
    huge = src.copy()
    huge[::2, 0] = 1e308
    with pytest.raises(Easi3RInputError, match="degenerate"):
        umeyama_sim3(huge, src)
