"""Cluster fusion, upsampling, thresholds and masks (easi3r.segment)."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from easi3r.attention import AttentionAccumulator, FusedAttention, dynamic_map, fuse_attention
from easi3r.errors import Easi3RInputError
from easi3r.segment import (
    Segmentation,
    apply_refiner,
    cluster_fuse,
    cluster_labels,
    cluster_scores,
    compute_masks,
    multiotsu_threshold,
    otsu_threshold,
    segment,
    upsample,
)

REF = Path(__file__).parent / "data" / "reference" / "pipeline.npz"
PASSES = ("p1", "p2")


@pytest.fixture(scope="module")
def pipeline() -> dict[str, np.ndarray]:
    with np.load(REF) as z:
        return {k: z[k] for k in z.files}


def assert_same_partition(a: np.ndarray, b: np.ndarray) -> None:
    """Labels equal up to a relabelling: the map a -> b is a bijection."""
    a, b = a.reshape(-1), b.reshape(-1)
    pairs = np.unique(np.stack([a, b], 1), axis=0)
    assert len(pairs) == len(np.unique(a)) == len(np.unique(b)), "labels differ beyond a relabelling"


# ------------------------------------------------------------------------------ official fixture


@pytest.mark.parametrize("p", PASSES)
def test_masks_from_fixture_refined_map(pipeline, p: str) -> None:
    refined = torch.from_numpy(pipeline[f"{p}_refined_dynamic_map"])
    masks, res = compute_masks(refined, (384, 512), "multiotsu")
    assert res.method == "multiotsu"
    assert res.threshold == pytest.approx(float(pipeline[f"{p}_otsu_threshold"]), abs=1e-6)
    assert res.n_classes == int(pipeline[f"{p}_otsu_n_classes"])
    np.testing.assert_allclose(res.scores, pipeline[f"{p}_otsu_scores"], atol=1e-4 / 2 + 1e-12)
    expected = pipeline[f"{p}_dynamic_masks"].astype(bool)
    assert masks.dtype == torch.bool and masks.shape == expected.shape
    for t in range(len(expected)):
        inter = np.logical_and(masks[t].numpy(), expected[t]).sum()
        union = np.logical_or(masks[t].numpy(), expected[t]).sum()
        assert union > 0 and inter == union, f"frame {t}: IoU {inter / max(union, 1)}"


@pytest.mark.parametrize("p", PASSES)
def test_cluster_scores_from_fixture_labels(pipeline, p: str) -> None:
    dyn = torch.from_numpy(pipeline[f"{p}_dynamic_map"])
    labels = torch.from_numpy(pipeline[f"{p}_dynamic_map_labels"].astype(np.int64))
    refined = cluster_scores(dyn, labels)
    assert refined.dtype == torch.float32
    np.testing.assert_allclose(refined.numpy(), pipeline[f"{p}_refined_dynamic_map"], atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------- synthetic


def test_cluster_fuse_two_blobs(device: str) -> None:
    """Two well separated feature blobs: each token gets its blob's mean score, then per-frame min-max."""
    g = torch.Generator().manual_seed(0)
    t, h, w = 2, 4, 6
    blob = torch.zeros(t, h, w, dtype=torch.long)
    blob[:, :, 3:] = 1  # right half of every frame is object 1
    centres = torch.tensor([[0.0, 0.0, 0.0], [10.0, 10.0, 10.0]])
    feats = centres[blob] + 0.01 * torch.randn(t, h, w, 3, generator=g)
    dyn = torch.rand(t, h, w, generator=g)
    refined, labels = cluster_fuse(dyn.to(device), feats.to(device), n_clusters=2)
    assert refined.device.type == device and labels.dtype == torch.int64
    assert_same_partition(labels.cpu().numpy(), blob.numpy())
    # blob means; per-frame min-max maps the lower-mean blob to 0 and the higher to ~1
    m = [float(dyn[blob == k].mean()) for k in (0, 1)]
    hi = int(np.argmax(m))
    exp = (blob == hi).float() * (1.0 / (1.0 + 1e-6 / abs(m[1] - m[0])))
    torch.testing.assert_close(refined.cpu(), exp, atol=1e-5, rtol=0)


def test_cluster_labels_fewer_tokens_than_clusters() -> None:
    feats = torch.arange(2 * 2 * 2 * 3, dtype=torch.float32).reshape(2, 2, 2, 3)
    with pytest.warns(UserWarning, match="clusters"):
        labels = cluster_labels(feats, n_clusters=64)
    assert sorted(labels.flatten().tolist()) == list(range(8))


def test_upsample_matches_opencv_bilinear() -> None:
    x = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(1))
    up = upsample(x, (80, 112))
    assert up.shape == (3, 80, 112)
    for t in range(3):
        cv = cv2.resize(x[t].numpy(), (112, 80), interpolation=cv2.INTER_LINEAR)  # half-pixel centres too
        np.testing.assert_allclose(up[t].numpy(), cv, atol=1e-5)
    # hand case: 1x2 -> 1x4, align_corners=False gives [a, a+(b-a)/4, a+3(b-a)/4, b]
    hand = upsample(torch.tensor([[[0.0, 4.0]]]), (1, 4))
    torch.testing.assert_close(hand, torch.tensor([[[0.0, 1.0, 3.0, 4.0]]]))


def three_level_stack() -> np.ndarray:
    rng = np.random.default_rng(0)
    levels = rng.choice([0.1, 0.5, 0.9], size=(4, 32, 32), p=[0.6, 0.25, 0.15])
    return (levels + rng.normal(0, 0.02, levels.shape)).astype(np.float32)


def test_multiotsu_synthetic_levels() -> None:
    x = three_level_stack()
    res = multiotsu_threshold(x)
    assert res.method == "multiotsu" and len(res.scores) == 3
    assert res.n_classes == int(np.argmax(res.scores)) + 2
    assert 0.55 < res.threshold < 0.85  # the top threshold separates the 0.9 level from the 0.5 level
    # the 2-class score, by its definition: population variance of the two class means / sqrt(2)
    from skimage.filters import threshold_multiotsu

    th = threshold_multiotsu(x, classes=2)
    m = [x[x <= th[0]].mean(), x[x > th[0]].mean()]
    assert res.scores[0] == pytest.approx((m[1] - m[0]) ** 2 / 4 / np.sqrt(2), rel=1e-5)


def test_otsu_and_fixed_thresholds() -> None:
    x = torch.zeros(2, 4, 4)
    x[:, :2] = 1.0
    x[0, 3, 3] = 0.1
    masks, res = compute_masks(x, (4, 4), "otsu")  # same size: the upsampling is the identity
    # skimage returns the centre of the last class-0 bin: the bin holding 0.1 (25.5 / 256)
    assert res.method == "otsu" and res.threshold == 25.5 / 256
    assert torch.equal(masks, x > 0.0996) and masks[x == 1].all() and not masks[x == 0].any()
    assert otsu_threshold(x).threshold == res.threshold
    masks, res = compute_masks(x, (4, 4), 0.2)
    assert res.method == "fixed" and torch.equal(masks, x > 0.2)
    masks, _ = compute_masks(x, (4, 4), 1.0)
    assert not masks.any()  # strict >
    with pytest.raises(Easi3RInputError):
        compute_masks(x, (4, 4), 3.0)
    with pytest.raises(Easi3RInputError):
        compute_masks(x, (4, 4), "kmeans")


@pytest.mark.parametrize("method", ["multiotsu", "otsu"])
def test_constant_map_gives_empty_masks_without_warnings(method: str, device: str) -> None:
    const = torch.full((3, 6, 8), 0.4, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        masks, res = compute_masks(const, (96, 128), method)
        d = dynamic_map(FusedAttention(const, const, const, const))
        masks2, _ = compute_masks(d, (96, 128), method)
    assert masks.device.type == device and masks.shape == (3, 96, 128)
    assert not masks.any() and not masks2.any()
    assert np.isfinite(res.threshold) and res.method == "constant"


def test_two_valued_map_multiotsu_falls_back_cleanly() -> None:
    """Only two distinct values: 3 and 4 classes cannot be formed, n = 2 must still be chosen."""
    x = torch.zeros(1, 8, 8)
    x[0, :3] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = multiotsu_threshold(x)
    assert res.n_classes == 2 and 0.0 <= res.threshold < 1.0
    assert np.isnan(res.scores[1]) and np.isnan(res.scores[2])


# --------------------------------------------------------------------------------------------- refiner


def _dilate(imgs: np.ndarray, m: np.ndarray) -> np.ndarray:
    k = np.ones((3, 3), np.uint8)
    return np.stack([cv2.dilate(f.astype(np.uint8), k).astype(bool) for f in m]) | m


def test_apply_refiner_runs_the_refiner_and_keeps_the_mask_type() -> None:
    images = np.zeros((2, 8, 8, 3), np.uint8)
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 2:4, 2:4] = True
    out = apply_refiner(_dilate, images, masks)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bool
    assert int(out[0].sum()) == 16 and not out[1].any()

    # numpy masks in, numpy masks out; the refiner gets a copy, so it may write into it
    def scribble(imgs: np.ndarray, m: np.ndarray) -> np.ndarray:
        m[:] = True
        return m

    np_masks = masks.numpy().copy()
    out_np = apply_refiner(scribble, images, np_masks)
    assert isinstance(out_np, np.ndarray) and out_np.all()
    assert np.array_equal(np_masks, masks.numpy())


@pytest.mark.parametrize(
    ("refiner", "why"),
    [
        (lambda i, m: m.astype(np.uint8), "dtype bool, got uint8"),  # right shape, wrong dtype
        (lambda i, m: m[:1], r"got \(1, 8, 8\)"),  # a frame lost
        (lambda i, m: m[..., None], r"got \(2, 8, 8, 1\)"),  # an extra axis
        (lambda i, m: torch.from_numpy(m).float(), "dtype bool, got float32"),  # a tensor of the wrong dtype
    ],
)
def test_apply_refiner_refuses_a_wrong_result(refiner, why: str) -> None:
    images = np.zeros((2, 8, 8, 3), np.uint8)
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    with pytest.raises(Easi3RInputError, match=f"output of mask refiner .*{why}") as err:
        apply_refiner(refiner, images, masks)
    assert "\n" not in str(err.value)


def test_apply_refiner_refuses_bad_inputs() -> None:
    images = np.zeros((2, 8, 8, 3), np.uint8)
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    with pytest.raises(Easi3RInputError, match="callable"):
        apply_refiner(np.zeros(3), images, masks)
    with pytest.raises(Easi3RInputError, match="images"):
        apply_refiner(_dilate, images[:, :4], masks)
    with pytest.raises(Easi3RInputError, match="masks"):
        apply_refiner(_dilate, images, masks.float())


def test_segment_composite_on_synthetic_attention() -> None:
    """segment() = stats -> fusion -> Eq. 9 -> cluster fusion -> masks, each piece as called by hand."""
    edges = np.array([(i, j) for i in range(4) for j in range(4) if i != j])
    g = torch.Generator().manual_seed(0)
    acc = AttentionAccumulator(4, (4, 6), 5)
    acc.add(edges, torch.randn(len(edges), 4, 6, 5, generator=g), torch.randn(len(edges), 4, 6, 5, generator=g))
    feats = torch.randn(4, 4, 6, 3, generator=g)
    labels = cluster_labels(feats, n_clusters=5)
    seg = segment(acc, labels, (16, 24), threshold=0.5)
    assert isinstance(seg, Segmentation) and seg.masks.shape == (4, 16, 24) and seg.masks.dtype == torch.bool
    fused = fuse_attention(acc.stats())
    torch.testing.assert_close(seg.dynamic_map, dynamic_map(fused), rtol=0, atol=0)
    refined, labels_again = cluster_fuse(seg.dynamic_map, feats, n_clusters=5)
    torch.testing.assert_close(seg.refined, refined, rtol=0, atol=0)
    assert torch.equal(seg.labels, labels) and torch.equal(labels_again, labels)
    masks, res = compute_masks(refined, (16, 24), 0.5)
    assert torch.equal(seg.masks, masks) and seg.threshold == res
    with pytest.raises(Easi3RInputError, match="labels must have shape"):
        segment(acc, labels[:, :3], (16, 24))


def test_input_checks_are_typed_one_line_errors() -> None:
    dyn = torch.rand(2, 3, 4)
    cases = [
        (lambda: cluster_scores(dyn[0], torch.zeros(3, 4, dtype=torch.long)), "dyn must have shape"),
        (lambda: cluster_scores(dyn, torch.zeros(2, 3, 4)), "labels must have dtype"),
        (lambda: cluster_scores(dyn, torch.zeros(2, 3, 5, dtype=torch.long)), "labels must have shape"),
        (lambda: cluster_fuse(dyn, torch.zeros(2, 3, 5, 8)), "features must have shape"),
        (lambda: cluster_labels(torch.zeros(2, 3, 4)), "features must have shape"),
        (lambda: upsample(dyn.long(), (4, 4)), "maps must have dtype"),
    ]
    for call, message in cases:
        with pytest.raises(Easi3RInputError, match=message) as err:
            call()
        assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------ with the network's outputs


@pytest.mark.parametrize("p", PASSES)
def test_labels_refined_map_and_masks_from_network_outputs(reference_maps, pipeline, p: str) -> None:
    edges = reference_maps["edges"]
    acc = AttentionAccumulator(6, (24, 32), 144)
    acc.add(edges, reference_maps[f"{p}_cross_attn_1"], reference_maps[f"{p}_cross_attn_2"])
    dyn = dynamic_map(fuse_attention(acc.stats()))
    refined, labels = cluster_fuse(dyn, reference_maps["features"])
    assert_same_partition(labels.numpy(), pipeline[f"{p}_dynamic_map_labels"])
    np.testing.assert_allclose(refined.numpy(), pipeline[f"{p}_refined_dynamic_map"], atol=1e-4, rtol=0)
    masks, res = compute_masks(refined, (384, 512))
    assert res.n_classes == int(pipeline[f"{p}_otsu_n_classes"])
    assert res.threshold == pytest.approx(float(pipeline[f"{p}_otsu_threshold"]), abs=1e-4)
    assert np.array_equal(masks.numpy(), pipeline[f"{p}_dynamic_masks"].astype(bool))
