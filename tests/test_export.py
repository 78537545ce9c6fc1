"""Reconstruction.save and the exporters: every file, read back and checked; atomicity under failures."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import roma
import torch
import trimesh
from helpers.reconstruction import make_reconstruction
from matplotlib import colormaps
from scipy.spatial import cKDTree

from easi3r.export import atomic as atomic_mod
from easi3r.export.atomic import atomic_path, atomic_save_npz, atomic_write_text, is_temp_name
from easi3r.export.images import ATTENTION_PANELS, attention_strip, colorize, label_box, upsample_nearest
from easi3r.export.mesh import write_ply
from easi3r.export.tum import read_tum
from easi3r.result import ATTENTION_KEYS, Reconstruction

T, H, W, h, w = 4, 32, 48, 2, 3
EXPECTED_KEYS = {
    "images", "masks", "attention", "dynamic_maps", "trajectory", "intrinsics", "depths", "confidence",
    "reconstruction", "ply", "glb", "colmap_cameras", "colmap_images", "colmap_points3D",
}  # fmt: skip


@pytest.fixture(scope="module")
def rec() -> Reconstruction:
    return make_reconstruction(T=T, H=H, W=W, h=h, w=w)


@pytest.fixture(scope="module")
def saved(rec, tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    out = tmp_path_factory.mktemp("save")
    return out, rec.save(out)


# --------------------------------------------------------------------------- tiny COLMAP text parser


def _data_lines(path: Path) -> list[str]:
    # Data lines, keeping empty ones (the empty keypoint lines of images.txt are significant).
    return [ln for ln in path.read_text().split("\n")[:-1] if not ln.startswith("#")]


def parse_cameras(path: Path) -> dict[int, tuple[int, int, np.ndarray]]:
    cameras = {}
    for ln in _data_lines(path):
        cid, model, width, height, *params = ln.split(" ")
        assert model == "PINHOLE" and len(params) == 4
        cameras[int(cid)] = (int(width), int(height), np.array([float(p) for p in params]))
    return cameras


def parse_images(path: Path) -> dict[int, tuple[int, str, np.ndarray]]:
    lines = _data_lines(path)
    assert len(lines) % 2 == 0, "every image needs a pose line and a (possibly empty) points line"
    images = {}
    for pose_line, points_line in zip(lines[0::2], lines[1::2]):
        iid, qw, qx, qy, qz, tx, ty, tz, cid, name = pose_line.split(" ")
        assert points_line.strip() == ""
        q = torch.tensor([float(qx), float(qy), float(qz), float(qw)], dtype=torch.float64)
        w2c = np.eye(4)
        w2c[:3, :3] = roma.unitquat_to_rotmat(q).numpy()
        w2c[:3, 3] = [float(tx), float(ty), float(tz)]
        images[int(iid)] = (int(cid), name, w2c)
    return images


def parse_points(path: Path) -> np.ndarray:
    points = []
    for ln in _data_lines(path):
        pid, x, y, z, r, g, b, err, *track = ln.split(" ")
        assert track == [] and float(err) == 0.0
        points.append((int(pid), float(x), float(y), float(z), int(r), int(g), int(b)))
    return np.array(points).reshape(-1, 7)


def parse_colmap(folder: Path):
    return (
        parse_cameras(folder / "cameras.txt"),
        parse_images(folder / "images.txt"),
        parse_points(folder / "points3D.txt"),
    )


# --------------------------------------------------------------------------- 1. every file


def test_save_returns_every_file(saved):
    out, paths = saved
    assert set(paths) == EXPECTED_KEYS
    for key, p in paths.items():
        assert p.exists() and p.is_relative_to(out), key
    for folder in ("images", "masks", "attention"):
        assert sorted(q.name for q in (out / folder).iterdir()) == [f"{t:05d}.png" for t in range(T)]
    assert not [p for p in out.rglob("*") if is_temp_name(p.name)]


def test_pngs_round_trip(rec, saved):
    out, _ = saved
    for t in range(T):
        mask = cv2.imread(str(out / "masks" / f"{t:05d}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and mask.shape == (H, W)
        np.testing.assert_array_equal(mask, np.where(rec.masks[t], 255, 0))
        image = cv2.imread(str(out / "images" / f"{t:05d}.png"), cv2.IMREAD_UNCHANGED)[..., ::-1]
        np.testing.assert_array_equal(image, rec.images[t])

        strip = cv2.imread(str(out / "attention" / f"{t:05d}.png"), cv2.IMREAD_UNCHANGED)[..., ::-1]
        assert strip.shape == (H, 6 * W, 3)
        panels = np.split(strip, 6, axis=1)
        # Every panel carries its name top-left: a dark box with white text, clipped to the panel.
        outside = []
        for panel, name in zip(panels, ATTENTION_PANELS):
            bw, bh = label_box(name, W)
            assert 8 <= bh < H // 2
            box = panel[:bh, : min(bw, W)]
            assert (box == 32).all(axis=-1).mean() > 0.3, name  # the dark box
            assert (box > 200).all(axis=-1).any(), name  # white text
            keep = np.ones((H, W), bool)
            keep[:bh, :bw] = False
            outside.append(keep)
        # Panel 0 is 1 - src_mean: the top-left token's colour fills the top-left H/h x W/w block (below the label).
        cmap = colormaps["Spectral_r"]
        expected = np.round(np.array(cmap(1.0 - rec.attention["src_mean"][t, 0, 0])[:3]) * 255)
        bh0 = label_box(ATTENTION_PANELS[0], W)[1]
        assert (panels[0][bh0 : H // h, : W // w] == expected).all()
        att = {k: v[t] for k, v in rec.attention.items()}
        grids = (att["src_std"], 1 - att["ref_mean"], att["ref_std"], rec.dynamic_maps[t])
        for panel, grid, keep in zip(panels[1:5], grids, outside[1:5]):
            np.testing.assert_array_equal(panel[keep], colorize(upsample_nearest(grid, (H, W)))[keep])
        # Panel 5: unmasked pixels are the frame, masked ones are tinted towards red.
        free = ~rec.masks[t] & outside[5]
        np.testing.assert_array_equal(panels[5][free], rec.images[t][free])
        inside = rec.masks[t] & outside[5]
        tinted = panels[5][inside].astype(int) - rec.images[t][inside].astype(int)
        assert (tinted[:, 0] >= 0).all() and (tinted[:, 1] <= 0).all() and tinted[:, 0].sum() > 0
        # Without labels the strip is exactly the coloured maps.
        plain = attention_strip(att, rec.dynamic_maps[t], rec.images[t], rec.masks[t], labels=False)
        np.testing.assert_array_equal(plain[:, W : 2 * W], colorize(upsample_nearest(att["src_std"], (H, W))))
        for k, keep in enumerate(outside):
            np.testing.assert_array_equal(panels[k][keep], plain[:, k * W : (k + 1) * W][keep])


def test_trajectory_intrinsics_and_arrays(rec, saved):
    out, paths = saved
    stamps, c2w = read_tum(paths["trajectory"])
    np.testing.assert_allclose(c2w, rec.cam2world, atol=1e-6)
    np.testing.assert_allclose(stamps, np.arange(T) / rec.fps, atol=1e-9)

    rows = np.loadtxt(out / "intrinsics.txt")
    assert rows.shape == (T, 9)
    np.testing.assert_allclose(rows.reshape(T, 3, 3), rec.intrinsics, atol=1e-6)

    with np.load(out / "depths.npz") as d:
        np.testing.assert_array_equal(d["depths"], rec.depths)
    with np.load(out / "confidence.npz") as d:
        np.testing.assert_array_equal(d["confidence"], rec.confidence)
    with np.load(out / "dynamic_maps.npz") as d:
        np.testing.assert_array_equal(d["dynamic_maps"], rec.dynamic_maps)
        np.testing.assert_array_equal(d["cluster_labels"], rec.cluster_labels)
        assert float(d["threshold"]) == pytest.approx(0.42)

    with np.load(out / "reconstruction.npz", allow_pickle=False) as d:
        for name in ("images", "masks", "dynamic_maps", "cam2world", "intrinsics", "depths", "points"):
            np.testing.assert_array_equal(d[name], getattr(rec, name))
        np.testing.assert_array_equal(d["confidence"], rec.confidence)
        for k in ATTENTION_KEYS:
            np.testing.assert_array_equal(d[f"attention_{k}"], rec.attention[k])
        np.testing.assert_array_equal(d["cluster_labels"], rec.cluster_labels)
        assert list(d["frame_names"]) == rec.frame_names
    back = Reconstruction.load(out)
    for name in ("images", "masks", "points", "cam2world", "cluster_labels"):
        np.testing.assert_array_equal(getattr(back, name), getattr(rec, name))
    assert (back.fps, back.threshold, back.backbone) == (10.0, 0.42, "synthetic")
    assert back.frame_names == rec.frame_names


def test_ply_and_glb(rec, saved):
    out, _ = saved
    conf = rec.confidence > rec.conf_threshold
    n = int(conf.sum())
    ply = trimesh.load(out / "scene.ply")
    assert isinstance(ply, trimesh.PointCloud) and len(ply.vertices) == n
    np.testing.assert_allclose(ply.vertices, rec.points[conf], atol=1e-6)
    np.testing.assert_array_equal(ply.colors[:, :3], rec.images[conf])
    assert (out / "scene.ply").read_bytes().startswith(b"ply\nformat binary_little_endian")

    scene = trimesh.load(out / "scene.glb")
    assert isinstance(scene, trimesh.Scene)
    clouds = [g for g in scene.geometry.values() if isinstance(g, trimesh.PointCloud)]
    assert len(clouds) == 1 and len(clouds[0].vertices) == n
    frusta = sorted(k for k, g in scene.geometry.items() if isinstance(g, trimesh.Trimesh))
    assert len(frusta) == T
    for t in range(T):
        node = f"camera_{t:05d}"
        transform, geom = scene.graph[node]
        apex = trimesh.transform_points(scene.geometry[geom].vertices[:1], transform)[0]
        # The frustum apex sits on the camera centre (OpenCV world kept as is).
        np.testing.assert_allclose(apex, rec.cam2world[t, :3, 3], atol=1e-5)


def test_colmap_model(rec, saved):
    out, _ = saved
    cameras, images, points = parse_colmap(out / "colmap")
    assert sorted(cameras) == sorted(images) == list(range(1, T + 1))
    for t in range(T):
        width, height, (fx, fy, cx, cy) = cameras[t + 1]
        K = rec.intrinsics[t]
        assert (width, height) == (W, H)
        expected = [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5]  # COLMAP pixel centres at +0.5
        np.testing.assert_allclose([fx, fy, cx, cy], expected, atol=1e-9)
        cid, name, w2c = images[t + 1]
        assert cid == t + 1 and (out / "images" / name).is_file() and name == f"{t:05d}.png"
        np.testing.assert_allclose(w2c, np.linalg.inv(rec.cam2world[t]), atol=1e-6)
    conf = rec.confidence > rec.conf_threshold
    assert len(points) == int(conf.sum())  # below the default 100k cap: all points
    assert len(set(points[:, 0].astype(int))) == len(points)
    dist, idx = cKDTree(rec.points[conf]).query(points[:, 1:4])
    assert dist.max() < 1e-5
    np.testing.assert_array_equal(points[:, 4:7].astype(np.uint8), rec.images[conf][idx])


def test_colmap_subsample_and_stale_frames(tmp_path):
    big = make_reconstruction(T=4)
    paths = big.save(tmp_path, colmap_max_points=100)
    assert len(parse_colmap(tmp_path / "colmap")[2]) == 100
    small = make_reconstruction(T=2, seed=3, fps=None)
    (tmp_path / "masks" / "notes.txt").write_text("user file")
    small.save(tmp_path)
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["00000.png", "00001.png", "notes.txt"]
    assert sorted(p.name for p in (tmp_path / "attention").iterdir()) == ["00000.png", "00001.png"]
    stamps, _ = read_tum(paths["trajectory"])
    np.testing.assert_array_equal(stamps, [0.0, 1.0])  # no fps: frame indices


def test_empty_point_cloud(tmp_path):
    rec = make_reconstruction(T=2, conf_threshold=10.0)  # nothing confident
    paths = rec.save(tmp_path)
    assert (tmp_path / "scene.ply").read_bytes().count(b"element vertex 0") == 1
    scene = trimesh.load(paths["glb"])
    assert len(scene.geometry) == 2  # frusta only
    assert len(parse_colmap(tmp_path / "colmap")[2]) == 0


# --------------------------------------------------------------------------- 2. interrupted saves


def _check_complete(out: Path) -> int:
    """Every final-named file is complete and loadable; no temporary file remains. Returns the file count."""
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if is_temp_name(p.name)], "temporary files left behind"
    for p in files:
        if p.suffix == ".png":
            assert cv2.imread(str(p), cv2.IMREAD_UNCHANGED) is not None, p
        elif p.suffix == ".npz":
            with np.load(p) as d:
                for k in d.files:
                    d[k]
        elif p.suffix in (".ply", ".glb"):
            trimesh.load(p)
        elif p.suffix == ".tum":
            read_tum(p)
        elif p.name == "intrinsics.txt":
            assert np.loadtxt(p).shape == (T, 9)
        elif p.parent.name == "colmap":
            {"cameras.txt": parse_cameras, "images.txt": parse_images, "points3D.txt": parse_points}[p.name](p)
    return len(files)


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_interrupted_npz_write_keeps_previous_files(rec, tmp_path, monkeypatch, fail_at):
    rec.save(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.npz")}
    calls = {"n": 0}
    real = np.savez

    def flaky(file, *args, **kwds):
        calls["n"] += 1
        if calls["n"] == fail_at:
            file.write(b"PK\x03\x04 half a zip")  # a truncated archive, then the crash
            raise Boom("disk full")
        return real(file, *args, **kwds)

    monkeypatch.setattr(np, "savez", flaky)
    other = make_reconstruction(T=T, seed=7)
    with pytest.raises(Boom):
        other.save(tmp_path)
    _check_complete(tmp_path)
    # Files not yet rewritten when the crash happened still hold the previous, complete content.
    for p, content in before.items():
        with np.load(p) as d:
            assert d.files
        if p.name == "reconstruction.npz":
            assert p.read_bytes() == content


@pytest.mark.parametrize("fail_at", [1, 2 * T + 1, 3 * T + 3, 3 * T + 7, 3 * T + 10])
def test_interrupted_rename_leaves_no_partial_file(rec, tmp_path, monkeypatch, fail_at):
    calls = {"n": 0}
    real = os.replace

    def flaky(src, dst):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(KeyboardInterrupt):
        rec.save(tmp_path)
    assert _check_complete(tmp_path) == fail_at - 1


def test_interrupted_mesh_export(rec, tmp_path, monkeypatch):
    def broken(self, *a, **k):
        raise Boom("exporter crashed")

    monkeypatch.setattr(trimesh.PointCloud, "export", broken)
    with pytest.raises(Boom):
        rec.save(tmp_path)
    _check_complete(tmp_path)
    assert not (tmp_path / "scene.ply").exists() and (tmp_path / "reconstruction.npz").exists()


def test_atomic_helpers(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "one\n")
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_text("partial")
        assert is_temp_name(tmp.name) and tmp.suffix == ".txt" and tmp.parent == target.parent
        raise Boom
    assert target.read_text() == "one\n" and sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "b.bin") as tmp:
        tmp.unlink()
    assert not (tmp_path / "b.bin").exists()
    p = atomic_save_npz(tmp_path / "c.npz", {"y": np.ones(2)}, compressed=True, x=np.arange(3))
    with np.load(p) as d:
        np.testing.assert_array_equal(d["x"], np.arange(3))
        np.testing.assert_array_equal(d["y"], np.ones(2))
    assert is_temp_name(f".c.npz.xyz_1234{atomic_mod.TEMP_MARKER}.npz") and not is_temp_name("c.npz")
    write_ply(tmp_path / "d.ply", np.zeros((2, 3)), np.zeros((2, 3), np.uint8))
    assert len(trimesh.load(tmp_path / "d.ply").vertices) == 2


# --------------------------------------------------------------------------- leftovers, permissions, failed runs


def test_killed_save_leftovers_are_cleaned_on_the_next_save(rec, tmp_path):
    (tmp_path / "masks").mkdir()
    leftovers = [tmp_path / ".scene.glb.ab12cd_3.tmp.glb", tmp_path / "masks" / ".00003.png.zz9y8x7w.tmp.png"]
    for p in leftovers:
        p.write_bytes(b"half")
    kept = [tmp_path / ".hidden.tmp", tmp_path / "notes.tmp.txt", tmp_path / "masks" / ".x.tmp"]
    for p in kept:
        p.write_text("user file")
    rec.save(tmp_path)
    assert not any(p.exists() for p in leftovers)
    assert all(p.read_text() == "user file" for p in kept)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_exported_files_respect_the_umask(rec, tmp_path, umask):
    old = os.umask(umask)
    try:
        paths = rec.save(tmp_path)
    finally:
        os.umask(old)
    for key in ("reconstruction", "glb", "trajectory", "colmap_images"):
        assert paths[key].stat().st_mode & 0o777 == 0o666 & ~umask, key
    assert (tmp_path / "masks" / "00000.png").stat().st_mode & 0o777 == 0o666 & ~umask


def test_failing_run_keeps_the_earlier_outputs_intact(rec, tmp_path, monkeypatch):
    """A second run into the same folder crashes midway (in the COLMAP writer): every final-name file is either
    the earlier run's, byte for byte, or the new run's complete file; nothing is half-written."""
    from easi3r.export import save as save_mod

    rec.save(tmp_path, videos=True, layout="official")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def crash(*args, **kwargs):
        raise Boom("writer died")

    monkeypatch.setattr(save_mod, "write_colmap", crash)
    other = make_reconstruction(T=T, H=H, W=W, h=h, w=w, seed=11)
    with pytest.raises(Boom):
        other.save(tmp_path, videos=True, layout="official")
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert set(after) == set(before)  # no new name, no temporary file
    _check_complete(tmp_path)
    rewritten = {p for p in after if after[p] != before[p]}
    # Written before the crash: frames, masks, strips, archives, PLY, GLB (the new run's content) ...
    assert {tmp_path / "reconstruction.npz", tmp_path / "scene.glb", tmp_path / "attention" / "00000.png"} <= rewritten
    np.testing.assert_array_equal(Reconstruction.load(tmp_path).points, other.points)
    # ... after it: COLMAP, videos and the official files are still the earlier run's.
    untouched = [p for p in after if p.parent.name == "colmap" or p.suffix == ".mp4" or p.name.startswith("pred_")]
    untouched += list(tmp_path.glob("dynamic_mask_*.png")) + list(tmp_path.glob("conf_*.npy"))
    assert len(untouched) == 3 + 2 + 3 + 2 * T and not rewritten & set(untouched)
