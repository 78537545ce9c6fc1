"""layout="official": the official Easi3R file names read back by readers written from the official code's facts;
the official GLB options (clean_depth, mask_sky, cam_size, meshes) on synthetic cases with known answers."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import trimesh
from helpers.reconstruction import make_reconstruction
from scipy.spatial.transform import Rotation

from easi3r.errors import Easi3RInputError
from easi3r.export.clean import clean_pointcloud, depths_to_world, segment_sky
from easi3r.export.save import glb_confidence
from easi3r.result import Reconstruction

T, H, W = 4, 32, 48


@pytest.fixture(scope="module")
def rec() -> Reconstruction:
    return make_reconstruction(T=T, H=H, W=W)


@pytest.fixture(scope="module")
def official(rec, tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    out = tmp_path_factory.mktemp("official")
    return out, rec.save(out, layout="official")


# --------------------------------------------------------------------------- readers from the official facts


def tum_to_4x4_wxyz(traj: np.ndarray) -> np.ndarray:
    """point_metric.py: ``np.loadtxt(pred_traj.txt)``, columns 1:4 = xyz, 4:8 = w x y z (``xyzw=False``)."""
    poses = np.tile(np.eye(4), (len(traj), 1, 1))
    wxyz = traj[:, 4:8]
    poses[:, :3, :3] = Rotation.from_quat(wxyz[:, [1, 2, 3, 0]]).as_matrix()
    poses[:, :3, 3] = traj[:, 1:4]
    return poses


def test_pred_traj_read_like_point_metric(rec, official):
    out, paths = official
    assert paths["pred_traj"] == out / "pred_traj.txt"
    traj = np.loadtxt(out / "pred_traj.txt")
    assert traj.shape == (T, 8)
    np.testing.assert_array_equal(traj[:, 0], np.arange(T, dtype=float))  # t = frame index as float
    np.testing.assert_allclose(tum_to_4x4_wxyz(traj), rec.cam2world, atol=1e-6)
    # evo's PoseTrajectory3D(positions_xyz=traj[:, :3], orientations_quat_wxyz=traj[:, 3:]) of get_tum_poses:
    # the same columns after the time column; scalar first, so NOT standard TUM (qx qy qz qw).
    as_tum = Rotation.from_quat(traj[:, 4:8]).as_matrix()  # misread as standard TUM (qx qy qz qw)
    assert not np.allclose(as_tum, rec.cam2world[:, :3, :3], atol=1e-3)
    # Format: "t x y z qw qx qy qz" with Python's str() of every float (t = "0.0", "1.0", ...).
    for t, line in enumerate((out / "pred_traj.txt").read_text().splitlines()):
        fields = line.split(" ")
        assert fields[0] == f"{float(t)}" and len(fields) == 8
        assert all(f == str(float(f)) for f in fields)


def test_intrinsics_focals_depths_conf_masks(rec, official):
    out, _ = official
    K = np.loadtxt(out / "pred_intrinsics.txt").reshape(-1, 3, 3)  # point_metric.py
    np.testing.assert_allclose(K, rec.intrinsics, atol=1e-6)
    assert re.fullmatch(r"(-?\d+\.\d{6} ){8}-?\d+\.\d{6}", (out / "pred_intrinsics.txt").read_text().splitlines()[0])
    np.testing.assert_allclose(np.loadtxt(out / "pred_focal.txt"), rec.focals, atol=1e-6)
    for t in range(T):
        depth = np.load(out / f"frame_{t:04d}.npy")
        assert depth.dtype == np.float32 and depth.shape == (H, W)
        np.testing.assert_array_equal(depth, rec.depths[t])
        conf = np.load(out / f"conf_{t}.npy")
        assert conf.dtype == np.float32 and conf.shape == (H, W)
        np.testing.assert_allclose(conf, np.log(rec.confidence[t]), rtol=1e-6)  # log confidence (conf_trf 'log')
        np.testing.assert_array_equal(np.load(out / f"init_conf_{t}.npy"), conf)  # nothing cleaned
        rgb = cv2.imread(str(out / f"frame_{t:04d}.png"), cv2.IMREAD_UNCHANGED)[..., ::-1]
        np.testing.assert_array_equal(rgb, rec.images[t])
    # mask_metric.py: dynamic_mask_[0-9]*.png sorted by the integer index, grey 0 / 255.
    files = sorted(out.glob("dynamic_mask_[0-9]*.png"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    assert [p.name for p in files] == [f"dynamic_mask_{t}.png" for t in range(T)]
    for t, p in enumerate(files):
        m = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert m.dtype == np.uint8 and m.shape == (H, W) and set(np.unique(m)) <= {0, 255}
        np.testing.assert_array_equal(m > 127, rec.masks[t])
    # Our own files are still there.
    assert (out / "trajectory.tum").is_file() and (out / "masks" / "00000.png").is_file()


def test_official_glb_uses_the_demo_transform(rec, official):
    out, _ = official
    scene = trimesh.load(out / "scene.glb")
    transform, geom = scene.graph["camera_00000"]
    apex = trimesh.transform_points(scene.geometry[geom].vertices[:1], transform)[0]
    np.testing.assert_allclose(apex, 0.0, atol=1e-5)  # the first camera at the origin
    # A point one unit in front of camera 0 lies on +z; a point "up" in its image (-y camera) lies on +y.
    tf = np.linalg.inv(rec.cam2world[0] @ np.diag([1.0, -1, -1, 1]) @ np.diag([-1.0, 1, -1, 1]))
    ahead = tf @ rec.cam2world[0] @ np.array([0.0, -1.0, 1.0, 1.0])
    np.testing.assert_allclose(ahead[:3], [0.0, 1.0, 1.0], atol=1e-9)
    node_tf, geom = scene.graph["points"]
    cloud = trimesh.transform_points(scene.geometry[geom].vertices, node_tf)
    conf = rec.confidence > rec.conf_threshold
    expected = rec.points[conf].astype(np.float64) @ tf[:3, :3].T + tf[:3, 3]
    np.testing.assert_allclose(cloud, expected, atol=1e-4)


def test_official_clean_conf_and_stale_frames(tmp_path):
    rec = make_reconstruction(T=4, H=H, W=W)
    rec.save(tmp_path, layout="official")
    images = make_reconstruction(T=2, H=H, W=W).images.copy()
    images[:, :12] = (135, 206, 235)  # a sky-blue band on top
    short = make_reconstruction(T=2, H=H, W=W, seed=5, images=images)
    short.save(tmp_path, layout="official", mask_sky=True)
    names = {p.name for p in tmp_path.iterdir() if p.is_file()}
    assert "frame_0001.npy" in names and "frame_0002.npy" not in names and "conf_2.npy" not in names
    assert "dynamic_mask_3.png" not in names and "init_conf_3.npy" not in names
    cleaned = glb_confidence(short, mask_sky=True)
    sky = cleaned == 0
    np.testing.assert_array_equal(sky[:, :12], True)
    assert not sky[:, 16:].any()
    conf = np.load(tmp_path / "conf_1.npy")
    assert np.isneginf(conf[sky[1]]).all()  # cleaned pixels: log(0)
    np.testing.assert_allclose(conf[~sky[1]], np.log(short.confidence[1][~sky[1]]), rtol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "init_conf_1.npy"), np.log(short.confidence[1]), rtol=1e-6)
    with pytest.raises(Easi3RInputError, match="layout"):
        short.save(tmp_path, layout="monst3r")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- clean_pointcloud


def _wall_case() -> tuple[torch.Tensor, ...]:
    """Two cameras looking at a wall z = 2; camera 1 is shifted 0.1 sideways. Frame 0 has two floaters at z = 1:
    a low-confidence one (1.5 < camera 1's 2.0) and a confident one (3.0)."""
    Hs, Ws = 12, 16
    K = torch.tensor([[20.0, 0, 7.5], [0, 20.0, 5.5], [0, 0, 1]], dtype=torch.float64).expand(2, 3, 3)
    c2w = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    c2w[1, 0, 3] = 0.1
    depths = torch.full((2, Hs, Ws), 2.0, dtype=torch.float64)
    conf = torch.full((2, Hs, Ws), 2.0, dtype=torch.float64)
    depths[0, 4:7, 4:7] = 1.0
    conf[0, 4:7, 4:7] = 1.5
    depths[0, 4:7, 9:12] = 1.0
    conf[0, 4:7, 9:12] = 3.0
    return conf, K, c2w, depths


def test_clean_pointcloud_zeroes_low_confidence_floaters():
    conf, K, c2w, depths = _wall_case()
    out = clean_pointcloud(conf, K, c2w, depths)
    expected = conf.clone()
    expected[0, 4:7, 4:7] = 0.0  # in front of camera 1's wall and less confident: bad
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(conf, _wall_case()[0])  # input untouched
    # With a tolerance larger than the floaters' margin (z = 1 vs 0.5 * 2), nothing is bad.
    torch.testing.assert_close(clean_pointcloud(conf, K, c2w, depths, tol=0.5), conf)
    # The margin is relative: a wall point 0.05 % in front of the other camera's depth is kept at tol=0.001.
    depths2 = depths.clone()
    depths2[0] = 2.0 * (1 - 0.0005)
    conf2 = torch.full_like(conf, 1.0)
    conf2[1] = 2.0
    torch.testing.assert_close(clean_pointcloud(conf2, K, c2w, depths2), conf2)
    with pytest.raises(Easi3RInputError):
        clean_pointcloud(conf, K, c2w, depths, tol=1.0)
    with pytest.raises(Easi3RInputError):
        clean_pointcloud(conf[:, :5], K, c2w, depths)


def test_clean_depth_and_meshes_in_the_glb(tmp_path):
    """The GLB keeps exactly the pixels above the threshold after cleaning; meshes use only valid quads."""
    conf, K, c2w, depths = _wall_case()
    Hs, Ws = depths.shape[1:]
    pts = depths_to_world(K, c2w, depths).numpy().astype(np.float32)
    rec = make_reconstruction(
        T=2, H=Hs, W=Ws, h=3, w=4, cam2world=c2w.numpy(), intrinsics=K.numpy(), depths=depths.numpy(),
        points=pts, confidence=conf.numpy(), conf_threshold=1.1,
    )  # fmt: skip
    glb = rec.write_glb(tmp_path / "clean.glb", clean_depth=True, cam_size=0.2)
    cloud = next(g for g in trimesh.load(glb).geometry.values() if isinstance(g, trimesh.PointCloud))
    assert len(cloud.vertices) == 2 * Hs * Ws - 9
    scene = trimesh.load(rec.write_glb(tmp_path / "mesh.glb", as_pointcloud=False, cam_size=0.2))
    meshes = {k: g for k, g in scene.geometry.items() if k.startswith("mesh_")}
    assert sorted(meshes) == ["mesh_00000", "mesh_00001"]
    # All pixels valid: (H-1)(W-1) quads x 2 triangles x 2 windings; the vertices are the frame's points.
    assert len(meshes["mesh_00000"].faces) == 4 * (Hs - 1) * (Ws - 1)
    np.testing.assert_allclose(np.sort(meshes["mesh_00001"].vertices, 0), np.sort(pts[1].reshape(-1, 3), 0), atol=1e-6)
    # clean_depth + mesh: the 16 quads touching the 3x3 floater lose their 32 triangles, except the two corner
    # triangles that miss it (top-left of quad (3, 3), bottom-right of quad (6, 6)); 2 windings each.
    scene = trimesh.load(rec.write_glb(tmp_path / "m2.glb", as_pointcloud=False, clean_depth=True))
    faces = len(next(g for k, g in scene.geometry.items() if k == "mesh_00000").faces)
    assert faces == 4 * (Hs - 1) * (Ws - 1) - 2 * (32 - 2)
    # cam_size: the frustum base is cam_size high (depth = f * cam_size / H, base height = H * depth / f).
    scene = trimesh.load(tmp_path / "mesh.glb")
    tf, geom = scene.graph["camera_00001"]
    v = trimesh.transform_points(scene.geometry[geom].vertices[:5], tf)
    assert np.linalg.norm(v[4] - v[1]) == pytest.approx(0.2, rel=1e-6)  # float32 in the GLB


# --------------------------------------------------------------------------- segment_sky


def test_segment_sky_synthetic():
    """Sky-blue top band, brown ground with a small sky-blue patch (a smaller component, dropped) and a 3x3 dot
    (removed by the 5x5 opening)."""
    img = np.zeros((40, 60, 3), np.uint8)
    img[:] = (100, 70, 40)  # brown ground
    img[:15] = (135, 206, 235)  # sky blue (RGB)
    img[25:31, 5:11] = (135, 206, 235)  # 36 px < half of the sky's 900 px
    img[33:36, 40:43] = (135, 206, 235)  # 3x3 dot
    expected = np.zeros((40, 60), bool)
    expected[:15] = True
    np.testing.assert_array_equal(segment_sky(img), expected)
    # Overcast: bright low-saturation grey counts as sky too.
    img[:15] = (235, 235, 240)
    np.testing.assert_array_equal(segment_sky(img), expected)
    # No candidate at all: empty mask.
    assert not segment_sky(np.full((20, 20, 3), (100, 70, 40), np.uint8)).any()
    with pytest.raises(Easi3RInputError):
        segment_sky(np.zeros((4, 4), np.uint8))
