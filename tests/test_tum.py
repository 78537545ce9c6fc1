"""TUM trajectory writer/reader: round trip, official scalar-first files, errors, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from easi3r.errors import Easi3RInputError
from easi3r.export import read_tum, write_tum


def _random_poses(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, :3, :3] = Rotation.random(n, random_state=seed).as_matrix()
    poses[:, :3, 3] = rng.normal(scale=3.0, size=(n, 3))
    return poses


def test_round_trip_poses_and_timestamps(tmp_path):
    poses = _random_poses(25)
    stamps = 1305031102.175304 + 0.033 * np.arange(25)
    path = write_tum(tmp_path / "traj.tum", poses, stamps)
    assert path == tmp_path / "traj.tum"
    ts, back = read_tum(path)
    assert back.dtype == np.float64 and back.shape == (25, 4, 4)
    np.testing.assert_allclose(back, poses, atol=1e-7)
    np.testing.assert_allclose(ts, stamps, atol=1e-6)

    lines = path.read_text().splitlines()
    assert lines[0].startswith("#") and len(lines) == 26
    rows = np.array([[float(v) for v in line.split()] for line in lines[1:]])
    # True TUM: translation columns 1-3, quaternion x y z w with w last (and made non-negative).
    np.testing.assert_allclose(rows[:, 1:4], poses[:, :3, 3], atol=1e-8)
    assert (rows[:, 7] >= 0).all()
    expect_q = Rotation.from_matrix(poses[:, :3, :3]).as_quat()
    expect_q *= np.sign(expect_q[:, 3:4])
    np.testing.assert_allclose(rows[:, 4:], expect_q, atol=1e-8)


def test_default_timestamps_are_frame_indices(tmp_path):
    ts, _ = read_tum(write_tum(tmp_path / "t.txt", _random_poses(4)))
    np.testing.assert_array_equal(ts, [0.0, 1.0, 2.0, 3.0])


def test_official_scalar_first_file(tmp_path):
    # 90 degrees about z: (qw, qx, qy, qz) = (cos 45, 0, 0, sin 45); written unnormalised (x2) on purpose.
    c = np.cos(np.pi / 4)
    path = tmp_path / "pred_traj.txt"
    path.write_text(f"0 1.5 -2 3 {2 * c} 0 0 {2 * c}\n1 0 0 0 1 0 0 0\n")
    ts, poses = read_tum(path, scalar_first=True)
    np.testing.assert_array_equal(ts, [0.0, 1.0])
    rz90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(poses[0, :3, :3], rz90, atol=1e-12)
    np.testing.assert_allclose(poses[0, :3, 3], [1.5, -2.0, 3.0])
    np.testing.assert_allclose(poses[1], np.eye(4), atol=1e-12)
    np.testing.assert_array_equal(poses[:, 3], [[0, 0, 0, 1]] * 2)
    # Read as standard TUM the same numbers mean another rotation (qw taken as qx): the flag matters.
    _, wrong = read_tum(path)
    assert np.abs(wrong[0, :3, :3] - rz90).max() > 0.5


def test_comments_blank_lines_and_commas(tmp_path):
    path = tmp_path / "gt.txt"
    path.write_text("# ground truth\n\n  # indented comment\n0.5,1,2,3,0,0,0,1\n0.6 1 2 3.5 0 0 0 1\n")
    ts, poses = read_tum(path)
    np.testing.assert_array_equal(ts, [0.5, 0.6])
    np.testing.assert_array_equal(poses[:, :3, 3], [[1, 2, 3], [1, 2, 3.5]])


@pytest.mark.parametrize(
    "bad_line",
    ["1 2 3 4 5 6 7", "1 2 3 4 5 6 7 8 9", "1 2 x 4 0 0 0 1", "0 0 0 0 0 0 0 0", "0 1 2 nan 0 0 0 1"],
)
def test_malformed_line_names_file_and_line(tmp_path, bad_line):
    path = tmp_path / "broken.txt"
    path.write_text(f"# header\n0 0 0 0 0 0 0 1\n{bad_line}\n")
    with pytest.raises(Easi3RInputError, match=r"broken\.txt:3"):
        read_tum(path)


def test_read_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(Easi3RInputError, match="no pose"):
        read_tum(empty)
    with pytest.raises(Easi3RInputError, match="cannot read"):
        read_tum(tmp_path / "missing.txt")


def test_write_rejects_bad_poses_and_leaves_existing_file(tmp_path):
    path = write_tum(tmp_path / "traj.tum", _random_poses(3))
    before = path.read_text()
    scaled = _random_poses(3)
    scaled[1, :3, :3] *= 2.0
    with pytest.raises(Easi3RInputError, match=r"cam2world\[1\]"):
        write_tum(path, scaled)
    with pytest.raises(Easi3RInputError, match=r"\(T, 4, 4\)"):
        write_tum(path, np.eye(4))
    with pytest.raises(Easi3RInputError, match="timestamps"):
        write_tum(path, _random_poses(3), np.arange(2.0))
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["traj.tum"]  # no temporary leftovers


def test_overwrite_is_complete(tmp_path):
    path = tmp_path / "traj.tum"
    write_tum(path, _random_poses(10, seed=1))
    write_tum(path, _random_poses(2, seed=2))
    _, poses = read_tum(path)
    np.testing.assert_allclose(poses, _random_poses(2, seed=2), atol=1e-7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["traj.tum"]
