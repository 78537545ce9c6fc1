"""Dynamic-mask evaluation on DAVIS: per-frame IoU, JM (mean) and JR (recall).

The Easi3R protocol (the paper's Tab. 1 dynamic-object segmentation), reproduced here; the per-frame IoU is
DAVIS ``davis2017-evaluation`` ``davis2017/metrics.py`` ``db_eval_iou`` (1 for an empty union):

* ground truth is the DAVIS-2017 480p annotation (palette PNGs): every label > 0 is merged into one
  foreground ("dynamic") mask; no void region;
* the ground truth is resized to the prediction's resolution with the image loader's rule (long side 512,
  nearest-neighbour, then centre crop of both sides to multiples of 16); predictions are read as they are,
  any non-zero pixel being foreground;
* IoU per frame, 1.0 when the union is empty; missing predicted frames count as empty masks, extra ones are
  dropped;
* ``pooled`` (default, what the paper reports): JM = mean IoU over all frames of all sequences pooled,
  JR = fraction of those frames with IoU **strictly** greater than 0.5. ``per_sequence``: the mean over
  sequences of each sequence's JM (and JR), the usual DAVIS-style average; it is *not* the paper's number.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from .._checks import check_shape
from ..errors import Easi3RInputError
from ..frames import resize_crop_plan

__all__ = [
    "DAVIS16",
    "DAVIS17",
    "MaskScores",
    "SequenceScore",
    "evaluate_masks",
    "evaluate_sequence",
    "frame_ious",
    "iou",
    "jm_jr",
    "loader_resize_crop",
    "matched_masks",
    "read_davis_gt",
    "read_pred_masks",
    "subset_sequences",
]

Mode = Literal["pooled", "per_sequence"]

#: DAVIS-2016 validation split (20 sequences), the paper's "DAVIS-16" column.
DAVIS16: tuple[str, ...] = (
    "blackswan", "bmx-trees", "breakdance", "camel", "car-roundabout", "car-shadow", "cows", "dance-twirl",
    "dog", "drift-chicane", "drift-straight", "goat", "horsejump-high", "kite-surf", "libby",
    "motocross-jump", "paragliding-launch", "parkour", "scooter-black", "soapbox",
)  # fmt: skip

#: DAVIS-2017 validation split (30 sequences), the paper's "DAVIS-17" column.
DAVIS17: tuple[str, ...] = tuple(
    sorted(
        DAVIS16
        + ("bike-packing", "dogs-jump", "gold-fish", "india", "judo", "lab-coat", "loading", "mbike-trick",
           "pigs", "shooting")
    )
)  # fmt: skip

SUBSETS = ("davis16", "davis17", "davis-all")

_OFFICIAL_NAME = re.compile(r"^dynamic_mask_(\d+)\.png$")


# --------------------------------------------------------------------------------------------- pure maths


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Jaccard index of two masks.

    Args:
        pred: ``(H, W)`` mask; any non-zero value is foreground.
        gt: ``(H, W)`` mask; any non-zero value is foreground.

    Returns:
        ``|pred & gt| / |pred | gt|`` in [0, 1]; 1.0 when both masks are empty (DAVIS convention).

    Raises:
        Easi3RInputError: the shapes differ.
    """
    p, g = np.asarray(pred) != 0, np.asarray(gt) != 0
    check_shape(g, "H W", "gt", dims=check_shape(p, "H W", "pred"))
    union = np.count_nonzero(p | g)
    if union == 0:
        return 1.0
    return np.count_nonzero(p & g) / union


def frame_ious(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-frame IoUs of two mask stacks.

    Args:
        pred: ``(T, H, W)`` masks, non-zero = foreground. gt: ``(T, H, W)`` masks.

    Returns:
        ``(T,)`` float64 IoUs (1.0 for frames whose union is empty).
    """
    p, g = np.asarray(pred) != 0, np.asarray(gt) != 0
    check_shape(g, "T H W", "gt", dims=check_shape(p, "T H W", "pred"))
    inter = np.count_nonzero(p & g, axis=(1, 2)).astype(np.float64)
    union = np.count_nonzero(p | g, axis=(1, 2)).astype(np.float64)
    return np.where(union > 0, inter / np.maximum(union, 1.0), 1.0)


def jm_jr(ious_per_sequence: Sequence[np.ndarray], mode: Mode = "pooled") -> tuple[float, float]:
    """Aggregate per-frame IoUs into JM (mean) and JR (recall at IoU > 0.5, strict).

    Args:
        ious_per_sequence: one ``(T_k,)`` array of per-frame IoUs per sequence.
        mode: ``"pooled"``: statistics over all frames of all sequences together (Easi3R's published
            protocol, frame-weighted); ``"per_sequence"``: mean over sequences of per-sequence statistics.

    Returns:
        ``(jm, jr)`` as fractions in [0, 1].
    """
    if mode not in ("pooled", "per_sequence"):
        raise Easi3RInputError(f"mode must be 'pooled' or 'per_sequence', got {mode!r}")
    seqs = [np.asarray(v, dtype=np.float64).reshape(-1) for v in ious_per_sequence]
    if not seqs or any(v.size == 0 for v in seqs):
        raise Easi3RInputError("jm_jr needs at least one sequence and at least one frame per sequence")
    if mode == "pooled":
        allv = np.concatenate(seqs)
        return float(allv.mean()), float((allv > 0.5).mean())
    return float(np.mean([v.mean() for v in seqs])), float(np.mean([(v > 0.5).mean() for v in seqs]))


# ------------------------------------------------------------------------------------ resolution protocol


Box = tuple[int, int, int, int]


def _loader_geometry(
    width: int, height: int, image_size: int | None, size: tuple[int, int] | None
) -> tuple[tuple[int, int], Box]:
    """Resized ``(W, H)`` and crop box ``(left, top, right, bottom)`` in pixels for one frame size.

    Exactly one of ``image_size`` (the loader's int long side) and ``size`` (an explicit ``(H, W)`` target)
    is given.
    """
    if image_size is not None and size is None:
        if isinstance(image_size, (tuple, list)):
            raise Easi3RInputError(f"image_size is the int long side; pass an (H, W) target as size=, got {image_size}")
        if int(image_size) <= 0:
            raise Easi3RInputError(f"image_size must be a positive int (long side in pixels), got {image_size}")
        new, _, box = resize_crop_plan(width, height, int(image_size))
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        return new, (x0, y0, x1, y1)
    if size is None or image_size is not None:
        raise Easi3RInputError(f"give exactly one of image_size and size, got image_size={image_size}, size={size}")
    if not isinstance(size, tuple) or len(size) != 2:
        raise Easi3RInputError(f"size must be an (H, W) pair of ints, got {size!r}")
    th, tw = (int(v) for v in size)
    if th <= 0 or tw <= 0:
        raise Easi3RInputError(f"target size must be positive (H, W), got {size}")
    # The 512 loader resizes the long side to the target's long side; the 224 loader (square output)
    # resizes the short side instead. Use whichever leaves an image covering the target.
    long_side = max(th, tw)
    scale = long_side / max(width, height)
    new = (round(width * scale), round(height * scale))
    if new[0] < tw or new[1] < th:
        scale = max(tw / width, th / height)
        new = (max(tw, round(width * scale)), max(th, round(height * scale)))
    cx, cy = new[0] // 2, new[1] // 2
    return new, (cx - tw // 2, cy - th // 2, cx - tw // 2 + tw, cy - th // 2 + th)


def loader_resize_crop(
    mask: np.ndarray, image_size: int | None = None, *, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Bring a label/mask image to the model's processing resolution with nearest-neighbour resampling.

    Args:
        mask: ``(H0, W0)`` integer or boolean label image.
        image_size: reproduce the image loader for ``--image_size`` (int long side in pixels: long side
            ``image_size`` then centre crop to multiples of 16; ``224``: short side 224 then a centre square).
        size: instead, an explicit ``(H, W)`` target in pixels (typically the prediction's shape): the long
            side is resized to the target's long side and the result centre-cropped to exactly ``(H, W)``.
            Give exactly one of ``image_size`` and ``size``.

    Returns:
        The resized and cropped mask, same dtype (booleans stay booleans).

    Raises:
        Easi3RInputError: not a 2-D mask, labels outside 0..255, or not exactly one valid target.
    """
    arr = np.asarray(mask)
    height, width = (check_shape(arr, "H W", "mask")[k] for k in ("H", "W"))
    new, box = _loader_geometry(width, height, image_size, size)
    is_bool = arr.dtype == bool
    if not is_bool and (arr.min(initial=0) < 0 or arr.max(initial=0) > 255):
        raise Easi3RInputError("mask labels must fit in uint8 (0..255)")
    img = Image.fromarray(arr.astype(np.uint8))
    # PIL's NEAREST is what the official evaluation applies (palette images are always resampled NEAREST).
    out = np.asarray(img.resize(new, Image.Resampling.NEAREST).crop(box))
    return out.astype(bool) if is_bool else out.astype(arr.dtype)


# ------------------------------------------------------------------------------------------------- files


def _read_png_foreground(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            arr = np.asarray(img)
    except (OSError, ValueError) as exc:
        raise Easi3RInputError(f"cannot read mask image {path}: {exc}") from None
    # Palette images give label indices, greyscale gives values; RGB(A) annotations are foreground where any
    # colour channel is non-zero (alpha is ignored).
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2)
    foreground: NDArray[np.bool_] = arr != 0
    return foreground


def read_davis_gt(
    root: str | os.PathLike[str],
    sequence: str,
    image_size: int | None = None,
    *,
    size: tuple[int, int] | None = None,
) -> NDArray[np.bool_]:
    """Read one DAVIS sequence's annotations as merged binary foreground masks.

    Args:
        root: DAVIS root holding ``Annotations/480p/<sequence>/*.png`` (``root`` may also be the
            ``Annotations/480p`` folder itself).
        sequence: sequence name, e.g. ``"blackswan"``.
        image_size: resize like the image loader for this int long side (``512``: the official protocol);
            see :func:`loader_resize_crop`.
        size: instead, resize to this explicit ``(H, W)`` (the prediction's shape). Neither keeps the native
            resolution.

    Returns:
        ``(T, H, W)`` bool masks, frames in file-name order; every object label > 0 is foreground.

    Raises:
        Easi3RInputError: the sequence folder is missing or holds no PNG, or frames differ in size.
    """
    folder = _annotation_dir(root) / sequence
    files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not files:
        raise Easi3RInputError(f"no DAVIS annotations found for sequence {sequence!r} in {folder}")
    masks = [_read_png_foreground(f) for f in files]
    if image_size is not None or size is not None:
        masks = [loader_resize_crop(m, image_size, size=size) for m in masks]
    shapes = {m.shape for m in masks}
    if len(shapes) != 1:
        raise Easi3RInputError(f"annotations of {sequence!r} have different sizes: {sorted(shapes)}")
    return np.stack(masks)


def _annotation_dir(root: str | os.PathLike[str]) -> Path:
    root = Path(root)
    for candidate in (root / "Annotations" / "480p", root / "DAVIS" / "Annotations" / "480p"):
        if candidate.is_dir():
            return candidate
    return root


def _pred_files(folder: Path) -> list[Path]:
    masks_dir = folder / "masks"
    if masks_dir.is_dir():
        files = sorted(masks_dir.glob("*.png"))
        if files:
            return files
    numbered = ((_OFFICIAL_NAME.match(p.name), p) for p in folder.glob("dynamic_mask_*.png"))
    return [p for _, p in sorted((int(m.group(1)), p) for m, p in numbered if m)]


def read_pred_masks(pred_root: str | os.PathLike[str], sequence: str) -> np.ndarray:
    """Read one sequence's predicted masks.

    Two layouts are accepted: easi3r's ``<pred_root>/<sequence>/masks/*.png`` (sorted by name) and the
    official ``<pred_root>/<sequence>/dynamic_mask_<i>.png`` (sorted by the integer ``i``; other files such as
    ``enlarged_dynamic_mask_*.png`` are ignored).

    Returns:
        ``(T, H, W)`` bool masks; any non-zero pixel is foreground.

    Raises:
        Easi3RInputError: no mask file found, or masks of different sizes.
    """
    folder = Path(pred_root) / sequence
    files = _pred_files(folder) if folder.is_dir() else []
    if not files:
        raise Easi3RInputError(
            f"no predicted masks for sequence {sequence!r}: expected {folder}/masks/*.png or "
            f"{folder}/dynamic_mask_<i>.png"
        )
    masks = [_read_png_foreground(f) for f in files]
    shapes = {m.shape for m in masks}
    if len(shapes) != 1:
        raise Easi3RInputError(f"predicted masks of {sequence!r} have different sizes: {sorted(shapes)}")
    return np.stack(masks)


def subset_sequences(name: str, gt_root: str | os.PathLike[str] | None = None) -> tuple[str, ...]:
    """Sequence names of a DAVIS evaluation subset.

    Args:
        name: ``"davis16"``, ``"davis17"`` or ``"davis-all"`` (case-insensitive; ``_`` accepted for ``-``).
        gt_root: DAVIS root; required for ``"davis-all"``, which is every sequence folder found in
            ``Annotations/480p``.

    Returns:
        Sorted sequence names.
    """
    key = name.lower().replace("_", "-")
    if key in ("davis16", "davis-16"):
        return DAVIS16
    if key in ("davis17", "davis-17"):
        return DAVIS17
    if key in ("davis-all", "davisall", "all"):
        if gt_root is None:
            raise Easi3RInputError("subset 'davis-all' needs gt_root to list the annotated sequences")
        ann = _annotation_dir(gt_root)
        seqs = tuple(sorted(p.name for p in ann.iterdir() if p.is_dir())) if ann.is_dir() else ()
        if not seqs:
            raise Easi3RInputError(f"no sequence folders found in {ann}")
        return seqs
    raise Easi3RInputError(f"unknown subset {name!r}; expected one of {SUBSETS}")


# ------------------------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class SequenceScore:
    """Scores of one sequence: ``jm`` mean IoU, ``jr`` share of frames with IoU > 0.5, ``ious`` ``(T,)``."""

    jm: float
    jr: float
    n_frames: int
    ious: np.ndarray = field(repr=False, compare=False)


@dataclass(frozen=True)
class MaskScores:
    """Result of :func:`evaluate_masks`.

    Attributes:
        jm: mean IoU (fraction; the paper reports x100). jr: recall at IoU > 0.5.
        per_sequence: sequence name -> :class:`SequenceScore`.
        n_frames: frames scored in total.
        mode: ``"pooled"`` (paper protocol) or ``"per_sequence"``.
    """

    jm: float
    jr: float
    per_sequence: dict[str, SequenceScore]
    n_frames: int
    mode: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no per-frame arrays)."""
        return {
            "mode": self.mode,
            "jm": self.jm,
            "jr": self.jr,
            "n_frames": self.n_frames,
            "n_sequences": len(self.per_sequence),
            "per_sequence": {k: {"jm": v.jm, "jr": v.jr, "n_frames": v.n_frames} for k, v in self.per_sequence.items()},
        }


def _match_frames(pred: np.ndarray, n_gt: int, sequence: str) -> np.ndarray:
    if pred.shape[0] > n_gt:
        warnings.warn(
            f"{sequence}: {pred.shape[0]} predicted masks for {n_gt} annotated frames; extra ones dropped",
            stacklevel=3,
        )
        return pred[:n_gt]
    if pred.shape[0] < n_gt:
        warnings.warn(
            f"{sequence}: {pred.shape[0]} predicted masks for {n_gt} annotated frames; "
            "missing ones scored as empty masks",
            stacklevel=3,
        )
        pad = np.zeros((n_gt - pred.shape[0], *pred.shape[1:]), dtype=bool)
        return np.concatenate([pred, pad])
    return pred


def evaluate_sequence(pred_root: str | os.PathLike[str], gt_root: str | os.PathLike[str], sequence: str) -> np.ndarray:
    """Per-frame IoUs of one sequence under the Easi3R protocol.

    The ground truth is brought to the predictions' resolution (:func:`loader_resize_crop` with the
    prediction's ``(H, W)``) unless it already has it.

    Returns:
        ``(T_gt,)`` float64 IoUs, one per annotated frame.
    """
    pred, gt = matched_masks(pred_root, gt_root, sequence)
    return frame_ious(pred, gt)


def matched_masks(
    pred_root: str | os.PathLike[str],
    gt_root: str | os.PathLike[str],
    sequence: str,
    gt_frames: Sequence[int] | None = None,
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """One sequence's predicted and ground-truth masks at the prediction's resolution, frame-matched.

    The ground truth is brought to the predictions' ``(H, W)`` (:func:`loader_resize_crop`) unless it already
    has it; missing predicted frames become empty masks, extra ones are dropped (with a warning), as in the
    official ``davis2017/evaluation.py`` ``MaskEvaluation._evaluate``.

    Args:
        pred_root: folder of per-sequence prediction folders (:func:`read_pred_masks`).
        gt_root: DAVIS root (:func:`read_davis_gt`).
        sequence: the sequence name.
        gt_frames: indices of the annotated frames that were reconstructed (a strided or capped run), in
            order; None: every annotated frame.

    Returns:
        ``(pred, gt)``, both ``(T_gt, H, W)`` bool.
    """
    pred = read_pred_masks(pred_root, sequence)
    gt = read_davis_gt(gt_root, sequence)
    if gt_frames is not None:
        idx = np.asarray(list(gt_frames), dtype=np.int64)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= gt.shape[0]:
            raise Easi3RInputError(f"{sequence}: frame indices must lie in [0, {gt.shape[0]}), got {idx.tolist()}")
        gt = gt[idx]
    if gt.shape[1:] != pred.shape[1:]:
        size = (int(pred.shape[1]), int(pred.shape[2]))
        gt = np.stack([loader_resize_crop(m, size=size) for m in gt])
    return _match_frames(pred, gt.shape[0], sequence), gt


def evaluate_masks(
    pred_root: str | os.PathLike[str],
    gt_root: str | os.PathLike[str],
    *,
    sequences: str | Iterable[str] | None = None,
    mode: Mode = "pooled",
) -> MaskScores:
    """JM / JR of predicted dynamic masks against DAVIS annotations.

    Args:
        pred_root: folder with one sub-folder of masks per sequence (see :func:`read_pred_masks`).
        gt_root: DAVIS root (``Annotations/480p/<seq>/*.png`` below it).
        sequences: a subset name (``"davis16"``, ``"davis17"``, ``"davis-all"``), explicit names, or
            ``None`` for every sequence folder present in ``pred_root``. Every selected sequence must have
            predictions (the official script crashes otherwise; here it is an error naming them).
        mode: ``"pooled"`` (default, the paper's frame-pooled statistics) or ``"per_sequence"``.

    Returns:
        :class:`MaskScores`.

    Raises:
        Easi3RInputError: unknown subset or mode, missing predictions or annotations, unreadable files.
    """
    if mode not in ("pooled", "per_sequence"):
        raise Easi3RInputError(f"mode must be 'pooled' or 'per_sequence', got {mode!r}")
    pred_dir = Path(pred_root)
    if not pred_dir.is_dir():
        raise Easi3RInputError(f"prediction folder {pred_dir} does not exist")
    if sequences is None:
        names = tuple(sorted(p.name for p in pred_dir.iterdir() if p.is_dir()))
        if not names:
            raise Easi3RInputError(f"no sequence folders in prediction folder {pred_dir}")
    elif isinstance(sequences, str):
        names = subset_sequences(sequences, gt_root)
    else:
        names = tuple(sequences)
        if not names:
            raise Easi3RInputError("sequences is empty")
    missing = [s for s in names if not (pred_dir / s).is_dir()]
    if missing:
        listed = ", ".join(missing)
        raise Easi3RInputError(f"no predictions for {len(missing)} sequence(s) in {pred_dir}: {listed}")

    per_seq = {}
    for name in names:
        ious = evaluate_sequence(pred_dir, gt_root, name)
        jm, jr = jm_jr([ious], "pooled")
        per_seq[name] = SequenceScore(jm=jm, jr=jr, n_frames=int(ious.size), ious=ious)
    jm, jr = jm_jr([s.ious for s in per_seq.values()], mode)
    n_frames = sum(s.n_frames for s in per_seq.values())
    return MaskScores(jm=jm, jr=jr, per_sequence=per_seq, n_frames=n_frames, mode=mode)
