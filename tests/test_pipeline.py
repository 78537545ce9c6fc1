"""End to end on the official fixture: ``Easi3R(<tiny checkpoint>).run(<fixture frames>)`` against ``pipeline.npz``.

The run itself happens once per session (``fixture_run`` in conftest.py).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import roma
import torch

from easi3r import Easi3R, Easi3RConfig, Easi3RInputError, Reconstruction
from easi3r.attention import AttentionAccumulator, dynamic_map, fuse_attention
from easi3r.demo import demo_backbone, render_video
from easi3r.export.tum import read_tum
from easi3r.frames import load_frames

MAPS = {
    "src_mean": "cross_att_k_i_mean_fused",
    "src_std": "cross_att_k_i_var_fused",
    "ref_mean": "cross_att_k_j_mean_fused",
    "ref_std": "cross_att_k_j_var_fused",
}


def _relabel_bijective(a: np.ndarray, b: np.ndarray) -> bool:
    """True when labels ``a`` and ``b`` are the same partition (equal up to renaming the clusters)."""
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist()))
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


@pytest.mark.parametrize("which", [1, 2])
def test_segmentation_matches_official(fixture_run, pipeline_npz, which):
    _, trace = fixture_run
    seg = trace.segmentation1 if which == 1 else trace.segmentation2
    ref = {
        k: pipeline_npz[f"p{which}_{k}"]
        for k in (
            "dynamic_map",
            "refined_dynamic_map",
            "dynamic_map_labels",
            "otsu_threshold",
            "otsu_n_classes",
            "dynamic_masks",
        )
    }
    for ours, theirs in MAPS.items():
        np.testing.assert_allclose(getattr(seg.fused, ours).numpy(), pipeline_npz[f"p{which}_{theirs}"], atol=1e-4)
    np.testing.assert_allclose(seg.dynamic_map.numpy(), ref["dynamic_map"], atol=1e-4)
    np.testing.assert_allclose(seg.refined.numpy(), ref["refined_dynamic_map"], atol=1e-4)
    assert _relabel_bijective(seg.labels.numpy(), ref["dynamic_map_labels"])
    assert seg.threshold.threshold == pytest.approx(float(ref["otsu_threshold"]), abs=1e-4)
    assert seg.threshold.n_classes == int(ref["otsu_n_classes"])
    masks = seg.masks.numpy()
    assert masks.shape == (6, 384, 512)
    for t in range(6):  # IoU = 1 on every frame
        assert np.array_equal(masks[t], ref["dynamic_masks"][t].astype(bool)), f"frame {t}"


def test_pass2_pointmaps_match_official(fixture_run, pipeline_npz):
    _, trace = fixture_run
    pm = trace.pass2.pointmaps
    assert torch.equal(pm.edges, torch.from_numpy(pipeline_npz["pairs"]).long())
    rows, cols = pipeline_npz["pair_grid_rows"], pipeline_npz["pair_grid_cols"]

    def grid(x):
        return x.numpy()[:, rows][:, :, cols]

    np.testing.assert_allclose(grid(pm.pts_1), pipeline_npz["p2_pts3d"], atol=1e-4)
    np.testing.assert_allclose(grid(pm.pts_2), pipeline_npz["p2_pts3d_in_other_view"], atol=1e-4)
    np.testing.assert_allclose(grid(pm.conf_1), pipeline_npz["p2_conf"], rtol=1e-4)
    np.testing.assert_allclose(grid(pm.conf_2), pipeline_npz["p2_conf2"], rtol=1e-4)
    flat = pm.pts_1.reshape(18, -1).double()
    np.testing.assert_allclose(flat.mean(1).numpy(), pipeline_npz["p2_pts3d_stats"][:, 0], atol=1e-5)


def test_pair_order_changes_maps_by_less_than_1e6(fixture_run, pipeline_npz):
    """The official order matters only for float summation: a reversed order moves the maps by < 1e-6."""
    _, trace = fixture_run
    maps1, maps2 = trace.pass1.pair_maps
    edges = trace.edges
    acc = AttentionAccumulator(6, (24, 32), 144)
    for k in reversed(range(len(edges))):
        acc.add(edges[k : k + 1], maps1[k : k + 1], maps2[k : k + 1])
    reversed_dyn = dynamic_map(fuse_attention(acc.stats()))
    assert (reversed_dyn - trace.segmentation1.dynamic_map).abs().max() < 1e-6


def test_reconstruction_fields(fixture_run, preprocess_npz):
    rec, trace = fixture_run
    assert isinstance(rec, Reconstruction)
    T, H, W, h, w = 6, 384, 512, 24, 32
    expected = {
        "images": ((T, H, W, 3), np.uint8),
        "masks": ((T, H, W), np.bool_),
        "dynamic_maps": ((T, h, w), np.float32),
        "cam2world": ((T, 4, 4), np.float64),
        "intrinsics": ((T, 3, 3), np.float64),
        "depths": ((T, H, W), np.float32),
        "points": ((T, H, W, 3), np.float32),
        "confidence": ((T, H, W), np.float32),
    }
    for name, (shape, dtype) in expected.items():
        value = getattr(rec, name)
        assert value.shape == shape and value.dtype == dtype, name
        if value.dtype != np.bool_:  # (a bool array is finite by construction)
            assert np.isfinite(value).all(), name
    assert set(rec.attention) == {"src_mean", "src_std", "ref_mean", "ref_std"}
    assert all(v.shape == (T, h, w) for v in rec.attention.values())
    # The masks are the segmentation's final (pass-2) masks.
    assert np.array_equal(rec.masks, trace.segmentation2.masks.numpy())
    # The processed frames are the official loader's (its tensors are exactly (u8 / 255 - 0.5) / 0.5).
    official_rgb = np.round((preprocess_npz["img"] * 0.5 + 0.5) * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(rec.images, official_rgb)
    # Cameras: proper rotations; intrinsics: shared focal, centred principal point.
    R = torch.from_numpy(rec.cam2world[:, :3, :3])
    assert roma.is_rotation_matrix(R, epsilon=1e-4)
    assert np.allclose(rec.intrinsics[:, 0, 0], rec.intrinsics[0, 0, 0])
    assert np.allclose(rec.intrinsics[:, :2, 2], [W / 2, H / 2])
    assert (rec.depths > 0).all() and (rec.confidence >= 1).all()
    # World points are the depth maps unprojected with K and moved by cam2world.
    t = 3
    K = rec.intrinsics[t]
    v, u = 100, 200
    cam = np.array([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], 1.0]) * rec.depths[t, v, u]
    world = rec.cam2world[t, :3, :3] @ cam + rec.cam2world[t, :3, 3]
    np.testing.assert_allclose(rec.points[t, v, u], world, rtol=1e-4, atol=1e-5)


def test_save_writes_every_documented_file(fixture_run, tmp_path):
    import trimesh

    rec, _ = fixture_run
    written = rec.save(tmp_path)
    for rel in (
        [
            "trajectory.tum",
            "intrinsics.txt",
            "depths.npz",
            "confidence.npz",
            "reconstruction.npz",
            "dynamic_maps.npz",
            "scene.ply",
            "scene.glb",
            "colmap/cameras.txt",
            "colmap/images.txt",
            "colmap/points3D.txt",
        ]
        + [f"masks/{t:05d}.png" for t in range(6)]
        + [f"attention/{t:05d}.png" for t in range(6)]
    ):
        assert (tmp_path / rel).is_file(), rel
    assert all(p.exists() for p in written.values())
    _, poses = read_tum(tmp_path / "trajectory.tum")
    np.testing.assert_allclose(poses, rec.cam2world, atol=1e-6)
    ply = trimesh.load(tmp_path / "scene.ply")
    assert len(ply.vertices) == int((rec.confidence > rec.conf_threshold).sum())
    glb = trimesh.load(tmp_path / "scene.glb")
    assert len(glb.geometry) >= 1 + rec.num_frames
    # COLMAP: world-to-camera poses, scalar-first quaternions.
    lines = [ln for ln in (tmp_path / "colmap/images.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert len(lines) == rec.num_frames  # the empty 2D-points lines are filtered out above
    for t, line in enumerate(lines):
        q = np.array(line.split()[1:5], dtype=float)
        tr = np.array(line.split()[5:8], dtype=float)
        R = roma.unitquat_to_rotmat(torch.tensor([q[1], q[2], q[3], q[0]])).numpy()
        w2c = np.linalg.inv(rec.cam2world[t])
        np.testing.assert_allclose(R, w2c[:3, :3], atol=1e-6)
        np.testing.assert_allclose(tr, w2c[:3, 3], atol=1e-6)


# -- edge cases on a small random network (fast) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def small_video():
    video = render_video(4, 64, 48)
    frames = load_frames(video.frames, image_size=64)
    return frames, demo_backbone(frames.images)


def test_one_frame_is_a_typed_error(small_video):
    frames, net = small_video
    with pytest.raises(Easi3RInputError, match="at least 2 frames"):
        Easi3R(backbone=net, device="cpu", image_size=64).run(frames.rgb[:1], progress=False)


def test_two_frames_give_zero_std_warning_and_no_nan(small_video):
    frames, net = small_video
    with pytest.warns(UserWarning, match="std"):
        rec = Easi3R(backbone=net, device="cpu", image_size=64, iterations=3).run(frames.rgb[:2], progress=False)
    assert np.isfinite(rec.dynamic_maps).all()
    for v in rec.attention.values():
        assert np.isfinite(v).all()


def test_constant_attention_gives_empty_masks_without_warnings(small_video, monkeypatch):
    frames, net = small_video
    import easi3r.pipeline as pipeline
    import easi3r.segment as segment

    def constant(fused):
        return torch.zeros_like(fused.src_mean)

    monkeypatch.setattr(segment, "dynamic_map", constant)
    trace = pipeline.Trace()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        # The alignment's documented fallbacks on this random network's geometry are not what this test is about.
        warnings.filterwarnings("ignore", message="degenerate focal estimate", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=".*PnP", category=RuntimeWarning)
        rec = Easi3R(backbone=net, device="cpu", image_size=64, iterations=2).run(frames, progress=False, trace=trace)
    assert trace.segmentation1 is not None and not trace.segmentation1.dynamic_map.any()  # the patched map was used
    assert not rec.masks.any()
    assert np.isfinite(rec.dynamic_maps).all()


def test_mask_refiner_hook(small_video):
    frames, net = small_video
    seen = []

    def refiner(images, masks):
        seen.append(images.shape)
        out = masks.copy()
        out[:, :8, :8] = True
        return out

    rec = Easi3R(backbone=net, device="cpu", image_size=64, iterations=2, mask_refiner=refiner).run(
        frames, progress=False
    )
    assert len(seen) == 2  # applied after each pass
    assert rec.masks[:, :8, :8].all()


def test_unknown_override_is_a_type_error(small_video):
    _, net = small_video
    with pytest.raises(TypeError, match="no_such_knob"):
        Easi3R(backbone=net, device="cpu", no_such_knob=3)
    cfg = Easi3R(backbone=net, device="cpu", iterations=7, window=3).config
    assert cfg.align.iterations == 7 and cfg.window == 3
    assert Easi3RConfig().graph_name == "swinstride-5-noncyclic"
