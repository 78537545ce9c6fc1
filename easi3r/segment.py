"""From the token-level dynamic map (Easi3R Eq. 9) to image-level dynamic masks.

1. :func:`cluster_fuse`: k-means on the encoder features of all tokens of all frames; every token takes the
   mean dynamic score of its cluster (so a whole object segment switches together), then per-frame min-max
   (official Easi3R ``dust3r/cloud_opt/base_opt.py``, ``cluster_attention_maps``).
2. :func:`upsample`: bilinear to image resolution.
3. :func:`compute_masks`: one threshold for the whole video (adaptive multi-Otsu by default, official
   ``adaptive_multiotsu_variance`` of the same file), strict ``>``.
4. Optional :class:`MaskRefiner` (e.g. SAM2 video propagation) through :func:`apply_refiner`.

:func:`segment` runs the whole chain on the attention statistics of one pass and returns a :class:`Segmentation`.

Clustering and thresholding run in numpy on CPU in float32, as the official code does, so that labels and
thresholds match it exactly; the results are returned on the input's device.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ._checks import check_dtype, check_shape
from .attention import (
    _FLOAT_DTYPES,
    _INT_DTYPES,
    AttentionAccumulator,
    FusedAttention,
    dynamic_map,
    fuse_attention,
    minmax_normalize,
)
from .errors import Easi3RInputError

__all__ = [
    "MaskRefiner",
    "Segmentation",
    "ThresholdResult",
    "apply_refiner",
    "cluster_fuse",
    "cluster_labels",
    "cluster_scores",
    "compute_masks",
    "multiotsu_threshold",
    "otsu_threshold",
    "segment",
    "upsample",
]


@dataclass(frozen=True)
class ThresholdResult:
    """A threshold chosen on a dynamic-score stack.

    Attributes:
        threshold: the value; a pixel is dynamic when its score is strictly greater.
        n_classes: classes of the chosen multi-Otsu split (2 for plain Otsu, 1 for a constant input, 0 for a
            user-given threshold).
        scores: multi-Otsu scores ``var(class means) / sqrt(n)`` for ``n = 2, 3, 4`` (NaN where ``n`` classes
            cannot be formed); empty for the other methods.
        method: ``"multiotsu"``, ``"otsu"``, ``"fixed"`` or ``"constant"``.
    """

    threshold: float
    n_classes: int
    scores: tuple[float, ...] = field(default=())
    method: str = "multiotsu"


@runtime_checkable
class MaskRefiner(Protocol):
    """Anything that refines the attention masks of a video, e.g. SAM2 video propagation.

    Called as ``refiner(images, masks)`` with ``images (T, H, W, 3) uint8`` and ``masks (T, H, W) bool``
    numpy arrays; returns refined ``(T, H, W) bool`` masks. The official SAM2 refinement (the optional last step
    of Easi3R's dynamic-mask estimation) prompts SAM2.1 with the masks of the odd frames to predict the even ones
    and vice versa and returns the **union** with the attention masks; a SAM2 refiner implements that inside
    ``__call__`` (easi3r does not depend on SAM2). :func:`apply_refiner` refuses a result that is not
    ``(T, H, W)`` bool.
    """

    def __call__(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray: ...


def _check_stack(name: str, x: Tensor) -> dict[str, int]:
    """``x`` must be a non-empty float ``(T, h, w)`` tensor; returns ``{"T", "h", "w"}``."""
    if not isinstance(x, Tensor):
        raise Easi3RInputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    dims = check_shape(x, "T h w", name)
    check_dtype(x, _FLOAT_DTYPES, name)
    if x.numel() == 0:
        raise Easi3RInputError(f"{name} is empty: shape {tuple(x.shape)}")
    return dims


def _check_features(features: Tensor, dims: dict[str, int] | None = None) -> None:
    """``features`` must be a ``(T, h, w, F)`` tensor (with the sizes of ``dims`` when given)."""
    if not isinstance(features, Tensor):
        raise Easi3RInputError(f"features must be a torch.Tensor, got {type(features).__name__}")
    check_shape(features, "T h w F", "features", dims=dims)


def cluster_labels(features: Tensor, n_clusters: int = 64, random_state: int = 42) -> Tensor:
    """K-means labels of all tokens of all frames, clustered jointly.

    scikit-learn ``KMeans(n_clusters, random_state=random_state)`` with the installed defaults (sklearn
    >= 1.4: one k-means++ run, ``n_init='auto'``) on the float32 features in (frame, row, col) order, as the
    official code. With fewer tokens than clusters the number of clusters is reduced to the number of tokens
    (warning).

    Args:
        features: ``(T, h, w, F)`` encoder features.
        n_clusters: number of clusters (official 64).
        random_state: k-means seed (official 42).

    Returns:
        ``(T, h, w)`` int64 labels in ``[0, n_clusters)``, on the features' device.

    Raises:
        Easi3RInputError: features of the wrong shape or not finite, or ``n_clusters < 1``.
    """
    from sklearn.cluster import KMeans

    _check_features(features)
    if int(n_clusters) < 1:
        raise Easi3RInputError(f"n_clusters must be >= 1, got {n_clusters}")
    t, h, w, _ = features.shape
    data = features.detach().reshape(t * h * w, -1).to("cpu", torch.float32).numpy()
    if not np.isfinite(data).all():
        raise Easi3RInputError("features contain NaN or infinite values")
    k = int(n_clusters)
    if data.shape[0] < k:
        warnings.warn(f"only {data.shape[0]} tokens for {k} clusters: using {data.shape[0]} clusters", stacklevel=2)
        k = data.shape[0]
    labels = KMeans(n_clusters=k, random_state=random_state).fit_predict(data)
    return torch.from_numpy(labels.astype(np.int64)).reshape(t, h, w).to(features.device)


def cluster_scores(dyn: Tensor, labels: Tensor) -> Tensor:
    """Replace every token's score by the mean score of its cluster, then min-max per frame (``+1e-6``).

    The cluster means are numpy float32 means over the cluster's tokens in (frame, row, col) order (numpy's
    pairwise summation), exactly what the official code computes. Unused label values are ignored.

    Args:
        dyn: ``(T, h, w)`` dynamic map.
        labels: ``(T, h, w)`` integer cluster labels (>= 0).

    Returns:
        ``(T, h, w)`` float32 refined map on ``dyn``'s device.

    Raises:
        Easi3RInputError: ``dyn`` not a float ``(T, h, w)`` map, or labels not integers >= 0 of its shape.
    """
    dims = _check_stack("dyn", dyn)
    if not isinstance(labels, Tensor):
        raise Easi3RInputError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    check_shape(labels, "T h w", "labels", dims=dims)
    check_dtype(labels, _INT_DTYPES, "labels")
    x = dyn.detach().to("cpu", torch.float32).numpy().reshape(-1)
    lab = labels.detach().to("cpu", torch.int64).numpy().reshape(-1)
    if lab.min() < 0:
        raise Easi3RInputError(f"labels must be >= 0, got minimum {lab.min()}")
    # A stable sort keeps each cluster's tokens in flat order, so each slice's float32 mean sums exactly the
    # elements, in the order, that ``x[lab == k].mean()`` would (bit-identical to the official loop).
    order = np.argsort(lab, kind="stable")
    uniq, starts = np.unique(lab[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    means = np.zeros(int(uniq.max()) + 1, dtype=np.float32)
    for k, s, e in zip(uniq, starts, ends):
        means[k] = x[order[s:e]].mean()
    refined = torch.from_numpy(means[lab].reshape(dyn.shape))
    return minmax_normalize(refined, dims=(1, 2)).to(dyn.device)


def cluster_fuse(dyn: Tensor, features: Tensor, n_clusters: int = 64, random_state: int = 42) -> tuple[Tensor, Tensor]:
    """Cluster fusion of the dynamic map: :func:`cluster_labels` then :func:`cluster_scores` (official Easi3R
    ``dust3r/cloud_opt/base_opt.py``, ``cluster_attention_maps``).

    Args:
        dyn: ``(T, h, w)`` per-frame normalised dynamic map (:func:`easi3r.attention.dynamic_map`).
        features: ``(T, h, w, F)`` encoder features of the same frames.
        n_clusters, random_state: k-means settings (official 64 and 42).

    Returns:
        ``refined (T, h, w) float32`` in ``[0, 1)`` and ``labels (T, h, w) int64``, on ``dyn``'s device.

    Raises:
        Easi3RInputError: ``dyn`` not a float ``(T, h, w)`` map, or features not ``(T, h, w, F)`` of its grid.
    """
    _check_features(features, _check_stack("dyn", dyn))
    labels = cluster_labels(features, n_clusters=n_clusters, random_state=random_state).to(dyn.device)
    return cluster_scores(dyn, labels), labels


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling of ``(T, h, w)`` maps to ``size = (H, W)`` pixels (``align_corners=False``, as official).

    Returns:
        ``(T, H, W)`` in the maps' dtype and device.
    """
    _check_stack("maps", maps)
    if len(size) != 2 or min(int(s) for s in size) < 1:
        raise Easi3RInputError(f"size must be (H, W) with positive entries, got {tuple(size)}")
    hw = (int(size[0]), int(size[1]))
    out = F.interpolate(maps[:, None], size=hw, mode="bilinear", align_corners=False)
    return out[:, 0]


def _as_numpy(x: Tensor | np.ndarray) -> np.ndarray:
    a = x.detach().to("cpu").numpy() if isinstance(x, Tensor) else np.asarray(x)
    if a.size == 0:
        raise Easi3RInputError("cannot threshold an empty array")
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise Easi3RInputError("cannot threshold a map containing NaN or infinite values")
    return a


def multiotsu_threshold(x: Tensor | np.ndarray) -> ThresholdResult:
    """Adaptive multi-Otsu threshold (official ``adaptive_multiotsu_variance``), one for the whole stack.

    For ``n = 2, 3, 4``: skimage ``threshold_multiotsu(classes=n)`` (256 bins), regions by ``np.digitize``,
    score = population variance of the ``n`` region means / ``sqrt(n)``. The best ``n`` is kept with a
    strict ``>`` (a tie keeps the smaller ``n``) and its largest threshold is returned. An ``n`` that cannot
    be formed (too few distinct values, an empty region) scores NaN and is skipped; a constant input gives
    ``method="constant"`` with the constant as threshold (so nothing is strictly above it).

    Args:
        x: scores of any shape (typically ``(T, H, W)`` float32), tensor or array.
    """
    from skimage.filters import threshold_multiotsu

    # 1-D: the histogram is unchanged, and skimage's RGB-shape warning cannot fire on (T, H, 3) stacks.
    a = _as_numpy(x).reshape(-1)
    lo, hi = a.min(), a.max()
    if lo == hi:
        return ThresholdResult(float(lo), 1, (math.nan,) * 3, "constant")
    scores: list[float] = []
    best, best_n, best_th = -math.inf, 0, float(hi)
    for n in (2, 3, 4):
        try:
            th = threshold_multiotsu(a, classes=n)  # type: ignore[no-untyped-call]  # skimage has no annotations
        except ValueError:  # fewer distinct (binned) values than classes
            scores.append(math.nan)
            continue
        regions = np.digitize(a, bins=th)
        counts = np.bincount(regions, minlength=n)
        if (counts[:n] == 0).any():
            scores.append(math.nan)
            continue
        means = [a[regions == k].mean() for k in range(n)]
        score = float(np.var(means) / np.sqrt(n))
        scores.append(score)
        if score > best:
            best, best_n, best_th = score, n, float(th[-1])
    if best_n == 0:
        # No split worked (only possible for degenerate histograms): fall back to plain Otsu.
        res = otsu_threshold(a)
        return ThresholdResult(res.threshold, res.n_classes, tuple(scores), res.method)
    return ThresholdResult(best_th, best_n, tuple(scores), "multiotsu")


def otsu_threshold(x: Tensor | np.ndarray) -> ThresholdResult:
    """Plain two-class Otsu threshold (skimage ``threshold_otsu``, 256 bins) over all values of ``x``."""
    from skimage.filters import threshold_otsu

    a = _as_numpy(x).reshape(-1)
    if a.min() == a.max():
        return ThresholdResult(float(a.min()), 1, (), "constant")
    return ThresholdResult(float(threshold_otsu(a)), 2, (), "otsu")  # type: ignore[no-untyped-call]


def compute_masks(
    refined: Tensor, size: tuple[int, int], threshold: str | float = "multiotsu"
) -> tuple[Tensor, ThresholdResult]:
    """Image-resolution dynamic masks from the refined token map (official Easi3R thresholding of the
    ``refined_dynamic_map`` with ``adaptive_multiotsu_variance``).

    The map is upsampled bilinearly to ``size``; one threshold is chosen over all frames jointly and a pixel
    is dynamic when its upsampled score is strictly greater (compared in the map's dtype, as the official
    code compares a float32 tensor with the threshold).

    Args:
        refined: ``(T, h, w)`` refined dynamic map in ``[0, 1]``.
        size: image size ``(H, W)`` in pixels.
        threshold: ``"multiotsu"`` (official adaptive 2-4 classes), ``"otsu"`` or a number in ``[0, 1]``.

    Returns:
        ``masks (T, H, W) bool`` on ``refined``'s device and the :class:`ThresholdResult`. A constant map
        gives all-False masks.
    """
    up = upsample(refined, size)
    if isinstance(threshold, str):
        if threshold == "multiotsu":
            res = multiotsu_threshold(up)
        elif threshold == "otsu":
            res = otsu_threshold(up)
        else:
            raise Easi3RInputError(f"threshold must be 'multiotsu', 'otsu' or a number, got {threshold!r}")
    elif isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        if not (0.0 <= float(threshold) <= 1.0):
            raise Easi3RInputError(f"a fixed threshold must lie in [0, 1], got {threshold}")
        if not torch.isfinite(up).all():
            raise Easi3RInputError("cannot threshold a map containing NaN or infinite values")
        res = ThresholdResult(float(threshold), 0, (), "fixed")
    else:
        raise Easi3RInputError(f"threshold must be 'multiotsu', 'otsu' or a number, got {threshold!r}")
    return up > res.threshold, res


def apply_refiner(refiner: MaskRefiner, images: np.ndarray | Tensor, masks: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """Run a :class:`MaskRefiner` (e.g. SAM2) on the masks and validate what it returns.

    Args:
        refiner: callable ``(images (T,H,W,3) uint8, masks (T,H,W) bool) -> (T,H,W) bool`` on numpy arrays.
        images: ``(T, H, W, 3)`` uint8 frames (tensor or array).
        masks: ``(T, H, W)`` bool masks (tensor or array).

    Returns:
        The refined masks, of the same type (and device, for tensors) as ``masks``.

    Raises:
        Easi3RInputError: bad inputs, or the refiner returned something other than ``(T, H, W)`` bool masks.
    """
    if not callable(refiner):
        raise Easi3RInputError(f"refiner must be callable, got {type(refiner).__name__}")
    imgs = images.detach().to("cpu").numpy() if isinstance(images, Tensor) else np.asarray(images)
    m = masks.detach().to("cpu").numpy() if isinstance(masks, Tensor) else np.asarray(masks)
    dims = check_shape(m, "T H W", "masks")
    check_dtype(m, (np.dtype(bool),), "masks")
    check_shape(imgs, "T H W 3", "images", dims=dims)
    check_dtype(imgs, (np.dtype(np.uint8),), "images")
    out = refiner(imgs, m.copy())
    out_np = out.detach().to("cpu").numpy() if isinstance(out, Tensor) else np.asarray(out)
    name = f"the output of mask refiner {type(refiner).__name__}"
    check_shape(out_np, "T H W", name, dims=dims)
    check_dtype(out_np, (np.dtype(bool),), name)
    if isinstance(masks, Tensor):
        return torch.from_numpy(out_np.copy()).to(masks.device)
    return out_np


@dataclass
class Segmentation:
    """Motion segmentation of one pass (all on CPU).

    Attributes:
        fused: the four channel-fused maps ``(T, h, w)`` (src/ref mean/std).
        dynamic_map: ``(T, h, w)`` Eq. 9, per-frame normalised.
        refined: ``(T, h, w)`` cluster-fused dynamic map (what the masks threshold).
        labels: ``(T, h, w)`` k-means labels.
        masks: ``(T, H, W)`` bool dynamic masks.
        threshold: the chosen threshold and how.
    """

    fused: FusedAttention
    dynamic_map: Tensor
    refined: Tensor
    labels: Tensor
    masks: Tensor
    threshold: ThresholdResult


def segment(
    attention: AttentionAccumulator,
    labels: Tensor,
    size: tuple[int, int],
    *,
    threshold: str | float = "multiotsu",
    progress: bool = False,
    desc: str = "segment",
) -> Segmentation:
    """Attention statistics -> fused maps (Eq. 5-8) -> dynamic map (Eq. 9) -> cluster fusion -> thresholded masks.

    The k-means labels are an input (:func:`cluster_labels` of the encoder features), so that a video's clusters
    are computed once and shared by both passes; :func:`cluster_fuse` is labels and scores in one call.

    Args:
        attention: the accumulator of a pass.
        labels: ``(T, h, w)`` integer k-means labels of the tokens (:func:`cluster_labels`).
        size: ``(H, W)`` of the masks, in pixels.
        threshold: ``"multiotsu"``, ``"otsu"`` or a number in ``[0, 1]`` (see :func:`compute_masks`).
        progress: a three-step bar (fusion, cluster scores, threshold).
        desc: the bar's label.

    Returns:
        The :class:`Segmentation` (on the accumulator's device; CPU by default).

    Raises:
        Easi3RInputError: a frame without pairs in a role, labels not of the attention grid, a bad threshold.
    """
    with tqdm(total=3, desc=desc, unit="step", disable=not progress, leave=False) as bar:
        bar.set_postfix_str("fusing attention")
        fused = fuse_attention(attention.stats())
        dyn = dynamic_map(fused)
        bar.update()
        bar.set_postfix_str("cluster scores")
        refined = cluster_scores(dyn, labels.to(dyn.device))
        bar.update()
        bar.set_postfix_str("threshold")
        masks, chosen = compute_masks(refined, size, threshold)
        bar.update()
    return Segmentation(fused, dyn, refined, labels, masks, chosen)
