"""The DAVIS protocol's other columns: boundary F-measure, and mean / recall / decay statistics.

Implemented from the formulas of the DAVIS evaluation code (``davisvideochallenge/davis2017-evaluation``,
``davis2017/metrics.py``: ``db_eval_iou``, ``f_measure`` with ``_seg2bmap``; ``davis2017/utils.py``:
``db_statistics``), which Easi3R vendors for its mask table (``davis2017/evaluation.py``, ``mask_metric.py``):

* **J** (region similarity) per frame: ``|P & G| / |P | G|``, 1 for an empty union (:func:`~easi3r.eval.masks.iou`).
* **F** (boundary accuracy) per frame: one-pixel boundary maps of both masks (:func:`boundary_map`), each dilated
  by a disk of radius ``ceil(0.008 * hypot(H, W))`` pixels; precision = share of predicted boundary pixels within
  the dilated ground-truth boundary, recall = share of ground-truth boundary pixels within the dilated predicted
  boundary, ``F = 2 P R / (P + R)`` (0 when ``P + R = 0``). Empty boundaries: none on either side -> F = 1;
  only the prediction has one -> P = 0, R = 1 (F = 0); only the ground truth -> P = 1, R = 0 (F = 0).
* **Statistics** of a per-frame series (:func:`db_statistics`): mean, recall (share > 0.5) and decay (mean of
  the first quarter of the frames minus the mean of the last quarter, over 4 bins with 1-frame overlap).

How the two aggregations relate to the official script: Easi3R's ``MaskEvaluation._evaluate`` fills a
``(T, H)`` array whose row ``t`` repeats frame ``t``'s score, then calls ``db_statistics`` **per frame**, so its
J-Mean / J-Recall are the frame-pooled mean / recall over all frames of all sequences (the paper's JM / JR,
``pooled`` here) and its J-Decay / F-Decay are always 0. The ``per_sequence`` numbers here are the usual DAVIS
aggregation (statistics per sequence, then the mean over sequences), where decay is meaningful.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from skimage.morphology import dilation, disk

from .._checks import check_shape
from ..errors import Easi3RInputError
from .masks import frame_ious, matched_masks

__all__ = [
    "BOUND_TH",
    "DavisScores",
    "DavisSequence",
    "boundary_map",
    "db_statistics",
    "evaluate_davis",
    "f_measure",
    "frame_f_measures",
]

#: Boundary tolerance of the F-measure as a fraction of the image diagonal (``bound_th`` of the DAVIS code).
BOUND_TH = 0.008


def boundary_map(seg: Any) -> NDArray[np.bool_]:
    """One-pixel-wide boundary map of a binary mask (DAVIS ``_seg2bmap`` at the mask's own size).

    A pixel is on the boundary when it differs from its east, south or south-east neighbour (pixels beyond
    the image count as background for the shifted copies); on the last row only the east neighbour and on the
    last column only the south neighbour is compared, and the bottom-right pixel is never a boundary pixel.
    The boundary is thus offset by half a pixel towards the origin.

    Args:
        seg: ``(H, W)`` mask, any non-zero value is foreground.

    Returns:
        ``(H, W)`` bool boundary map.

    Example:
        >>> boundary_map(np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]])).astype(int)
        array([[1, 1, 0],
               [1, 1, 0],
               [0, 0, 0]])
    """
    s = np.asarray(seg) != 0
    check_shape(s, "H W", "seg")
    east, south, south_east = (np.zeros_like(s) for _ in range(3))
    east[:, :-1] = s[:, 1:]
    south[:-1, :] = s[1:, :]
    south_east[:-1, :-1] = s[1:, 1:]
    b = (s ^ east) | (s ^ south) | (s ^ south_east)
    b[-1, :] = s[-1, :] ^ east[-1, :]
    b[:, -1] = s[:, -1] ^ south[:, -1]
    b[-1, -1] = False
    boundary: NDArray[np.bool_] = b
    return boundary


def f_measure(pred: Any, gt: Any, bound_th: float = BOUND_TH) -> float:
    """Boundary F-measure of one frame (DAVIS ``f_measure``, no void pixels).

    Args:
        pred: ``(H, W)`` predicted mask (non-zero = foreground). gt: ``(H, W)`` ground-truth mask.
        bound_th: tolerance; < 1: fraction of the diagonal (radius ``ceil(bound_th * hypot(H, W))`` px),
            >= 1: radius in pixels.

    Returns:
        F in [0, 1] (see the module docstring for the empty-boundary cases).
    """
    p, g = np.asarray(pred) != 0, np.asarray(gt) != 0
    dims = check_shape(p, "H W", "pred")
    check_shape(g, "H W", "gt", dims=dims)
    if not (math.isfinite(bound_th) and bound_th > 0):
        raise Easi3RInputError(f"bound_th must be a positive number, got {bound_th}")
    radius = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(dims["H"], dims["W"]))
    pb, gb = boundary_map(p), boundary_map(g)
    n_p, n_g = int(pb.sum()), int(gb.sum())
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    footprint = disk(int(radius))  # type: ignore[no-untyped-call]
    precision = float(np.count_nonzero(pb & dilation(gb, footprint))) / n_p
    recall = float(np.count_nonzero(gb & dilation(pb, footprint))) / n_g
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def frame_f_measures(pred: Any, gt: Any, bound_th: float = BOUND_TH) -> NDArray[np.float64]:
    """Per-frame F-measures of two ``(T, H, W)`` mask stacks (:func:`f_measure`); returns ``(T,)`` float64."""
    p, g = np.asarray(pred), np.asarray(gt)
    check_shape(g, "T H W", "gt", dims=check_shape(p, "T H W", "pred"))
    return np.array([f_measure(p[t], g[t], bound_th) for t in range(p.shape[0])], dtype=np.float64)


def db_statistics(per_frame: Any) -> tuple[float, float, float]:
    """Mean, recall and decay of a per-frame score series (DAVIS ``db_statistics``).

    Decay: with ``ids = round(linspace(1, T, 5)) - 1``, bin ``k`` is ``values[ids[k] : ids[k + 1] + 1]``;
    decay = mean(bin 0) - mean(bin 3). NaNs are ignored. (The official code casts ``ids`` to uint8, which wraps
    for sequences over 256 frames; integers are used here, identical for every DAVIS sequence.)

    Args:
        per_frame: ``(T,)`` scores (J or F), ``T >= 1``.

    Returns:
        ``(mean, recall, decay)``; recall is the share of frames with a score > 0.5 (strict).

    Example:
        >>> db_statistics([1.0, 1.0, 0.0, 0.0, 0.0])
        (0.4, 0.4, 1.0)
    """
    v = np.asarray(per_frame, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise Easi3RInputError("db_statistics needs at least one frame")
    finite = v[~np.isnan(v)]
    if finite.size == 0:
        return math.nan, math.nan, math.nan
    mean, recall = float(finite.mean()), float((finite > 0.5).mean())
    ids = (np.round(np.linspace(1, v.size, 5) + 1e-10) - 1).astype(np.int64)
    bins = [v[ids[k] : ids[k + 1] + 1] for k in range(4)]
    first, last = bins[0][~np.isnan(bins[0])], bins[3][~np.isnan(bins[3])]
    decay = float(first.mean() - last.mean()) if first.size and last.size else math.nan
    return mean, recall, decay


@dataclass(frozen=True)
class DavisSequence:
    """One sequence's per-frame scores: ``j`` and ``f`` ``(T,)`` float64, and their statistics."""

    j: NDArray[np.float64]
    f: NDArray[np.float64]

    def stats(self) -> dict[str, float]:
        """``{"JM", "JR", "JD", "FM", "FR", "FD", "J&F", "frames"}`` of this sequence (fractions)."""
        jm, jr, jd = db_statistics(self.j)
        fm, fr, fd = db_statistics(self.f)
        return {
            "JM": jm,
            "JR": jr,
            "JD": jd,
            "FM": fm,
            "FR": fr,
            "FD": fd,
            "J&F": (jm + fm) / 2,
            "frames": float(self.j.size),
        }


@dataclass(frozen=True)
class DavisScores:
    """Result of :func:`evaluate_davis`.

    Attributes:
        sequences: name -> :class:`DavisSequence`.
        pooled: the paper's protocol (Easi3R ``mask_metric.py``): ``JM``, ``JR``, ``FM``, ``FR``, ``J&F`` over
            all frames of all sequences pooled (and ``JD`` / ``FD``, always 0 there, left out).
        per_sequence: the mean over sequences of every :meth:`DavisSequence.stats` entry (DAVIS aggregation).
    """

    sequences: dict[str, DavisSequence]
    pooled: dict[str, float]
    per_sequence: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no per-frame arrays)."""
        return {
            "pooled": self.pooled,
            "per_sequence_mean": self.per_sequence,
            "sequences": {k: v.stats() for k, v in self.sequences.items()},
        }


def davis_aggregate(sequences: Mapping[str, DavisSequence]) -> DavisScores:
    """Pooled and per-sequence statistics of already scored sequences (see :class:`DavisScores`)."""
    if not sequences:
        raise Easi3RInputError("no sequence to aggregate")
    j = np.concatenate([s.j for s in sequences.values()])
    f = np.concatenate([s.f for s in sequences.values()])
    jm, jr, _ = db_statistics(j)
    fm, fr, _ = db_statistics(f)
    pooled = {"JM": jm, "JR": jr, "FM": fm, "FR": fr, "J&F": (jm + fm) / 2, "frames": float(j.size)}
    stats = [s.stats() for s in sequences.values()]
    per_seq = {k: float(np.mean([st[k] for st in stats])) for k in stats[0] if k != "frames"}
    per_seq["frames"] = float(j.size)
    return DavisScores(sequences=dict(sequences), pooled=pooled, per_sequence=per_seq)


def score_sequence(pred: Any, gt: Any) -> DavisSequence:
    """J and F of every frame of two frame-matched ``(T, H, W)`` mask stacks."""
    return DavisSequence(j=frame_ious(pred, gt), f=frame_f_measures(pred, gt))


def evaluate_davis(
    pred_root: str | os.PathLike[str],
    gt_root: str | os.PathLike[str],
    sequences: Sequence[str],
    *,
    gt_frames: Mapping[str, Sequence[int]] | None = None,
) -> DavisScores:
    """J and F of predicted dynamic masks against DAVIS annotations, pooled and per sequence.

    Masks are read and matched as by :func:`~easi3r.eval.masks.evaluate_masks` (ground truth merged over
    objects and resized nearest-neighbour to the prediction; missing frames empty, extra frames dropped).

    Args:
        pred_root: folder holding ``<seq>/masks/*.png`` or ``<seq>/dynamic_mask_<i>.png``.
        gt_root: DAVIS root (``Annotations/480p/<seq>/*.png`` below it).
        sequences: the sequences to score.
        gt_frames: per sequence, the annotated frame indices that were reconstructed (strided runs).

    Returns:
        :class:`DavisScores`.
    """
    if not sequences:
        raise Easi3RInputError("evaluate_davis needs at least one sequence")
    scored = {}
    for name in sequences:
        frames = None if gt_frames is None else gt_frames.get(name)
        pred, gt = matched_masks(pred_root, gt_root, name, frames)
        scored[name] = score_sequence(pred, gt)
    return davis_aggregate(scored)
