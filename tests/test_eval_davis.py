"""DAVIS J / F / statistics against hand-computed values and a brute-force reading of the official formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from easi3r.errors import Easi3RInputError
from easi3r.eval.davis import (
    DavisSequence,
    boundary_map,
    davis_aggregate,
    db_statistics,
    f_measure,
    frame_f_measures,
    score_sequence,
)

# ------------------------------------------------------------------ brute-force references (loops, formulas)


def _ref_boundary(seg: np.ndarray) -> np.ndarray:
    """DAVIS ``_seg2bmap`` pixel by pixel: differs from E, S or SE (outside = 0); last row E only, last column S
    only, bottom-right corner never."""
    h, w = seg.shape
    s = seg.astype(bool)

    def at(y: int, x: int) -> bool:
        return bool(s[y, x]) if y < h and x < w else False

    out = np.zeros((h, w), dtype=bool)
    for y in range(h):
        for x in range(w):
            if y == h - 1 and x == w - 1:
                continue
            if y == h - 1:
                out[y, x] = s[y, x] != at(y, x + 1)
            elif x == w - 1:
                out[y, x] = s[y, x] != at(y + 1, x)
            else:
                out[y, x] = s[y, x] != at(y, x + 1) or s[y, x] != at(y + 1, x) or s[y, x] != at(y + 1, x + 1)
    return out


def _ref_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """F from the definition: a boundary pixel matches when one of the other boundary's pixels lies within the
    disk of radius r (x^2 + y^2 <= r^2, skimage ``disk``)."""
    h, w = pred.shape
    r = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(h, w))
    pb, gb = _ref_boundary(pred), _ref_boundary(gt)
    if not pb.any() and not gb.any():
        return 1.0
    if not pb.any() or not gb.any():
        return 0.0
    p_pts, g_pts = np.argwhere(pb), np.argwhere(gb)

    def matched(a: np.ndarray, b: np.ndarray) -> int:
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return int((d2.min(axis=1) <= r * r).sum())

    precision, recall = matched(p_pts, g_pts) / len(p_pts), matched(g_pts, p_pts) / len(g_pts)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _ref_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else np.logical_and(pred, gt).sum() / union


# ---------------------------------------------------------------------------------------------- hand values


def test_boundary_of_a_block_by_hand() -> None:
    seg = np.zeros((5, 5), dtype=np.uint8)
    seg[1:3, 1:4] = 7  # any non-zero label is foreground
    expected = np.array(
        [
            [1, 1, 1, 1, 0],
            [1, 0, 0, 1, 0],
            [1, 1, 1, 1, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(boundary_map(seg), expected)


def test_boundary_touching_the_last_row_and_column() -> None:
    seg = np.zeros((3, 3), dtype=bool)
    seg[2, :] = True  # the last row and column are compared with one neighbour only
    seg[:, 2] = True
    got = boundary_map(seg)
    np.testing.assert_array_equal(got, _ref_boundary(seg))
    assert not got[2, 2]


def test_f_measure_of_two_points_by_hand() -> None:
    # 10x10: radius ceil(0.008 * 14.14) = 1 (a plus-shaped disk). Each point's boundary is a 2x2 block ending at
    # the point; the blocks are 2 columns apart, so half of each block is within 1 px of the other.
    gt = np.zeros((10, 10), dtype=bool)
    pred = np.zeros((10, 10), dtype=bool)
    gt[4, 4] = True
    pred[4, 6] = True
    assert f_measure(pred, gt) == pytest.approx(0.5)
    # A 2 px tolerance (bound_th >= 1 is in pixels) matches everything.
    assert f_measure(pred, gt, bound_th=2) == pytest.approx(1.0)


def test_f_measure_empty_cases() -> None:
    empty = np.zeros((8, 8), dtype=bool)
    full = empty.copy()
    full[2:5, 2:5] = True
    assert f_measure(empty, empty) == 1.0
    assert f_measure(full, empty) == 0.0  # precision 0, recall 1
    assert f_measure(empty, full) == 0.0  # precision 1, recall 0
    assert f_measure(full, full) == 1.0


def test_f_measure_rejects_bad_input() -> None:
    with pytest.raises(Easi3RInputError):
        f_measure(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(Easi3RInputError):
        f_measure(np.zeros((4, 4)), np.zeros((4, 4)), bound_th=0.0)


def test_db_statistics_by_hand() -> None:
    # T = 8: ids = round(linspace(1, 8, 5)) - 1 = [0, 2, 4, 5, 7]; bins v[0:3] and v[5:8].
    v = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    mean, recall, decay = db_statistics(v)
    assert mean == pytest.approx(0.55)
    assert recall == pytest.approx(0.5)  # 0.5 itself is not > 0.5
    assert decay == pytest.approx(0.8 - 0.3)
    assert db_statistics([0.7]) == (0.7, 1.0, 0.0)
    m, r, d = db_statistics([np.nan, 1.0, 0.0, 0.0])
    assert (m, r) == (pytest.approx(1 / 3), pytest.approx(1 / 3))
    with pytest.raises(Easi3RInputError):
        db_statistics([])


def test_aggregation_pooled_vs_per_sequence_by_hand() -> None:
    a = DavisSequence(j=np.array([1.0, 1.0]), f=np.array([1.0, 0.0]))
    b = DavisSequence(j=np.array([0.0, 0.0, 0.0, 0.4]), f=np.array([0.6, 0.6, 0.6, 0.6]))
    scores = davis_aggregate({"a": a, "b": b})
    assert scores.pooled["JM"] == pytest.approx(2.4 / 6)  # frame-weighted (the paper's protocol)
    assert scores.pooled["JR"] == pytest.approx(2 / 6)
    assert scores.pooled["FM"] == pytest.approx(3.4 / 6)
    assert scores.pooled["J&F"] == pytest.approx((2.4 / 6 + 3.4 / 6) / 2)
    assert scores.per_sequence["JM"] == pytest.approx((1.0 + 0.1) / 2)
    assert scores.per_sequence["JR"] == pytest.approx(0.5)
    # decay of b: ids for T = 4 are [0, 1, 2, 2, 3] -> bins v[0:2], v[2:4]: 0 - 0.2; of a (T = 2): 0.
    assert scores.per_sequence["JD"] == pytest.approx((0.0 - 0.2) / 2)
    assert scores.as_dict()["sequences"]["b"]["frames"] == 4


# -------------------------------------------------------------------------------- random cases vs the formula


@pytest.mark.parametrize("seed", range(6))
def test_random_masks_match_the_formulas(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = rng.integers(12, 40, size=2)
    t = 3
    # Blobby masks: thresholded smoothed noise, so boundaries are long and partially overlapping.
    noise = rng.random((t, h + 4, w + 4))
    smooth = sum(noise[:, i : i + h, j : j + w] for i in range(5) for j in range(5)) / 25
    gt = smooth > 0.5
    pred = np.roll(gt, shift=int(rng.integers(-2, 3)), axis=2) ^ (rng.random((t, h, w)) > 0.97)
    th = float(rng.choice([0.008, 0.05, 3.0]))
    got = frame_f_measures(pred, gt, th)
    np.testing.assert_allclose(got, [_ref_f(pred[k], gt[k], th) for k in range(t)], rtol=0, atol=1e-12)
    for k in range(t):
        np.testing.assert_array_equal(boundary_map(pred[k]), _ref_boundary(pred[k]))
    scored = score_sequence(pred, gt)
    np.testing.assert_allclose(scored.j, [_ref_iou(pred[k], gt[k]) for k in range(t)], rtol=0, atol=1e-12)
    assert 0.0 <= scored.f.min() <= scored.f.max() <= 1.0
