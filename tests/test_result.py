"""Reconstruction: validation, camera helpers and the inverse of the preprocessing geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.reconstruction import make_reconstruction
from PIL import Image

from easi3r.errors import Easi3RInputError
from easi3r.frames import preprocess_transform
from easi3r.result import Reconstruction

# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("masks", np.zeros((4, 32, 47), bool), "masks"),
        ("masks", np.zeros((3, 32, 48), bool), "masks"),
        ("points", np.zeros((4, 32, 48), np.float32), "points"),
        ("depths", np.zeros((5, 32, 48), np.float32), "depths"),
        ("confidence", np.zeros((4, 16, 48), np.float32), "confidence"),
        ("cam2world", np.zeros((4, 3, 4)), "cam2world"),
        ("intrinsics", np.zeros((3, 3, 3)), "intrinsics"),
        ("dynamic_maps", np.zeros((4, 2)), "dynamic_maps"),
        ("images", np.zeros((4, 32, 48, 3), np.float32), "uint8"),
        ("images", np.zeros((4, 32, 48), np.uint8), "images"),
        ("frame_names", ["a", "b"], "frame_names"),
        ("cluster_labels", np.zeros((4, 2, 3), np.float32), "cluster_labels"),
        ("cluster_labels", np.zeros((4, 3, 2), np.int64), "cluster_labels"),
        ("original_sizes", [(640, 480)] * 3, "original_sizes"),
        ("fps", -1.0, "fps"),
    ],
)
def test_inconsistent_shapes_raise(field, value, match):
    with pytest.raises(Easi3RInputError, match=match):
        make_reconstruction(**{field: value})


def test_attention_keys_and_grid_are_checked():
    rec = make_reconstruction()
    att = dict(rec.attention)
    del att["ref_std"]
    with pytest.raises(Easi3RInputError, match="ref_std"):
        make_reconstruction(attention=att)
    att = dict(rec.attention, src_std=np.zeros((4, 2, 4), np.float32))
    with pytest.raises(Easi3RInputError, match="src_std"):
        make_reconstruction(attention=att)
    with pytest.raises(Easi3RInputError, match="cam2world must be finite"):
        c2w = rec.cam2world.copy()
        c2w[1, 0, 0] = np.nan
        make_reconstruction(cam2world=c2w)


def test_tensors_and_dtypes_are_converted(device):
    ref = make_reconstruction()
    rec = make_reconstruction(
        points=torch.as_tensor(ref.points, device=device),
        masks=ref.masks.astype(np.uint8),
        intrinsics=ref.intrinsics.astype(np.float32),
        depths=torch.as_tensor(ref.depths, device=device, dtype=torch.float64),
    )
    assert isinstance(rec.points, np.ndarray) and rec.points.dtype == np.float32
    np.testing.assert_array_equal(rec.points, ref.points)
    assert rec.masks.dtype == np.bool_ and (rec.masks == ref.masks).all()
    assert rec.intrinsics.dtype == np.float64 and rec.depths.dtype == np.float32
    assert "frames=4" in repr(rec) and "H=32" in repr(rec)


# --------------------------------------------------------------------------- camera helpers


def test_properties_world2cam_focals_point_cloud():
    rec = make_reconstruction()
    assert rec.num_frames == 4 and rec.size == (32, 48)
    np.testing.assert_allclose(rec.world2cam @ rec.cam2world, np.tile(np.eye(4), (4, 1, 1)), atol=1e-12)
    np.testing.assert_allclose(rec.world2cam, np.linalg.inv(rec.cam2world), atol=1e-12)
    np.testing.assert_allclose(rec.focals, 40.5)
    # Points project back onto their own pixel through world2cam and K.
    cam = np.einsum("ij,hwj->hwi", rec.world2cam[2, :3, :3], rec.points[2]) + rec.world2cam[2, :3, 3]
    uv = cam @ rec.intrinsics[2].T
    uv = uv[..., :2] / uv[..., 2:]
    ys, xs = np.mgrid[0:32, 0:48]
    np.testing.assert_allclose(uv, np.stack([xs, ys], -1), atol=1e-3)
    np.testing.assert_allclose(cam[..., 2], rec.depths[2], rtol=1e-5)

    conf = rec.confidence > 1.1
    pts, cols = rec.point_cloud()
    assert len(pts) == conf.sum() and 0 < len(pts) < conf.size
    np.testing.assert_array_equal(cols, rec.images[conf])
    static, _ = rec.point_cloud(which="static")
    dynamic, _ = rec.point_cloud(which="dynamic")
    assert len(static) == (conf & ~rec.masks).sum() and len(dynamic) == (conf & rec.masks).sum()
    assert len(rec.point_cloud(conf_threshold=0.0)[0]) == conf.size
    with pytest.raises(Easi3RInputError):
        rec.point_cloud(which="moving")


# --------------------------------------------------------------------------- preprocessing geometry

# (W0, H0, image_size) -> expected resized (Wr, Hr), crop origin (ox, oy), processed (W, H), computed by hand
# from the official loader's formulas (dust3r/utils/image.py load_images, MonST3R crop_img).
CASES = {
    "landscape": ((1920, 1080, 512), (512, 288), (0, 0), (512, 288)),
    "portrait": ((480, 640, 512), (384, 512), (0, 0), (384, 512)),
    "square": ((1000, 1000, 512), (512, 512), (0, 64), (512, 384)),
    "odd": ((500, 333, 512), (512, 341), (0, 2), (512, 336)),
    "landscape224": ((1920, 1080, 224), (398, 224), (87, 0), (224, 224)),
}


def _project(K, X):
    p = X @ K.T
    return p[:, :2] / p[:, 2:]


@pytest.mark.parametrize("case", list(CASES))
def test_intrinsics_at_maps_through_resize_and_crop(case):
    (W0, H0, size), (Wr, Hr), (ox, oy), (W, H) = CASES[case]
    A, (Wp, Hp) = preprocess_transform((W0, H0), size)
    assert (Wp, Hp) == (W, H)
    K = np.array([[0.9 * W, 0.0, 0.47 * W], [0.0, 0.92 * W, 0.53 * H], [0.0, 0.0, 1.0]])
    rec = make_reconstruction(T=2, H=H, W=W, h=H // 16, w=W // 16, intrinsics=np.stack([K, K]), image_size=size)
    K0 = rec.intrinsics_at((W0, H0))
    assert K0.shape == (2, 3, 3)
    rng = np.random.default_rng(1)
    X = np.column_stack([rng.uniform(-0.4, 0.4, 50), rng.uniform(-0.3, 0.3, 50), rng.uniform(1, 4, 50)])
    p_proc = _project(K, X)
    p_orig = _project(K0[0], X)
    # Independent forward model: pixel-centre resize by (Wr/W0, Hr/H0), then subtract the crop origin.
    mapped = np.column_stack([(p_orig[:, 0] + 0.5) * Wr / W0 - 0.5 - ox, (p_orig[:, 1] + 0.5) * Hr / H0 - 0.5 - oy])
    np.testing.assert_allclose(mapped, p_proc, atol=1e-9)
    # The same K0 through original_sizes (per frame).
    rec.original_sizes = [(W0, H0), (W0, H0)]
    np.testing.assert_allclose(rec.intrinsics_at(), K0)


def _preprocess_pil(img: Image.Image, size: int) -> Image.Image:
    """The official resize + centre crop (dust3r/utils/image.py load_images), re-written here, on a float image."""
    W0, H0 = img.size
    long_side = round(size * max(W0 / H0, H0 / W0)) if size == 224 else size
    S = max(W0, H0)
    new = tuple(int(round(x * long_side / S)) for x in img.size)
    img = img.resize(new, Image.Resampling.LANCZOS if S > long_side else Image.Resampling.BICUBIC)
    cx, cy = new[0] // 2, new[1] // 2
    if size == 224:
        hw = hh = min(cx, cy)
    else:
        hw, hh = ((2 * cx) // 16) * 8, ((2 * cy) // 16) * 8
        if new[0] == new[1]:
            hh = 3 * hw / 4
    return img.crop((cx - hw, cy - hh, cx + hw, cy + hh))


@pytest.mark.parametrize("case", ["landscape", "portrait", "square", "odd"])
def test_intrinsics_at_against_real_resampling(case):
    """A blob drawn where K0 projects a point lands, after PIL's resize + crop, where K projects it."""
    (W0, H0, size), _, _, (W, H) = CASES[case]
    K = np.array([[0.8 * W, 0.0, 0.5 * W + 3.3], [0.0, 0.8 * W, 0.5 * H - 2.1], [0.0, 0.0, 1.0]])
    rec = make_reconstruction(T=1, H=H, W=W, h=H // 16, w=W // 16, intrinsics=K[None], image_size=size)
    K0 = rec.intrinsics_at((W0, H0))[0]
    X = np.array([[0.11, -0.07, 1.0], [-0.2, 0.13, 2.0]])
    p_orig = _project(K0, X)
    p_proc = _project(K, X)
    sigma = 3.0 * W0 / W  # three processed pixels
    ys, xs = np.mgrid[0:H0, 0:W0].astype(np.float64)
    for (u0, v0), (u, v) in zip(p_orig, p_proc):
        blob = np.exp(-((xs - u0) ** 2 + (ys - v0) ** 2) / (2 * sigma**2)).astype(np.float32)
        out = np.asarray(_preprocess_pil(Image.fromarray(blob, mode="F"), size), dtype=np.float64)
        assert out.shape == (H, W)
        gy, gx = np.mgrid[0:H, 0:W]
        wsum = out.sum()
        centroid = ((out * gx).sum() / wsum, (out * gy).sum() / wsum)
        # Dropping the half-pixel terms would move the landscape case by 0.5 (1 - s) ~ 0.37 px (portrait 0.1).
        np.testing.assert_allclose(centroid, (u, v), atol=0.005)


def test_intrinsics_at_no_crop_and_errors():
    A, (W, H) = preprocess_transform((500, 333), 512, crop=False)
    assert (W, H) == (512, 336)
    # Pure pixel-centre rescale to the final size: corners of the image map onto corners.
    corners = np.array([[-0.5, -0.5, 1.0], [499.5, 332.5, 1.0]]) @ A.T
    np.testing.assert_allclose(corners[:, :2], [[-0.5, -0.5], [511.5, 335.5]], atol=1e-12)

    rec = make_reconstruction()  # 48x32: no original frame maps onto it at image_size 512
    with pytest.raises(Easi3RInputError, match="original_sizes"):
        rec.intrinsics_at()
    with pytest.raises(Easi3RInputError, match="preprocesses to"):
        rec.intrinsics_at((1920, 1080))
    with pytest.raises(Easi3RInputError):
        preprocess_transform((0, 10))
    with pytest.raises(Easi3RInputError, match="patch"):
        preprocess_transform((10, 2000))


def test_intrinsics_at_undoes_no_crop(tmp_path):
    """crop=False: per-axis scale (W/W0, H/H0), no offset; the flag is recorded and survives save/load."""
    W0, H0 = 500, 333
    A, (W, H) = preprocess_transform((W0, H0), 512, crop=False)
    assert (W, H) == (512, 336)
    K = np.array([[0.9 * W, 0.0, 0.47 * W], [0.0, 0.9 * W, 0.53 * H], [0.0, 0.0, 1.0]])
    rec = make_reconstruction(
        T=1, H=H, W=W, h=H // 16, w=W // 16, intrinsics=K[None], crop=False, original_sizes=[(W0, H0)]
    )
    K0 = rec.intrinsics_at()[0]
    rng = np.random.default_rng(2)
    X = np.column_stack([rng.uniform(-0.4, 0.4, 20), rng.uniform(-0.3, 0.3, 20), rng.uniform(1, 4, 20)])
    p0, p = _project(K0, X), _project(K, X)
    sx, sy = W / W0, H / H0
    np.testing.assert_allclose(
        np.column_stack([(p0[:, 0] + 0.5) * sx - 0.5, (p0[:, 1] + 0.5) * sy - 0.5]), p, atol=1e-9
    )
    assert K0[0, 0] == pytest.approx(K[0, 0] / sx) and K0[1, 1] == pytest.approx(K[1, 1] / sy)
    # The crop=True inverse differs (uniform scale 512/500 and a 2-px crop offset), an explicit override gives it.
    assert not np.allclose(rec.intrinsics_at(crop=True)[0], K0)
    rec.save(tmp_path)
    back = Reconstruction.load(tmp_path)
    assert back.crop is False
    np.testing.assert_allclose(back.intrinsics_at(), rec.intrinsics_at())
    with pytest.raises(Easi3RInputError, match="crop"):
        make_reconstruction(crop="yes")


def test_load_truncated_or_foreign_files_raise_typed_errors(tmp_path):
    make_reconstruction(T=2).save(tmp_path)
    archive = tmp_path / "reconstruction.npz"
    data = archive.read_bytes()
    for name, content in (("cut.npz", data[: len(data) // 2]), ("head.npz", data[:100]), ("junk.npz", b"PK\x03\x04")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(Easi3RInputError, match=name) as e:
            Reconstruction.load(tmp_path / name)
        assert "\n" not in str(e.value)
    np.save(tmp_path / "bare.npy", np.zeros(3))
    with pytest.raises(Easi3RInputError, match="npz"):
        Reconstruction.load(tmp_path / "bare.npy")
