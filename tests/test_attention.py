"""Attention aggregation, channel fusion and the dynamic map (easi3r.attention)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from easi3r._reference import aggregate_attention
from easi3r.attention import (
    AttentionAccumulator,
    FusedAttention,
    channel_fusion,
    dynamic_map,
    fix_corner_token,
    fuse_attention,
    fuse_channels,
)
from easi3r.errors import Easi3RInputError

REF = Path(__file__).parent / "data" / "reference" / "pipeline.npz"
PASSES = ("p1", "p2")


@pytest.fixture(scope="module")
def pipeline() -> dict[str, np.ndarray]:
    with np.load(REF) as z:
        return {k: z[k] for k in z.files}


def fixture_fused(pipeline: dict[str, np.ndarray], p: str) -> FusedAttention:
    def g(name: str) -> torch.Tensor:
        return torch.from_numpy(pipeline[f"{p}_cross_att_k_{name}_fused"])

    return FusedAttention(src_mean=g("i_mean"), src_std=g("i_var"), ref_mean=g("j_mean"), ref_std=g("j_var"))


def swinstride_edges(n: int, window: int = 5) -> np.ndarray:
    """The official swinstride-noncyclic graph, symmetrised (pair order does not matter here)."""
    pairs = sorted({(i, i + k) for i in range(n) for k in range(1, 2 * window + 1, 2) if i + k < n})
    return np.array(pairs + [(j, i) for i, j in pairs], dtype=np.int64)


def random_maps(p: int, h: int = 4, w: int = 5, c: int = 7, *, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    m1 = torch.randn(p, h, w, c, generator=g, dtype=dtype)
    m2 = torch.randn(p, h, w, c, generator=g, dtype=dtype) * 0.3 + 1.0
    return m1, m2


def assert_stats_close(a, b, atol: float, rtol: float = 0.0) -> None:
    for name in ("src_mean", "src_std", "ref_mean", "ref_std"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=atol, rtol=rtol, msg=name)
    assert torch.equal(a.counts, b.counts)


# --------------------------------------------------------------------------------------------- corner fix


def test_fix_corner_token_hand_case() -> None:
    x = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)  # (h=2, w=3, C=2)
    before = x.clone()
    y = fix_corner_token(x)
    # token (0,0) <- ((0,1) + (1,0)) / 2 per channel: ((2,3) + (6,7)) / 2 = (4,5)
    assert y[0, 0].tolist() == [4.0, 5.0]
    assert torch.equal(y[1:], x[1:]) and torch.equal(y[0, 1:], x[0, 1:])
    assert torch.equal(x, before), "input must not be modified"
    with pytest.raises(Easi3RInputError):
        fix_corner_token(torch.zeros(1, 3, 2))


# --------------------------------------------------------------------------------------------- accumulator


def test_accumulator_matches_plain_aggregation_any_order_and_batching(device: str) -> None:
    edges = swinstride_edges(7)  # 7 frames, every frame has >= 2 pairs per role
    m1, m2 = random_maps(len(edges))
    ref = aggregate_attention(edges, m1, m2, 7)

    perm = torch.randperm(len(edges), generator=torch.Generator().manual_seed(3))
    for batch in (1, 4, len(edges)):
        acc = AttentionAccumulator(7, (4, 5), 7, device=device)
        for s in range(0, len(edges), batch):
            idx = perm[s : s + batch]
            acc.add(edges[idx.numpy()], m1[idx].to(device), m2[idx].to(device))
        st = acc.stats()
        assert st.src_mean.dtype == torch.float32 and st.src_mean.shape == (7, 4, 5, 7)
        assert_stats_close(st, ref, atol=1e-6)
    assert ref.counts[0].tolist() == np.bincount(edges[:, 1], minlength=7).tolist()
    assert ref.counts[1].tolist() == np.bincount(edges[:, 0], minlength=7).tolist()


def test_accumulator_against_numpy_float64() -> None:
    """Independent check against numpy (ddof=1), including the corner fix inside the accumulator."""
    edges = swinstride_edges(5)
    m1, m2 = random_maps(len(edges), seed=1)
    acc = AttentionAccumulator(5, (4, 5), 7)
    acc.add(edges, m1, m2)
    st = acc.stats()
    f1 = fix_corner_token(m1).numpy()
    for t in range(5):
        group = f1[edges[:, 1] == t]
        np.testing.assert_allclose(st.src_mean[t].numpy(), group.mean(0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(st.src_std[t].numpy(), group.std(0, ddof=1), rtol=1e-6, atol=1e-7)
    # the corner token really is the neighbours' mean in the statistics
    exp = (f1[edges[:, 1] == 2][:, 0, 1] + f1[edges[:, 1] == 2][:, 1, 0]) / 2
    np.testing.assert_allclose(st.src_mean[2, 0, 0].numpy(), exp.mean(0), rtol=1e-6)


def test_accumulator_stable_for_tiny_spread() -> None:
    """Large offset, 1e-5 spread (real maps: |x| ~ 0.5, std down to 2e-5): std exact to ~1e-7 relative."""
    edges = swinstride_edges(6)
    g = torch.Generator().manual_seed(5)
    base = torch.randn(1, 4, 5, 7, generator=g, dtype=torch.float64) * 0.5
    m1 = (base + 1e-5 * torch.randn(len(edges), 4, 5, 7, generator=g, dtype=torch.float64)).float()
    m2 = (base + 3e-5 * torch.randn(len(edges), 4, 5, 7, generator=g, dtype=torch.float64)).float()
    acc = AttentionAccumulator(6, (4, 5), 7)
    for s in range(0, len(edges), 5):
        acc.add(edges[s : s + 5], m1[s : s + 5], m2[s : s + 5])
    st = acc.stats()
    exact = aggregate_attention(edges, m1.double(), m2.double(), 6)
    torch.testing.assert_close(st.src_std, exact.src_std, rtol=2e-7, atol=0)
    torch.testing.assert_close(st.ref_std, exact.ref_std, rtol=2e-7, atol=0)


def test_merge_of_shards_equals_single_accumulator() -> None:
    edges = swinstride_edges(6)
    m1, m2 = random_maps(len(edges), seed=2)
    whole = AttentionAccumulator(6, (4, 5), 7)
    whole.add(edges, m1, m2)
    a = AttentionAccumulator(6, (4, 5), 7)
    b = AttentionAccumulator(6, (4, 5), 7)
    odd = np.arange(len(edges)) % 3 == 0
    a.add(edges[odd], m1[odd], m2[odd])
    b.add(edges[~odd], m1[~odd], m2[~odd])
    a += b
    assert_stats_close(a.stats(), whole.stats(), atol=1e-7)
    # merging an empty shard changes nothing
    a.merge(AttentionAccumulator(6, (4, 5), 7))
    assert_stats_close(a.stats(), whole.stats(), atol=1e-7)
    with pytest.raises(Easi3RInputError):
        a.merge(AttentionAccumulator(5, (4, 5), 7))


def test_single_pair_frames_std_zero_warning_and_no_nan_downstream() -> None:
    from easi3r.segment import cluster_fuse, compute_masks

    edges = swinstride_edges(3)  # (0,1), (1,2) and swaps: frames 0 and 2 have one pair per role
    m1, m2 = random_maps(len(edges), h=4, w=4, c=6, seed=4, dtype=torch.float32)
    acc = AttentionAccumulator(3, (4, 4), 6)
    acc.add(edges, m1, m2)
    with pytest.warns(UserWarning, match="single pair"):
        st = acc.stats()
    assert st.counts.tolist() == [[1, 2, 1], [1, 2, 1]]
    for t in (0, 2):
        assert (st.src_std[t] == 0).all() and (st.ref_std[t] == 0).all()
    assert (st.src_std[1] > 0).any()
    fused = fuse_attention(st)
    dyn = dynamic_map(fused)
    feats = torch.randn(3, 4, 4, 5, generator=torch.Generator().manual_seed(0))
    refined, labels = cluster_fuse(dyn, feats, 8)
    masks, res = compute_masks(refined, (16, 16))
    for x in (*fused.as_dict().values(), dyn, refined):
        assert torch.isfinite(x).all()
    assert np.isfinite(res.threshold)
    # the frames with std 0 have A_src_sigma = 0 there, hence D = 0 (after per-frame min-max)
    assert (dyn[0] == 0).all() and (dyn[2] == 0).all()
    with pytest.warns(UserWarning, match="single pair"):
        ref = aggregate_attention(edges, m1, m2, 3)
    assert_stats_close(ref, st, atol=1e-6)


def test_missing_frame_and_bad_inputs_raise() -> None:
    acc = AttentionAccumulator(4, (4, 5), 7)
    m1, m2 = random_maps(2)
    acc.add([[0, 1], [1, 0]], m1, m2)
    with pytest.raises(Easi3RInputError, match=r"frame 2 .*'src'"):
        acc.stats()
    with pytest.raises(Easi3RInputError, match="edges"):
        acc.add([[0, 4], [1, 0]], m1, m2)  # frame 4 out of range
    with pytest.raises(Easi3RInputError, match="cross_attn_1"):
        acc.add([[0, 1], [1, 0]], m1[:, :3], m2)
    with pytest.raises(Easi3RInputError, match="edges"):
        acc.add([[0, 1, 2]], m1[:1], m2[:1])


def test_input_checks_are_typed_one_line_errors() -> None:
    acc = AttentionAccumulator(2, (4, 5), 7)
    m1, m2 = random_maps(2)
    fused = FusedAttention(*(torch.zeros(2, 4, 5) for _ in range(4)))
    cases = [
        (lambda: acc.add([[0, 1], [1, 0]], m1, m2.long()), "cross_attn_2 must have dtype"),
        (lambda: acc.add([[0, 1], [1, 0]], m1[..., :6], m2), r"cross_attn_1 must have shape \(B, h, w, C\) with C = 7"),
        (lambda: acc.add([[0, 1], [1, 0]], m1.numpy(), m2), "cross_attn_1 must be a torch.Tensor"),
        (lambda: acc.add([[0.0, 1.0], [1.0, 0.0]], m1, m2), "edges must have dtype"),
        (lambda: channel_fusion(torch.zeros(2, 4, 5)), "channel fusion input must have shape"),
        (
            lambda: dynamic_map(FusedAttention(fused.src_mean, fused.src_std, fused.ref_mean, torch.zeros(2, 4, 6))),
            "fused ref_std must have shape",
        ),
        (lambda: fix_corner_token(torch.zeros(3, 1, 5, 2)), "h, w >= 2"),
        (lambda: aggregate_attention([[0, 1], [1, 0]], m1, m2[:, :3], 2), "cross_attn_2 must have shape"),
        (lambda: aggregate_attention([[0, 1]], m1, m2, 2), "edges has 1 pairs"),
    ]
    for call, message in cases:
        with pytest.raises(Easi3RInputError, match=message) as err:
            call()
        assert "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------- fusion, Eq. 9


def test_fuse_channels_hand_case() -> None:
    # T=2 frames of 1x2 tokens, C=2 channels; global min 0, max 4
    x = torch.tensor([[[[0.0, 2.0], [4.0, 4.0]]], [[[1.0, 1.0], [2.0, 0.0]]]])
    xn = x / (4 + 1e-6)
    m = xn.mean(-1)  # [[0.25, 1], [0.25, 0.25]] * 4/(4+1e-6)
    exp = (m - m.min()) / (m.max() - m.min() + 1e-6)
    cf = channel_fusion(x)
    torch.testing.assert_close(cf.fused, exp)
    torch.testing.assert_close(fuse_channels(x), exp)
    assert cf.raw_minmax.tolist() == [0.0, 4.0]
    torch.testing.assert_close(cf.channel_mean, torch.tensor([[[1.0, 4.0]], [[1.0, 1.0]]]))
    assert abs(float(cf.fused.max()) - 0.75 / (0.75 + 1e-6 * 4 / (4 + 1e-6))) < 1e-6  # max slightly below 1


@pytest.mark.parametrize("p", PASSES)
def test_dynamic_map_from_fixture_fused_maps(pipeline, p: str) -> None:
    dyn = dynamic_map(fixture_fused(pipeline, p))
    np.testing.assert_allclose(dyn.numpy(), pipeline[f"{p}_dynamic_map"], atol=1e-6, rtol=0)


def test_dynamic_map_constant_is_zero_without_warnings(device: str) -> None:
    ones = torch.full((3, 4, 5), 0.5, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = dynamic_map(FusedAttention(ones, ones, ones, ones))
    assert d.device.type == device and torch.equal(d, torch.zeros_like(d))
    # and a frame where only one token is non-zero gets exactly that token at ~1
    src_std = ones.clone()
    src_std[1, 2, 3] = 1.0
    d = dynamic_map(FusedAttention(ones * 0, src_std, ones, ones * 0))
    assert float(d[1, 2, 3]) == pytest.approx(1.0, abs=1e-5) and int((d[1] > 0).sum()) == 1


# ------------------------------------------------------------------------------ with the network's maps


@pytest.mark.parametrize("p", PASSES)
def test_fused_maps_from_network_maps_match_official(reference_maps, pipeline, p: str) -> None:
    edges = reference_maps["edges"]
    m1, m2 = reference_maps[f"{p}_cross_attn_1"], reference_maps[f"{p}_cross_attn_2"]
    acc = AttentionAccumulator(6, (24, 32), 144)
    for s in range(0, len(edges), 4):
        acc.add(edges[s : s + 4], m1[s : s + 4], m2[s : s + 4])
    st = acc.stats()
    assert_stats_close(st, aggregate_attention(edges, m1, m2, 6), atol=1e-6)
    names = {"src_mean": "i_mean", "src_std": "i_var", "ref_mean": "j_mean", "ref_std": "j_var"}
    fused = {}
    for ours, theirs in names.items():
        cf = channel_fusion(getattr(st, ours))
        np.testing.assert_allclose(cf.raw_minmax.numpy(), pipeline[f"{p}_raw_{theirs}_minmax"], atol=1e-5)
        np.testing.assert_allclose(
            cf.channel_mean.numpy(), pipeline[f"{p}_raw_{theirs}_channel_mean"], atol=1e-5, rtol=0
        )
        np.testing.assert_allclose(cf.fused.numpy(), pipeline[f"{p}_cross_att_k_{theirs}_fused"], atol=1e-4, rtol=0)
        fused[ours] = cf.fused
    dyn = dynamic_map(FusedAttention(**fused))
    np.testing.assert_allclose(dyn.numpy(), pipeline[f"{p}_dynamic_map"], atol=1e-4, rtol=0)
